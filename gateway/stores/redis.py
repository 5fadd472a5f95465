"""The shared store for many replicas: Redis through redis.asyncio (hiredis parser, pooled)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.stores.base import StoreUnavailable


class RedisStore:
    def __init__(self, url: str):
        self._url = url
        self._client: aioredis.Redis | None = None

    def describe(self) -> str:
        return f"redis {_without_password(self._url)}"

    async def open(self) -> None:
        self._client = aioredis.Redis.from_url(
            self._url, socket_connect_timeout=2.0, socket_timeout=2.0, health_check_interval=30
        )  # connects lazily: a Redis that is down at start is reported by /readyz, not fatal

    async def ping(self) -> None:
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        try:
            await self._client.ping()
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"Redis at {self.describe()[6:]}: {e}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest

"""The shared store for many replicas: Redis through redis.asyncio (hiredis parser, pooled)."""

from __future__ import annotations

from collections.abc import Sequence

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

    async def eject(self, target: str, seconds: float) -> None:
        client = self._open_client()
        key, ms = _ejection_key(target), max(1, int(seconds * 1000))
        try:
            async with client.pipeline(transaction=True) as pipe:
                # create it, or only lengthen it: a shorter ejection never cuts a longer one
                pipe.set(key, b"1", px=ms, nx=True)
                pipe.pexpire(key, ms, gt=True)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"Redis at {self.describe()[6:]}: {e}") from None

    async def ejections(self, targets: Sequence[str]) -> dict[str, float]:
        if not targets:
            return {}
        client = self._open_client()
        try:
            async with client.pipeline(transaction=False) as pipe:  # one round trip
                for target in targets:
                    pipe.pttl(_ejection_key(target))
                ttls = await pipe.execute()
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"Redis at {self.describe()[6:]}: {e}") from None
        return {t: ms / 1000 for t, ms in zip(targets, ttls, strict=True) if ms > 0}

    def _open_client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _ejection_key(target: str) -> str:
    # One hash tag for all ejections: a replica reads them all in one pipeline, and on Redis
    # Cluster they live in one slot.
    return f"sp:{{ejections}}:{target}"


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest

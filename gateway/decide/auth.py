"""Who is calling: API key -> client. Keys are compared as sha256 hashes, never stored plain."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from gateway.errors import AuthenticationFailed
from gateway.model import ANONYMOUS, Principal


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a client sent: `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return x_api_key.strip() if x_api_key and x_api_key.strip() else None


def authenticate(clients_by_hash: Mapping[str, Principal], key: str | None) -> Principal:
    """The client owning `key`. With no clients configured, auth is off: everyone is anonymous."""
    if not clients_by_hash:
        return ANONYMOUS
    if key is None:
        raise AuthenticationFailed(
            "missing API key: send it as `Authorization: Bearer <key>` "
            "(the openai SDK does this with api_key=...)",
            code="missing_api_key",
        )
    principal = clients_by_hash.get(hashlib.sha256(key.encode()).hexdigest())
    if principal is None:
        raise AuthenticationFailed(f"incorrect API key provided: {redact(key)}")
    return principal


def redact(key: str) -> str:
    """A key as it may appear in a message: the first 3 and last 2 characters at most."""
    return f"{key[:3]}...{key[-2:]}" if len(key) >= 12 else "***"

"""What counts as "the same request": the response cache's key and the idempotency fingerprint.

Both hash a *canonical* form of the body, so that requests an agent means to be equal are
equal (SEMANTICS.md §7: keys that drift stop hitting): object keys sorted, a field set to
null is the same as an absent one, a message content given as one text part is the same as
the plain string, and tool-call arguments (JSON inside a string, serialised differently by
different SDKs) are compared as JSON.

- `cache_key`: what changes the answer. Not `stream` (a cached answer is served either way),
  `stream_options`, `user`, `metadata`, `store` or other bookkeeping; scoped by tenant (the
  client, unless the policy shares a cache) and by the route (the model name asked for).
- `fingerprint`: the whole request as sent, `stream` included, for `Idempotency-Key`: the same
  key with another fingerprint is a different request, refused (422).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.model import Endpoint

# Fields that never change what the model answers.
_NOT_IN_CACHE_KEY = frozenset(
    {"stream", "stream_options", "user", "metadata", "store", "service_tier",
     "prompt_cache_key", "safety_identifier", "background"}
)  # fmt: skip
_VERSION = b"savepoint-key-v1"


def cache_key(tenant: str, route: str, endpoint: Endpoint, body: dict[str, Any]) -> str:
    kept = {k: v for k, v in body.items() if k not in _NOT_IN_CACHE_KEY}
    return digest(tenant, route, endpoint.path, canonical(kept))


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    return digest(method, path, canonical(body))


def canonical(value: Any) -> bytes:
    """The canonical JSON of a request body."""
    return orjson.dumps(_normalise(value), option=orjson.OPT_SORT_KEYS)


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _normalise(v) for k, v in value.items() if v is not None}
        content = out.get("content")
        if isinstance(content, list) and len(content) == 1 and _is_text_part(content[0]):
            out["content"] = content[0]["text"]
        function = out.get("function")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = _json_string(function["arguments"])
        return out
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and set(part) == {"type", "text"}


def _json_string(text: str) -> Any:
    try:
        return {"json": _normalise(orjson.loads(text))}
    except orjson.JSONDecodeError:
        return text


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256(_VERSION)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguity between parts
        h.update(data)
    return h.hexdigest()

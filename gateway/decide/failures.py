"""What kind of failure an upstream attempt ended in: the one table routing decides on.

upstream said / we saw                         -> Failure
2xx                                            -> None (success)
429 insufficient_quota                         -> QUOTA
429 anything else                              -> RATE_LIMITED
408, 5xx (incl. 529 overloaded)                -> SERVER_ERROR
400/413/422 context_length_exceeded            -> CONTEXT_WINDOW
400 content_filter / content_policy_violation  -> CONTENT_FILTER
other 4xx                                      -> CLIENT_ERROR
connection refused / reset / connect timeout   -> CONNECT
no first token in time                         -> FIRST_BYTE_TIMEOUT
silence mid-stream                             -> IDLE_TIMEOUT
route or client deadline                       -> DEADLINE
malformed or cut answer                        -> SERVER_ERROR
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from gateway.errors import UpstreamError, shape_of
from gateway.model import Failure

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PHRASES = ("maximum context length", "context window", "context_length_exceeded",
                    "prompt is too long")  # fmt: skip
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
_BY_ERROR_CODE = {
    "upstream_unreachable": Failure.CONNECT,
    "connect_timeout": Failure.CONNECT,
    "first_byte_timeout": Failure.FIRST_BYTE_TIMEOUT,
    "idle_timeout": Failure.IDLE_TIMEOUT,
    "deadline_exceeded": Failure.DEADLINE,
}


def classify_reply(status: int, body: bytes) -> Failure | None:
    if 200 <= status < 300:
        return None
    code, kind, message = _error_fields(body)
    if status == 429:
        return Failure.QUOTA if "insufficient_quota" in (code, kind) else Failure.RATE_LIMITED
    if status == 408 or status >= 500:
        return Failure.SERVER_ERROR
    if status in (400, 413, 422):
        if code in _CONTEXT_CODES or any(p in message for p in _CONTEXT_PHRASES):
            return Failure.CONTEXT_WINDOW
        if code in _FILTER_CODES or kind in _FILTER_CODES:
            return Failure.CONTENT_FILTER
    return Failure.CLIENT_ERROR


def classify_error(error: UpstreamError) -> Failure:
    return _BY_ERROR_CODE.get(shape_of(error).code, Failure.SERVER_ERROR)


def retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds the provider asked us to wait: `retry-after-ms` first (what the SDKs read
    first), then `retry-after` as seconds or as an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_epoch)
    except (TypeError, ValueError):
        return None


def _error_fields(body: bytes) -> tuple[str, str, str]:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", "", body[:500].decode("utf-8", "replace").lower()
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return "", "", ""
    code, kind, message = error.get("code"), error.get("type"), error.get("message")
    return (
        code if isinstance(code, str) else "",
        kind if isinstance(kind, str) else "",
        message.lower() if isinstance(message, str) else "",
    )

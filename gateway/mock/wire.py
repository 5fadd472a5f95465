"""OpenAI wire framing shared by the mock's endpoints: content types, SSE event encoding, and
error bodies with the one table of error type / code / message per HTTP status.

Error bodies always carry the four keys OpenAI's schema requires: `{"error": {"message",
"type", "param", "code"}}`, with `null` for the ones that do not apply.
"""

from __future__ import annotations

from typing import Any

import orjson

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"


def data_event(payload: dict[str, Any]) -> bytes:
    """A data-only SSE event, as Chat Completions and legacy Completions stream them."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_event(payload: dict[str, Any]) -> bytes:
    """A named SSE event, as the Responses API streams them; the name is `payload["type"]`."""
    kind: str = payload["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# status -> (type, code, default message); statuses not listed fall back by class.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", "permission_denied", "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("timeout", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict with a concurrent request."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    504: ("server_error", "timeout", "The server timed out."),
}


def error_kind(status: int) -> tuple[str, str | None, str]:
    """(type, code, default message) of an OpenAI error with this HTTP status."""
    if status in _ERRORS:
        return _ERRORS[status]
    if status >= 500:
        return ("server_error", None, "The server had an error while processing your request.")
    return ("invalid_request_error", None, "The request was rejected.")


def error_body(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> bytes:
    kind, default_code, default = error_kind(status)
    code = code or default_code
    error = {"message": message or default, "type": kind, "param": param, "code": code}
    return orjson.dumps({"error": error})


def seconds_header(seconds: float) -> str:
    """`1` for whole seconds (what servers send), `0.5` otherwise."""
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"

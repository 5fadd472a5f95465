"""Every error the gateway makes, and the one table that maps them to HTTP.

    SavepointError
    ├── RequestError                  the client has to change the request
    │   ├── InvalidRequest            400  bad JSON, a missing or wrong field
    │   ├── AuthenticationFailed      401  missing or unknown API key
    │   ├── ModelNotAllowed           403  the client may not use this model
    │   ├── AdminNotConfigured        403  the admin API has no key and auth is on
    │   ├── ModelNotFound             404  no such model in the policy
    │   ├── RouteNotFound             404  no such URL
    │   ├── RunNotFound               404  no journal for that run (admin API)
    │   ├── MethodNotAllowed          405
    │   ├── IdempotencyConflict       409  the request with this key is still running
    │   ├── PayloadTooLarge           413  body over server.max_body_bytes
    │   ├── UnsupportedMediaType      415  body is not application/json
    │   └── IdempotencyKeyReused      422  the key was used with another request
    ├── Refused                   429  a limit or the budget says no (rate_limit_exceeded)
    │   ├── RequestsLimited           429  requests per minute, or requests at once
    │   ├── TokensLimited             429  tokens per minute
    │   ├── BudgetExhausted           429  the client's budget for the period (insufficient_quota)
    │   └── LoopDetected              429  the runaway-agent guard (loop_detected)
    ├── UpstreamError             502  the provider failed; the same request may work later
    │   ├── UpstreamUnreachable       502  connection refused, reset, DNS
    │   ├── UpstreamBadResponse       502  malformed JSON, a stream cut or truncated
    │   ├── UpstreamTimeout           504  connect, first byte, idle gap or total deadline
    │   └── NoHealthyTarget           503  every deployment of the route is benched
    ├── GatewayUnavailable            503  draining for shutdown
    │   └── Overloaded                503  server.max_in_flight requests already in flight
    └── StoreUnavailableError         503  the admin API needs the store, which is down

Statuses, OpenAI error types and default codes live in `_TABLE` and nowhere else. Bodies
always carry the four keys OpenAI's schema requires (`message`, `type`, `param`, `code`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson


class SavepointError(Exception):
    """Base of every error the gateway renders itself."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}  # extra response headers (x-should-retry, retry-after...)


class RequestError(SavepointError):
    pass


class InvalidRequest(RequestError):
    pass


class AuthenticationFailed(RequestError):
    pass


class ModelNotAllowed(RequestError):
    pass


class AdminNotConfigured(RequestError):
    pass


class ModelNotFound(RequestError):
    pass


class RouteNotFound(RequestError):
    pass


class RunNotFound(RequestError):
    pass


class MethodNotAllowed(RequestError):
    pass


class PayloadTooLarge(RequestError):
    pass


class UnsupportedMediaType(RequestError):
    pass


class IdempotencyConflict(RequestError):
    pass


class IdempotencyKeyReused(RequestError):
    pass


class Refused(SavepointError):
    pass


class RequestsLimited(Refused):
    pass


class TokensLimited(Refused):
    pass


class BudgetExhausted(Refused):
    pass


class LoopDetected(Refused):
    pass


class UpstreamError(SavepointError):
    pass


class UpstreamUnreachable(UpstreamError):
    pass


class UpstreamBadResponse(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class NoHealthyTarget(UpstreamError):
    pass


class HeadTooLarge(RequestError):
    pass


class GatewayUnavailable(SavepointError):
    pass


class Overloaded(GatewayUnavailable):
    pass


class StoreUnavailableError(SavepointError):
    pass


@dataclass(frozen=True, slots=True)
class HttpShape:
    status: int
    type: str
    code: str


_TABLE: dict[type[SavepointError], HttpShape] = {
    InvalidRequest: HttpShape(400, "invalid_request_error", "invalid_request"),
    AuthenticationFailed: HttpShape(401, "invalid_request_error", "invalid_api_key"),
    ModelNotAllowed: HttpShape(403, "invalid_request_error", "model_not_allowed"),
    AdminNotConfigured: HttpShape(403, "invalid_request_error", "admin_not_configured"),
    ModelNotFound: HttpShape(404, "invalid_request_error", "model_not_found"),
    RouteNotFound: HttpShape(404, "invalid_request_error", "unknown_url"),
    RunNotFound: HttpShape(404, "invalid_request_error", "run_not_found"),
    MethodNotAllowed: HttpShape(405, "invalid_request_error", "method_not_allowed"),
    PayloadTooLarge: HttpShape(413, "invalid_request_error", "payload_too_large"),
    UnsupportedMediaType: HttpShape(415, "invalid_request_error", "unsupported_media_type"),
    HeadTooLarge: HttpShape(431, "invalid_request_error", "request_header_fields_too_large"),
    IdempotencyConflict: HttpShape(409, "invalid_request_error", "idempotency_request_in_progress"),
    IdempotencyKeyReused: HttpShape(422, "invalid_request_error", "idempotency_key_reused"),
    Refused: HttpShape(429, "requests", "rate_limit_exceeded"),
    RequestsLimited: HttpShape(429, "requests", "rate_limit_exceeded"),
    TokensLimited: HttpShape(429, "tokens", "rate_limit_exceeded"),
    BudgetExhausted: HttpShape(429, "insufficient_quota", "insufficient_quota"),
    LoopDetected: HttpShape(429, "invalid_request_error", "loop_detected"),
    UpstreamError: HttpShape(502, "server_error", "upstream_error"),
    UpstreamUnreachable: HttpShape(502, "server_error", "upstream_unreachable"),
    UpstreamBadResponse: HttpShape(502, "server_error", "upstream_bad_response"),
    UpstreamTimeout: HttpShape(504, "server_error", "upstream_timeout"),
    NoHealthyTarget: HttpShape(503, "server_error", "no_healthy_target"),
    GatewayUnavailable: HttpShape(503, "server_error", "shutting_down"),
    Overloaded: HttpShape(503, "server_error", "overloaded"),
    StoreUnavailableError: HttpShape(503, "server_error", "store_unavailable"),
}


def shape_of(error: SavepointError) -> HttpShape:
    """The HTTP status, OpenAI error type and code for an error (its own code wins)."""
    for cls in type(error).__mro__:
        shape = _TABLE.get(cls)
        if shape is not None:
            code = error.code or shape.code
            return shape if code == shape.code else HttpShape(shape.status, shape.type, code)
    return HttpShape(500, "server_error", "internal_error")


def error_object(error: SavepointError) -> dict[str, str | None]:
    shape = shape_of(error)
    return {"message": error.message, "type": shape.type, "param": error.param, "code": shape.code}


def error_body(error: SavepointError) -> bytes:
    """The JSON body of an error response: `{"error": {message, type, param, code}}`."""
    return orjson.dumps({"error": error_object(error)})


def stream_error_event(error: SavepointError, typed: bool) -> bytes:
    """The SSE event that ends a stream which broke after its 200 headers went out.

    openai-python raises `APIError` for any event whose data has an `error` key. Responses API
    streams also get the typed `error` event fields (`type`, `code`, `message`, `param`).
    """
    return error_event(error_object(error), typed)


def error_event(obj: Mapping[str, object], typed: bool) -> bytes:
    """`stream_error_event` for an error object already made (say, by the upstream)."""
    if typed:
        payload = orjson.dumps({**obj, "type": "error", "error": obj})
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + orjson.dumps({"error": obj}) + b"\n\n"


class ClientDisconnected(Exception):
    """The client went away; nothing can be sent to it any more (logged as status 499)."""

"""aiohttp's routes, JSON and SSE replies, and the one place errors become responses
(`error_reply`).

Generation requests usually never reach aiohttp: `front.py` serves them on the same port and
hands aiohttp the connections of every other request. Its routes here serve a generation
request that follows one of those on the same connection, the same way (`run_generation`).

`errors_and_access_log` is the only middleware. It gives every request a `Trace` and a
request id, renders every `SavepointError` (and aiohttp's own 404/405/413) as an
OpenAI-shaped error, and when the request is over writes its `Records`: the access-log line,
the metrics, the usage ledger. A call that goes on after its client left (detached) is
written by the pipeline when it ends instead. Health probes and successful scrapes of
`/metrics` are neither logged nor counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.breakers import Health
from gateway.config.schema import Policy
from gateway.decide.auth import key_from_headers
from gateway.decide.routing import may_use, visible_models
from gateway.downstream import Downstream
from gateway.errors import (
    ClientDisconnected,
    GatewayUnavailable,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    RouteNotFound,
    SavepointError,
    UnsupportedMediaType,
    error_body,
    shape_of,
    stream_error_event,
)
from gateway.ledger import UsageLedger
from gateway.lifecycle import Drain
from gateway.metrics import Metrics, refused_limit
from gateway.model import Endpoint, Principal, Trace
from gateway.pipeline import Inbound, Pipeline
from gateway.stages.runs import RunJournal
from gateway.stores.base import Store, StoreUnavailable
from gateway.workers import Peers

log = logging.getLogger("savepoint")

POLICY = web.AppKey("policy", Policy)
PIPELINE = web.AppKey("pipeline", Pipeline)
DRAIN = web.AppKey("drain", Drain)
STORE = web.AppKey("store", Store)
STARTED_AT = web.AppKey("started_at", int)
HEALTH = web.AppKey("health", Health)
RUNS = web.AppKey("runs", RunJournal)
METRICS = web.AppKey("metrics", Metrics)
LEDGER = web.AppKey("ledger", UsageLedger)
PEERS = web.AppKey("peers", Peers)  # set only in a worker of `serve --workers N`
TRACE = web.RequestKey("trace", Trace)

_PROBES = frozenset(("/healthz", "/readyz"))
SCRAPE = "/metrics"  # served by admin.py
_ROUTES = (
    "POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses; GET /v1/models"
)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Records:
    """Where a finished request is written: one access-log line, the metrics, the ledger."""

    def __init__(self, access_log: AccessLog, metrics: Metrics, ledger: UsageLedger):
        self._access_log = access_log
        self._metrics = metrics
        self._ledger = ledger

    def write(self, trace: Trace, ended: float, refused: str | None = None) -> None:
        """`refused`: the limit that refused the request (`refused_limit`), if one did."""
        self._access_log.write(trace, ended)
        self._metrics.observe(trace, ended, refused)
        self._ledger.record(trace, ended)


RECORDS = web.AppKey("records", Records)


def add_routes(app: web.Application) -> None:
    for endpoint in Endpoint:
        app.router.add_post("/v1" + endpoint.path, partial(generation, endpoint))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.middlewares.append(errors_and_access_log)


@web.middleware
async def errors_and_access_log(request: web.Request, handler: _Handler) -> web.StreamResponse:
    if request.path in _PROBES:
        return await handler(request)
    trace = Trace(os.urandom(16).hex(), request.method, request.path, time.monotonic())
    request[TRACE] = trace
    refused: str | None = None  # the limit that refused the request
    try:
        response = await handler(request)
        if not trace.status:
            trace.status = response.status
        return response
    except SavepointError as error:
        refused = refused_limit(error)
        return _render(error, trace)
    except web.HTTPException as exc:
        return _render(_from_http_exception(request, exc), trace, exc.headers)
    except ClientDisconnected:
        trace.status = 499
        return web.Response(status=499)
    except asyncio.CancelledError:
        if not trace.detached:
            trace.status = 499  # the client went away; aiohttp cancelled the handler
        raise
    except Exception:
        log.exception("internal error on %s %s (request %s)", request.method, request.path,
                      trace.request_id)  # fmt: skip
        trace.status, trace.error_code = 500, "internal_error"
        return web.Response(status=500, body=INTERNAL_ERROR, content_type="application/json")
    finally:
        if not trace.detached and (trace.path != SCRAPE or trace.status != 200):
            request.app[RECORDS].write(trace, time.monotonic(), refused)


INTERNAL_ERROR = (
    b'{"error":{"message":"internal gateway error; see the gateway log","type":'
    b'"server_error","param":null,"code":"internal_error"}}'
)


def error_reply(error: SavepointError, trace: Trace) -> tuple[int, dict[str, str], bytes]:
    """The response for an error: its status, headers and OpenAI-shaped body, noted on the
    trace. The one place an error becomes HTTP, for aiohttp's routes and the front's."""
    shape = shape_of(error)
    trace.status, trace.error_code = shape.status, shape.code
    headers = {
        **error.headers,
        "x-request-id": trace.request_id,
        "Content-Type": "application/json",
    }
    return shape.status, headers, error_body(error)


def _render(
    error: SavepointError, trace: Trace, extra: Mapping[str, str] | None = None
) -> web.Response:
    status, headers, body = error_reply(error, trace)
    if extra and "Allow" in extra:
        headers["Allow"] = extra["Allow"]
    return web.Response(status=status, body=body, headers=headers)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> SavepointError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _too_large(request)
    if isinstance(exc, web.HTTPNotFound):
        return RouteNotFound(
            f"unknown URL {request.method} {request.path}; this gateway serves {_ROUTES}"
        )
    return SavepointError(exc.text or exc.reason, code="http_error")


def _too_large(request: web.Request) -> PayloadTooLarge:
    return too_large(request.app[POLICY].server.max_body_bytes)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than this gateway accepts ({limit} bytes, "
        "server.max_body_bytes in the policy)"
    )


async def generation(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    downstream = AiohttpDownstream(request)
    inbound = Inbound(
        endpoint=endpoint,
        api_key=request_key(request),
        read_timeout=request.headers.get("x-stainless-read-timeout"),
        cache_control=request.headers.get("Cache-Control"),
        run=request.headers.get("X-Savepoint-Run"),
        attempt=request.headers.get("X-Savepoint-Attempt"),
        idempotency_key=request.headers.get("Idempotency-Key"),
        read_body=partial(_read_body, request),
    )
    await run_generation(request.app[PIPELINE], inbound, downstream, request[TRACE])
    return downstream.response


async def run_generation(
    pipeline: Pipeline, inbound: Inbound, downstream: Downstream, trace: Trace
) -> None:
    """Run the pipeline; a bug after a stream's commit point ends the stream with an error
    event (the status is already 200). Anything else is raised, for the caller to render."""
    try:
        await pipeline.run(inbound, downstream, trace)
    except Exception as error:
        if not downstream.committed or isinstance(error, ClientDisconnected):
            raise
        log.exception("internal error in a stream (request %s)", trace.request_id)
        trace.error_code = "internal_error"
        internal = SavepointError(
            "internal gateway error; see the gateway log", code="internal_error"
        )
        await downstream.write(stream_error_event(internal, inbound.endpoint.typed_events))
        await downstream.finish()


def check_json(content_type: str | None) -> None:
    """Refuse a request body that says it is not JSON (no Content-Type is taken as JSON)."""
    if content_type:
        mime = content_type.partition(";")[0].strip().lower()
        if mime != "application/json" and not mime.endswith("+json"):
            raise UnsupportedMediaType(
                f"the request body must be JSON (Content-Type: application/json), got {mime}"
            )


async def _read_body(request: web.Request) -> bytes:
    check_json(request.headers.get("Content-Type"))
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None


class AiohttpDownstream:
    """`Downstream` over one aiohttp request."""

    __slots__ = ("_gone", "_request", "_response", "_stream")

    def __init__(self, request: web.Request):
        self._request = request
        self._response: web.StreamResponse | None = None
        self._stream: web.StreamResponse | None = None
        self._gone = False

    @property
    def committed(self) -> bool:
        return self._stream is not None

    @property
    def gone(self) -> bool:
        return self._gone

    @property
    def response(self) -> web.StreamResponse:
        assert self._response is not None, "the pipeline ended without a reply"
        return self._response

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self._response = web.Response(status=status, body=body, headers=headers)

    async def commit(self, headers: Mapping[str, str]) -> None:
        stream = web.StreamResponse(status=200, headers=headers)
        try:
            await stream.prepare(self._request)
        except (ConnectionError, RuntimeError) as e:
            self._gone = True
            raise ClientDisconnected() from e
        self._stream = self._response = stream  # committed only once the headers are out

    async def write(self, data: bytes) -> None:
        assert self._stream is not None
        try:
            await self._stream.write(data)
        except (ConnectionError, RuntimeError) as e:
            self._gone = True
            raise ClientDisconnected() from e

    async def finish(self) -> None:
        assert self._stream is not None
        try:
            await self._stream.write_eof()
        except (ConnectionError, RuntimeError) as e:
            self._gone = True
            raise ClientDisconnected() from e


async def list_models(request: web.Request) -> web.Response:
    policy, principal = request.app[POLICY], _principal(request)
    created = request.app[STARTED_AT]
    data = [_model_object(m.name, m.owned_by, created) for m in visible_models(policy, principal)]
    request[TRACE].client = principal.name
    return web.json_response({"object": "list", "data": data}, headers=_id(request))


async def get_model(request: web.Request) -> web.Response:
    policy, principal = request.app[POLICY], _principal(request)
    name = request.match_info["model"]
    request[TRACE].client, request[TRACE].model = principal.name, name
    spec = policy.models.get(name)
    if spec is None or not may_use(principal, name):
        raise ModelNotFound(
            f"the model `{name}` does not exist or you may not use it", param="model"
        )
    body = _model_object(name, spec.owned_by, request.app[STARTED_AT])
    return web.json_response(body, headers=_id(request))


def request_key(request: web.Request) -> str | None:
    """The API key a request carries (`Authorization: Bearer` or `x-api-key`)."""
    return key_from_headers(request.headers.get("Authorization"), request.headers.get("x-api-key"))


def _principal(request: web.Request) -> Principal:
    return request.app[PIPELINE].authenticate(request_key(request))


def _model_object(name: str, owned_by: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def _id(request: web.Request) -> dict[str, str]:
    return {"x-request-id": request[TRACE].request_id}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """503 while draining (so load balancers stop sending); the store's state is reported
    but does not make the gateway unready: it keeps serving without its store."""
    if request.app[DRAIN].draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await request.app[STORE].ping()
        store = "ok"
    except StoreUnavailable as e:
        store = f"unavailable: {e}"
    return web.json_response({"status": "ready", "store": store})


__all__ = ["GatewayUnavailable", "add_routes"]

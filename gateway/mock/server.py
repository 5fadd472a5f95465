"""The mock's aiohttp application: routes, and the fixed order in which a generation request
is handled.

    knobs (server's, overridden by `x-mock`) -> read JSON body -> count (request number in
    scope) -> validate -> `delay` -> decide the fault -> build the planned answer -> deliver

Counting comes before validation, so a rejected request (400, sent without delay) still uses
its number. A request picked for `Fail` or `Hang` is not built at all. Models and unknown
`/v1` paths are counted and logged but get no number and no faults. State (knobs, ledger)
lives in the app under typed `AppKey`s; `build_mock_app` is the only place that creates it.
`POST /_mock/knobs` replaces the server's knobs while it runs; a request reads them once, on
arrival.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from .catalog import model_list, model_object
from .chat import plan_chat
from .completions import plan_completion
from .delivery import deliver, deliver_fault, gone, json_response, wait_while_connected
from .embeddings import plan_embeddings
from .faults import Fail, Hang, Healthy, decide
from .knobs import (
    KnobError,
    Knobs,
    ServerKnobs,
    knobs_to_json,
    parse_knob_body,
    parse_knob_header,
)
from .plan import Call, InvalidRequest, Plan
from .responses_api import plan_response
from .stats import LOG_SIZE, Ledger
from .wire import error_body

KNOBS = web.AppKey("mock_knobs", ServerKnobs)
LEDGER = web.AppKey("mock_ledger", Ledger)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Builder = Callable[[Call], Plan]


def _knobs_for(request: web.Request) -> tuple[Knobs, KnobError | None]:
    """The server's knobs overridden by the request's `x-mock` header (or why it is bad)."""
    knobs, header = request.app[KNOBS].current, request.headers.get("x-mock")
    if not header:
        return knobs, None
    try:
        return parse_knob_header(header, knobs), None
    except KnobError as e:
        return knobs, e


def _invalid(message: str, param: str | None, request_id: str) -> web.Response:
    return json_response(error_body(400, message, param=param), request_id, 400)


def _generation(build: Builder) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        ledger = request.app[LEDGER]
        knobs, knob_error = _knobs_for(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) and model else None
        n = ledger.number(request.path, model, knobs.scope, request.headers, body)
        request_id = f"mock-{knobs.scope or 'default'}-{n}"
        if knob_error is not None:
            return _invalid(str(knob_error), "x-mock", request_id)
        if not isinstance(body, dict):
            return _invalid("The request body must be a JSON object.", None, request_id)
        if model is None:
            return _invalid("You must provide a model parameter.", "model", request_id)
        if knobs.no_usage:  # a provider that ignores stream_options.include_usage
            body.pop("stream_options", None)
        if knobs.delay > 0 and not await wait_while_connected(request, knobs.delay):
            return web.Response(status=204)  # the client is gone; aiohttp drops this quietly
        fault = decide(knobs, n)
        if isinstance(fault, Fail | Hang):
            message = f"Mock fault for request {n} in scope {knobs.scope or 'default'!r}."
            return await deliver_fault(request, fault, message, request_id)
        call = Call(
            body, model, knobs.chunks, knobs.dimensions, ledger.next_ident(), int(time.time())
        )
        try:
            plan = build(call)
        except InvalidRequest as e:
            return _invalid(e.message, e.param, request_id)
        response = await deliver(request, plan, fault, knobs.chunk_delay, request_id)
        if plan.usage is not None and isinstance(fault, Healthy) and not gone(request):
            ledger.bill(request.headers.get("X-Client-Request-Id") or request_id, plan.usage)
        return response

    return handle


def _other(answer: Callable[[web.Request, Knobs], bytes], status: int = 200) -> Handler:
    """A `/v1` endpoint without request numbers or faults; `x-mock` may set scope and models."""

    async def handle(request: web.Request) -> web.StreamResponse:
        knobs, knob_error = _knobs_for(request)
        ledger = request.app[LEDGER]
        ledger.note(request.path, knobs.scope, request.headers)
        request_id = f"mock-{ledger.next_ident()}"
        if knob_error is not None:
            return _invalid(str(knob_error), "x-mock", request_id)
        return json_response(answer(request, knobs), request_id, status)

    return handle


def _list_models(request: web.Request, knobs: Knobs) -> bytes:
    return orjson.dumps(model_list(knobs.models))


def _get_model(request: web.Request, knobs: Knobs) -> bytes:
    return orjson.dumps(model_object(request.match_info["model"]))


def _unknown(request: web.Request, knobs: Knobs) -> bytes:
    return error_body(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")


async def _stats(request: web.Request) -> web.StreamResponse:
    return json_response(orjson.dumps(request.app[LEDGER].stats()), "mock-stats")


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[LEDGER].reset()
    return json_response(b'{"reset":true}', "mock-reset")


async def _billed(request: web.Request) -> web.StreamResponse:
    return json_response(orjson.dumps(request.app[LEDGER].billed()), "mock-billed")


async def _requests(request: web.Request) -> web.StreamResponse:
    text = request.query.get("limit", str(LOG_SIZE))
    if not text.isdigit():
        return _invalid("'limit' must be a non-negative integer.", "limit", "mock-requests")
    return json_response(orjson.dumps(request.app[LEDGER].recent(int(text))), "mock-requests")


def _knobs_json(knobs: Knobs) -> web.Response:
    return json_response(orjson.dumps(knobs_to_json(knobs)), "mock-knobs")


async def _show_knobs(request: web.Request) -> web.StreamResponse:
    return _knobs_json(request.app[KNOBS].current)


async def _set_knobs(request: web.Request) -> web.StreamResponse:
    """Replace the server's knobs: those it started with, changed as the body says (so an
    empty body restores them). A bad body changes nothing."""
    server_knobs = request.app[KNOBS]
    try:
        knobs = parse_knob_body(await request.read(), request.content_type, server_knobs.started)
    except KnobError as e:
        return _invalid(str(e), e.knob, "mock-knobs")
    server_knobs.current = knobs
    return _knobs_json(knobs)


def build_mock_app(knobs: Knobs) -> web.Application:
    """The fake OpenAI-compatible provider, answering according to `knobs`."""
    app = web.Application()
    app[KNOBS] = ServerKnobs(knobs)
    app[LEDGER] = Ledger(prefix=f"mock{os.urandom(4).hex()}")
    app.router.add_post("/v1/chat/completions", _generation(plan_chat))
    app.router.add_post("/v1/completions", _generation(plan_completion))
    app.router.add_post("/v1/embeddings", _generation(plan_embeddings))
    app.router.add_post("/v1/responses", _generation(plan_response))
    app.router.add_get("/v1/models", _other(_list_models))
    app.router.add_get("/v1/models/{model:.+}", _other(_get_model))
    app.router.add_get("/_mock/stats", _stats)
    app.router.add_post("/_mock/reset", _reset)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_get("/_mock/billed", _billed)
    app.router.add_get("/_mock/knobs", _show_knobs)
    app.router.add_post("/_mock/knobs", _set_knobs)
    app.router.add_route("*", "/v1/{tail:.*}", _other(_unknown, 404))
    return app

"""The response cache stage: answer from the store, or capture the live answer and keep it.

One stored form per answer: the JSON body a non-streamed request gets. A streamed answer is
assembled into that form once it has completed (`transcode.assemble`); a streaming request
that hits is served the body turned back into a proper event stream (`transcode.disassemble`).
Only complete, successful answers are kept (a final `finish_reason` of stop / tool_calls, or a
completed response; never an error, a cut or a truncated one). Writes happen after the client
has its answer, in background tasks; a store that is down makes every lookup a miss (the
response says so in `x-savepoint-degraded`) and is logged once, not per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson

from gateway.breakers import EventSink
from gateway.config.schema import CacheSpec, ModelSpec
from gateway.decide.caching import CacheMode, cache_mode
from gateway.decide.keys import cache_key
from gateway.decide.usage import usage_from_body
from gateway.downstream import Downstream
from gateway.model import Call, Principal, Trace
from gateway.stages.capture import Capture
from gateway.stages.guard import MAX_PENDING, StoreGuard
from gateway.stages.relay import JSON, SSE_HEADERS
from gateway.stores.base import Store
from gateway.transcode import disassemble
from gateway.values import value

SHARED_TENANT = "*"  # clients' names are policy names, which cannot be "*"


@value
class CachePlan:
    key: str
    group: str
    spec: CacheSpec
    mode: CacheMode


class ResponseCache:
    def __init__(self, store: Store, events: EventSink, max_pending: int = MAX_PENDING):
        self._store = store
        self._guard = StoreGuard("cache", events, max_pending)

    def plan(
        self, spec: ModelSpec, principal: Principal, call: Call, cache_control: str | None
    ) -> CachePlan | None:
        """What the cache does for this request; None when the model has no cache."""
        if not spec.cache.enabled:
            return None
        tenant = SHARED_TENANT if spec.cache.shared else principal.name
        key = cache_key(tenant, spec.name, call.endpoint, call.body)
        return CachePlan(key, spec.name, spec.cache, cache_mode(cache_control))

    def look_up(self, plan: CachePlan) -> asyncio.Task[tuple[bool, bytes | None]]:
        """Start the lookup now, for `answer` to use: it runs alongside admission's store
        call, so that a request pays for one round trip instead of two in a row."""
        lookup = self._guard.call(self._store.cache_get(plan.key, plan.group))
        return asyncio.get_running_loop().create_task(lookup)

    async def answer(
        self,
        plan: CachePlan,
        call: Call,
        trace: Trace,
        downstream: Downstream,
        capture: Capture | None,
        started: Awaitable[tuple[bool, bytes | None]] | None = None,
    ) -> bytes | None:
        """Serve a stored answer if there is one (and return it), else note the miss.
        `started`: the lookup `look_up` began."""
        trace.cache = plan.mode.label
        trace.extra_headers["x-savepoint-cache"] = plan.mode.label
        if not plan.mode.lookup:
            return None
        if started is None:
            started = self._guard.call(self._store.cache_get(plan.key, plan.group))
        ok, body = await started
        if not ok:
            trace.extra_headers["x-savepoint-degraded"] = "store"
        if body is None:
            return None
        trace.cache = trace.extra_headers["x-savepoint-cache"] = "hit"
        trace.target = "cache"
        await serve_stored(body, call, trace, downstream, capture)
        return body

    def keep(self, plan: CachePlan, body: bytes) -> None:
        """Store a complete answer after the fact, if the request allows and it fits."""
        if plan.mode.store and len(body) <= plan.spec.max_entry_bytes:
            spec = plan.spec
            self._guard.later(
                self._store.cache_put(plan.key, body, spec.ttl, plan.group, spec.max_entries)
            )

    async def close(self) -> None:
        await self._guard.close()


async def serve_stored(
    body: bytes, call: Call, trace: Trace, downstream: Downstream, capture: Capture | None
) -> None:
    """Answer with a stored body: whole, or as an event stream for a streaming request; the
    capture sees the answer as if it were live."""
    trace.status = 200
    trace.saved = usage_from_body(orjson.loads(body))
    headers = {
        "x-request-id": trace.request_id,
        "x-savepoint-request-id": trace.request_id,
        **trace.extra_headers,
    }
    if not call.stream:
        headers = {**headers, "Content-Type": JSON}
        if capture is not None:
            capture.status, capture.headers, capture.body = 200, headers, body
            capture.complete = True
        await downstream.reply(200, headers, body)
        return
    options = call.body.get("stream_options") or {}
    events = disassemble(call.endpoint, body, bool(options.get("include_usage")))
    headers = {**headers, **SSE_HEADERS}
    if capture is not None:
        capture.status, capture.headers = 200, headers
        capture.add_stored(events, body)
        capture.complete = True
    await downstream.commit(headers)
    await downstream.write(events)
    await downstream.finish()

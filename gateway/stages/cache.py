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
import contextlib
from dataclasses import dataclass

import orjson

from gateway.breakers import EventSink
from gateway.config.schema import CacheSpec, ModelSpec
from gateway.decide.caching import CacheMode, cache_mode
from gateway.decide.keys import cache_key
from gateway.decide.usage import usage_from_body
from gateway.downstream import Downstream
from gateway.model import Call, Principal, Trace
from gateway.stages.capture import Capture
from gateway.stages.relay import JSON, SSE_HEADERS
from gateway.stores.base import Store, StoreUnavailable
from gateway.transcode import assemble, complete, disassemble

SHARED_TENANT = "*"  # clients' names are policy names, which cannot be "*"


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: str
    group: str
    spec: CacheSpec
    mode: CacheMode


class ResponseCache:
    def __init__(self, store: Store, events: EventSink):
        self._store = store
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False

    def plan(
        self, spec: ModelSpec, principal: Principal, call: Call, cache_control: str | None
    ) -> CachePlan | None:
        """What the cache does for this request; None when the model has no cache."""
        if not spec.cache.enabled:
            return None
        tenant = SHARED_TENANT if spec.cache.shared else principal.name
        key = cache_key(tenant, spec.name, call.endpoint, call.body)
        return CachePlan(key, spec.name, spec.cache, cache_mode(cache_control))

    async def answer(
        self, plan: CachePlan, call: Call, trace: Trace, downstream: Downstream
    ) -> bool:
        """Serve a stored answer if there is one (True), else note the miss (False)."""
        trace.cache = plan.mode.label
        trace.extra_headers["x-savepoint-cache"] = plan.mode.label
        if not plan.mode.lookup:
            return False
        try:
            body = await self._store.cache_get(plan.key, plan.group)
            self._recovered()
        except StoreUnavailable as e:
            self._failed(e)
            trace.extra_headers["x-savepoint-degraded"] = "store"
            return False
        if body is None:
            return False
        trace.cache = trace.extra_headers["x-savepoint-cache"] = "hit"
        trace.target, trace.status = "cache", 200
        trace.saved = usage_from_body(orjson.loads(body))
        headers = {
            "x-request-id": trace.request_id,
            "x-savepoint-request-id": trace.request_id,
            **trace.extra_headers,
        }
        if not call.stream:
            await downstream.reply(200, {**headers, "Content-Type": JSON}, body)
            return True
        options = call.body.get("stream_options") or {}
        events = disassemble(call.endpoint, body, bool(options.get("include_usage")))
        await downstream.commit({**headers, **SSE_HEADERS})
        await downstream.write(events)
        await downstream.finish()
        return True

    def capture(self, plan: CachePlan | None) -> Capture | None:
        return Capture(plan.spec.max_entry_bytes) if plan and plan.mode.store else None

    def keep(self, plan: CachePlan, call: Call, capture: Capture) -> None:
        """Store the captured answer if it is complete and worth it, after the fact."""
        if not capture.complete or capture.too_big:
            return
        body = capture.body
        if body is None:
            body = assemble(call.endpoint, bytes(capture.events))
        if body is None or len(body) > plan.spec.max_entry_bytes:
            return
        if not complete(call.endpoint, body):
            return
        task = asyncio.get_running_loop().create_task(self._put(plan, body))
        self._tasks.add(task)  # kept by reference until written; awaited at shutdown
        task.add_done_callback(self._tasks.discard)

    async def _put(self, plan: CachePlan, body: bytes) -> None:
        try:
            await self._store.cache_put(
                plan.key, body, plan.spec.ttl, plan.group, plan.spec.max_entries
            )
            self._recovered()
        except StoreUnavailable as e:
            self._failed(e)

    async def close(self) -> None:
        """Let pending writes finish (briefly), then cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _failed(self, error: StoreUnavailable) -> None:
        if not self._failing:
            self._failing = True
            self._events({"event": "store_unavailable", "purpose": "cache", "error": str(error)})

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self._events({"event": "store_recovered", "purpose": "cache"})

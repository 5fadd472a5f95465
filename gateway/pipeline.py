"""The fixed order of stages every generation request goes through.

    authenticate -> parse -> resolve policy -> admit (limits, budget, loop guard)
        -> idempotency -> run journal -> response cache -> dispatch

Admission reserves what a request may take; the reservation is settled once the request is
over, detached or not. A stage ends a request early by raising a
`SavepointError` (rendered once, by the server) or by replying itself. What happened is
recorded on the request's `Trace`, which the access log writes once the request is over.

A plain request (no run, no `Idempotency-Key`) to a cached model whose admission calls the
store starts its cache lookup alongside admission: two store calls at once, one round trip
of waiting. Its result counts only once admission has admitted the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.breakers import EventSink
from gateway.config.schema import ModelSpec, Policy
from gateway.decide.auth import authenticate
from gateway.decide.calls import parse_call
from gateway.decide.routing import resolve_model
from gateway.decide.runs import check_run_headers
from gateway.downstream import Downstream
from gateway.errors import GatewayUnavailable
from gateway.lifecycle import SHUTDOWN, Drain
from gateway.model import Call, Endpoint, Principal, Trace
from gateway.stages.admit import Admission, Ticket
from gateway.stages.cache import CachePlan, ResponseCache
from gateway.stages.capture import Capture
from gateway.stages.dispatch import Dispatcher
from gateway.stages.idempotency import Idempotency
from gateway.stages.lead import Lead
from gateway.stages.runs import RunJournal
from gateway.values import value


@value
class Inbound:
    """A generation request as the server hands it over; the body is read after auth."""

    endpoint: Endpoint
    api_key: str | None
    read_timeout: str | None
    cache_control: str | None
    run: str | None  # X-Savepoint-Run
    attempt: str | None  # X-Savepoint-Attempt
    idempotency_key: str | None
    read_body: Callable[[], Awaitable[bytes]]


_KEEP_LIMIT = 8 * 1024 * 1024  # the largest answer the journal or the cache will keep


class Pipeline:
    def __init__(
        self,
        policy: Policy,
        admission: Admission,
        idempotency: Idempotency,
        runs: RunJournal,
        cache: ResponseCache,
        dispatcher: Dispatcher,
        drain: Drain,
        events: EventSink,
        finished: Callable[[Trace, float], None],
    ):
        self._policy = policy
        self._events = events
        self._finished = finished  # writes a detached call's records once it is over
        self._detached: set[asyncio.Task[None]] = set()
        self._admission = admission
        self._idempotency = idempotency
        self._runs = runs
        self._cache = cache
        self._dispatcher = dispatcher
        self._drain = drain
        self._clients = {
            key_hash: Principal(client.name, client.models)
            for client in policy.clients.values()
            for key_hash in client.key_hashes
        }

    async def _answer(
        self,
        principal: Principal,
        spec: ModelSpec,
        call: Call,
        raw: bytes,
        inbound: Inbound,
        trace: Trace,
        downstream: Downstream,
        lead: Lead | None,
        ticket: Ticket | None,
        plan: CachePlan | None,
        lookup: asyncio.Task[tuple[bool, bytes | None]] | None,
    ) -> None:
        """Answer from the run journal, the cache, or live; keep a complete live answer for
        the cache and the journal; settle the request's `Idempotency-Key` with the answer,
        whatever happens."""
        capture: Capture | None = None
        error: BaseException | None = None
        try:
            step = await self._runs.step(principal, spec, call, inbound.run, inbound.attempt)
            if step is not None or plan is not None or lead is not None:
                detach = step is not None or lead is not None
                capture = Capture(
                    _KEEP_LIMIT, call.endpoint, detach=detach, tee=lead.publish if lead else None
                )
            if step is not None and await self._runs.replay(step, call, trace, downstream, capture):
                return
            hit = None
            if plan is not None:
                hit = await self._cache.answer(plan, call, trace, downstream, capture, lookup)
            if hit is not None:
                if step is not None:  # a run's step answered from the cache is still its step
                    self._runs.keep(step, hit)
                return
            tokens = ticket.reservation.tokens if ticket is not None else 1
            await self._dispatcher.dispatch(spec, call, raw, trace, downstream, capture, tokens)
            body = capture.answer() if capture is not None else None
            if body is not None:  # complete and successful: worth keeping
                if plan is not None:
                    self._cache.keep(plan, body)
                if step is not None:
                    self._runs.keep(step, body)
        except BaseException as e:
            error = e
            raise
        finally:
            if lookup is not None and not lookup.done():
                lookup.cancel()
            if lead is not None:
                lead.settle(capture, error)
            if ticket is not None:
                await self._admission.settle(ticket, trace)

    async def _detachable(self, live: Coroutine[Any, Any, None], trace: Trace) -> None:
        """Detach and complete: if the client goes away, the call it paid for goes on to the
        end (bounded by its deadline) and is journaled, so its retry gets it replayed."""
        task = asyncio.get_running_loop().create_task(live)
        self._detached.add(task)  # kept by reference; finished or cancelled at shutdown
        task.add_done_callback(self._detached.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                trace.detached = True
                task.add_done_callback(lambda _: self._finished(trace, time.monotonic()))
                self._events({"event": "detached", "request_id": trace.request_id,
                               "run": trace.run})  # fmt: skip
            raise

    async def close(self) -> None:
        """At shutdown: give detached calls a moment to finish, then cancel them."""
        if self._detached:
            await asyncio.wait(list(self._detached), timeout=5.0)
        for task in list(self._detached):
            task.cancel()

    def authenticate(self, api_key: str | None) -> Principal:
        """Stage 1 alone, for the routes that are not generation calls (GET /v1/models)."""
        return authenticate(self._clients, api_key)

    async def run(self, inbound: Inbound, downstream: Downstream, trace: Trace) -> None:
        token = self._drain.enter()
        ticket: Ticket | None = None
        lookup: asyncio.Task[tuple[bool, bytes | None]] | None = None
        try:
            principal = authenticate(self._clients, inbound.api_key)
            trace.client = principal.name
            raw = await inbound.read_body()
            call = parse_call(inbound.endpoint, raw, inbound.read_timeout)
            trace.model, trace.stream = call.model, call.stream
            spec = resolve_model(self._policy, principal, call.model)
            check_run_headers(inbound.run, inbound.attempt)
            plan = self._cache.plan(spec, principal, call, inbound.cache_control)
            if (
                plan is not None
                and plan.mode.lookup
                and inbound.run is None  # a run's journal and a key's record come first
                and inbound.idempotency_key is None
                and self._admission.calls_store(principal, spec)
            ):
                lookup = self._cache.look_up(plan)  # alongside admission: one round trip
            ticket = await self._admission.admit(principal, spec, call, inbound.run, trace)
            lead = None
            if inbound.idempotency_key is not None:
                lead = await self._idempotency.lead(
                    principal, call, inbound.idempotency_key, trace, downstream
                )
                if lead is None:  # replayed, or attached to the same request in flight
                    return
            answer = self._answer(
                principal, spec, call, raw, inbound, trace, downstream, lead, ticket, plan, lookup
            )
            ticket = lookup = None  # the answer settles the one and awaits the other
            if inbound.run is None and lead is None:
                await answer
            else:  # a call someone means to retry: it goes on if its client leaves
                await self._detachable(answer, trace)
        except asyncio.CancelledError:
            if not self._drain.expired or downstream.committed:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # we answer instead of dying; the cancellation was ours
            raise GatewayUnavailable(SHUTDOWN) from None
        finally:
            if lookup is not None:  # refused before the answer: the lookup goes unused
                lookup.cancel()
            try:
                if ticket is not None:  # over before `_answer`: replayed, attached, or a 409/422
                    await self._admission.settle(ticket, trace)
            finally:
                self._drain.leave(token)

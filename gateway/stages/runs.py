"""Durable agent runs: every call of a run is journaled, and a restarted agent replays the
steps it already paid for, at no token cost, then continues live.

A client names its run with `X-Savepoint-Run: <id>`. A step is the request in the cache's
canonical form (so streamed or not does not matter) plus its *occurrence*: how many identical
requests came before it in the same attempt of the run. An attempt is named by the optional
`X-Savepoint-Attempt` header (one value per process start of the agent); without it every
occurrence is the first, so an identical request in the same run replays the first answer.
Only complete, successful answers are journaled: a failed step runs live again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import orjson

from gateway import jsonbytes
from gateway.breakers import EventSink
from gateway.config.schema import ModelSpec
from gateway.decide.keys import cache_key
from gateway.decide.usage import usage_from_body
from gateway.downstream import Downstream
from gateway.model import Call, Principal, Trace
from gateway.stages.cache import serve_stored
from gateway.stages.capture import Capture
from gateway.stages.guard import MAX_PENDING, StoreGuard
from gateway.stores.base import Store


@dataclass(frozen=True, slots=True)
class RunStep:
    run: str  # "<client>/<run id>": one journal per client and run
    step: str  # the step's key, occurrence included
    occurrence: int
    model: str


def run_key(client: str, run_id: str) -> str:
    return f"{client}/{run_id}"


class RunJournal:
    def __init__(
        self, store: Store, events: EventSink, retention: float, max_pending: int = MAX_PENDING
    ):
        self._store = store
        self._guard = StoreGuard("runs", events, max_pending)
        self._retention = retention

    async def step(
        self,
        principal: Principal,
        spec: ModelSpec,
        call: Call,
        run_id: str | None,
        attempt: str | None,
    ) -> RunStep | None:
        """Where this request sits in its run; None when it is not part of one. The headers
        were checked (`decide.runs.check_run_headers`)."""
        if run_id is None:
            return None
        run = run_key(principal.name, run_id)
        request = cache_key(principal.name, spec.name, call.endpoint, call.body)
        occurrence = 0
        if attempt is not None:
            ok, count = await self._guard.call(
                self._store.journal_count(run, f"{attempt}:{request}", self._retention)
            )
            occurrence = (count or 1) - 1 if ok else 0
        step = hashlib.sha256(f"{request}:{occurrence}".encode()).hexdigest()
        return RunStep(run, step, occurrence, spec.name)

    async def replay(
        self,
        step: RunStep,
        call: Call,
        trace: Trace,
        downstream: Downstream,
        capture: Capture | None,
    ) -> bool:
        """Answer from the journal if this step was already paid for (True)."""
        trace.run = step.run
        ok, body = await self._guard.call(self._store.journal_get(step.run, step.step))
        if not ok:
            trace.extra_headers["x-savepoint-degraded"] = "store"
        if body is None:
            return False
        trace.extra_headers["x-savepoint-replayed"] = "true"
        trace.cache, trace.target = "replay", "journal"
        await serve_stored(body, call, trace, downstream, capture)
        return True  # a replay writes nothing: it is on the access log, at no store cost

    def keep(self, step: RunStep, body: bytes) -> None:
        """Journal a complete answer of this step (after the client has it)."""
        usage = usage_from_body(orjson.loads(body))
        meta = jsonbytes.dumps({
            "time": round(time.time(), 3),
            "model": step.model,
            "step": step.step[:16],
            "occurrence": step.occurrence,
            "tokens": usage.total_tokens if usage else None,
        })  # fmt: skip
        self._guard.later(self._store.journal_put(step.run, step.step, body, meta, self._retention))

    async def steps(self, run: str) -> list[dict[str, object]] | None:
        ok, metas = await self._guard.call(self._store.journal_steps(run))
        return [orjson.loads(m) for m in metas or []] if ok else None

    async def drop(self, run: str) -> int | None:
        ok, dropped = await self._guard.call(self._store.journal_drop(run))
        return dropped if ok else None

    async def close(self) -> None:
        await self._guard.close()

"""`Idempotency-Key`: a keyed request executes once; its duplicates attach, its retries replay.

The first request with a key (per client) claims it in the store and becomes its *lead*: it
executes, and records its answer as it goes (the status and headers, then the body or every
event of the stream) in memory for the duplicates in this process and in the store for those
in other replicas. A duplicate that arrives meanwhile *follows* the lead instead of calling
upstream: a non-streamed one waits for the whole answer; a streamed one gets the events so
far, then the rest as they come. Once the lead ends, its answer is kept (2xx and
deterministic 4xx, see `decide.idempotency`) and replayed to every retry with
`idempotent-replayed: true`; anything else is marked failed (the followers get that failure,
which says to retry) and the next request with the key executes afresh.

The lead's lease is renewed every third of `idempotency.lease`. When the lead's gateway dies,
the lease lapses and the next request with the key takes it over and executes once. A
follower that has not started answering takes over too (it starts following a stream held
elsewhere only once the lead shows it is alive: its log grows or its lease is renewed); one
that already streamed part of the dead lead's answer ends its stream with a retryable error
event.

The same key with another request (method, path, canonical body) is refused with 422. A
follower that waited `idempotency.wait` (cut to the client's own deadline) for a lead that
has not started answering gets 409 with `Retry-After`. A store that is down degrades the
key to this process: duplicates here still attach, replicas cannot see the record.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from dataclasses import replace
from functools import partial
from typing import Any

import orjson

from gateway.breakers import EventSink
from gateway.config.schema import IdempotencySpec
from gateway.decide.deadlines import client_budget
from gateway.decide.idempotency import parse_key, record_key
from gateway.decide.keys import fingerprint
from gateway.decide.usage import usage_from_body, usage_from_run
from gateway.downstream import Downstream
from gateway.errors import (
    IdempotencyConflict,
    IdempotencyKeyReused,
    InvalidRequest,
    error_event,
    error_object,
)
from gateway.model import Call, Principal, Trace
from gateway.stages.guard import MAX_PENDING, StoreGuard
from gateway.stages.lead import LOST, Lead, Recent, View, failure
from gateway.stages.relay import JSON, SSE_HEADERS
from gateway.stores.base import IdemRecord, Store

REPLAYED = "idempotent-replayed"
_RECENT_TTL = 30.0  # finished records kept in memory, up to `idempotency.memory` bytes
_RETRY_SOON = {"retry-after": "1", "retry-after-ms": "1000", "x-should-retry": "true"}
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # a remote follower's polling, backing off


class _Remote:
    """A record held by another gateway (or finished), read from the store."""

    def __init__(self, stage: Idempotency, key: str, first: IdemRecord):
        self._stage, self._key = stage, key
        self._first: IdemRecord | None = first
        self._poll = _POLL_FIRST
        self._last: View | None = None
        self._lease_ends = 0.0  # when the lease last seen runs out, by our clock
        self.proven = False  # the lead did something since we first looked

    async def view(self, offset: int) -> View | None:
        record, self._first = self._first, None  # the claim's answer first (offset 0)
        if record is None:
            store = self._stage.store
            ok, record = await self._stage.guard.call(store.idem_read(self._key, offset))
            if not ok:  # no news: the lead may well be alive, wait while its lease may run
                alive = self._last is not None and time.monotonic() < self._lease_ends
                return replace(self._last, data=b"") if alive and self._last else None
            if record is None:
                return None
        meta = orjson.loads(record.meta) if record.meta else None
        view = View(record.fingerprint, record.owner, record.state, meta, record.data,
                     record.lease)  # fmt: skip
        lease_ends = time.monotonic() + view.lease
        if self._last is not None and view.owner == self._last.owner:
            grew = offset == 0 and len(view.data) > len(self._last.data)
            renewed = lease_ends - self._lease_ends > self._stage.spec.lease / 10
            self.proven = self.proven or grew or renewed or bool(offset and view.data)
        self._last, self._lease_ends = view, lease_ends
        if view.state == "done" and offset == 0:
            self._stage.recent.put(self._key, view)
        return view

    async def changed(self, at_most: float) -> None:
        await asyncio.sleep(min(self._poll, at_most))
        self._poll = min(self._poll * 2, _POLL_MAX)


class _Local:
    """A lead in this process."""

    proven = True  # alive: it is here

    def __init__(self, lead: Lead):
        self._lead = lead
        self._seen = lead.version

    async def view(self, offset: int) -> View | None:
        self._seen = self._lead.version
        return self._lead.view(offset)

    async def changed(self, at_most: float) -> None:
        await self._lead.changed(self._seen, at_most)


class _Finished:
    """A finished record this process saw lately (see `Recent`)."""

    proven = True

    def __init__(self, view: View):
        self._view = view

    async def view(self, offset: int) -> View | None:
        return replace(self._view, data=self._view.data[offset:])

    async def changed(self, at_most: float) -> None:
        raise AssertionError("a finished record does not change")


_Source = _Remote | _Local | _Finished
_Claimed = tuple[bool, IdemRecord | None]


class Idempotency:
    def __init__(
        self,
        store: Store,
        events: EventSink,
        spec: IdempotencySpec,
        max_pending: int = MAX_PENDING,
    ):
        self.store, self.events, self.spec = store, events, spec
        self.guard = StoreGuard("idempotency", events, max_pending)
        self._instance = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._leads: dict[str, Lead] = {}  # keys led in this process
        self._claiming: dict[str, asyncio.Event] = {}  # keys being claimed in this process
        self.recent = Recent(min(_RECENT_TTL, spec.retention), spec.memory)

    async def lead(
        self, principal: Principal, call: Call, header: str, trace: Trace, downstream: Downstream
    ) -> Lead | None:
        """The lead this request becomes, or None once it has been answered (replayed, or
        attached to the request in flight)."""
        key_text = parse_key(header)
        if key_text is None:
            raise InvalidRequest(
                "`Idempotency-Key` must be 1-255 visible ASCII characters, optionally in double "
                'quotes (a UUID is a good key, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324")',
                param="Idempotency-Key",
                code="invalid_idempotency_key",
            )
        key = record_key(principal.name, key_text)
        fp = fingerprint("POST", call.endpoint.path, call.body)
        deadline = time.monotonic() + min(self.spec.wait, client_budget(call.read_timeout))
        while True:
            found = await self._claim(key, fp, trace)
            if isinstance(found, Lead):
                trace.idempotency = "executed"
                return found
            if await self._follow(found, fp, call, trace, downstream, deadline):
                return None
            # the request it followed was lost before answering: claim the key again

    def ended(self, lead: Lead) -> None:
        if self._leads.get(lead.key) is lead:
            del self._leads[lead.key]

    async def close(self) -> None:
        await self.guard.close()

    async def _claim(self, key: str, fp: str, trace: Trace) -> Lead | _Source:
        while True:
            if (finished := self.recent.get(key)) is not None:
                return _Finished(finished)
            if (claiming := self._claiming.get(key)) is not None:
                await claiming.wait()  # one claim per key at a time in this process
                continue
            local = self._leads.get(key)
            if local is None:
                break
            if local.state != "failed":
                return _Local(local)
            await local.finished.wait()  # a failed lead frees its key once the store knows
        self._claiming[key] = claiming = asyncio.Event()
        try:
            owner = f"{self._instance}/{trace.request_id}"
            spec = self.spec
            claim = asyncio.ensure_future(
                self.guard.call(self.store.idem_claim(key, fp, owner, spec.lease, spec.retention))
            )
            try:
                ok, record = await asyncio.shield(claim)
            except asyncio.CancelledError:  # the claim goes on: give back what it may take
                claim.add_done_callback(partial(self._give_back, key, owner))
                raise
            if not ok:
                trace.extra_headers["x-savepoint-degraded"] = "store"
            if record is not None:
                return _Remote(self, key, record)
            lead = self._leads[key] = Lead(key, fp, owner, self, recorded=ok)
            return lead
        finally:
            del self._claiming[key]
            claiming.set()

    def _give_back(self, key: str, owner: str, claim: asyncio.Future[_Claimed]) -> None:
        """A request cancelled while it claimed its key: fail the record if the claim took it,
        so that the key is free at once rather than after a lease."""
        if claim.cancelled() or claim.exception() is not None or claim.result() != (True, None):
            return
        meta = orjson.dumps(failure(None, None))
        self.guard.later(self.store.idem_end(key, owner, "failed", meta, b"", self.spec.lease))

    async def _follow(
        self,
        source: _Source,
        fp: str,
        call: Call,
        trace: Trace,
        downstream: Downstream,
        deadline: float,
    ) -> bool:
        """Answer from the request holding the key (True); False when it was lost before
        this request started answering, so that the key may be claimed again."""
        offset, owner, committed, first = 0, "", False, True
        while True:
            view = await source.view(offset)
            if view is not None and view.owner != owner and owner:
                view = None  # taken over: another execution, not the one we were following
            if view is None or (view.state == "running" and view.lease <= 0):
                if not committed:
                    return False
                await downstream.write(error_event(error_object(LOST), call.endpoint.typed_events))
                await downstream.finish()
                return True
            if view.fingerprint != fp:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different request (method, "
                    "path or body); use a new key for a new request",
                    param="Idempotency-Key",
                    headers={"x-should-retry": "false"},
                )
            owner = view.owner
            if first:
                trace.idempotency = "replayed" if view.state == "done" else "attached"
                trace.target, first = "idempotency", False
            meta = view.meta
            if view.state == "failed":
                assert meta is not None
                trace.status, trace.error_code = meta["status"], str(meta["error"].get("code"))
                if committed:
                    await downstream.write(error_event(meta["error"], call.endpoint.typed_events))
                    await downstream.finish()
                else:
                    body = orjson.dumps({"error": meta["error"]})
                    headers = {**self._headers(trace, meta), "Content-Type": JSON}
                    await downstream.reply(meta["status"], headers, body)
                return True
            # a stream is followed only once its lead has shown it is alive (its log grew or
            # its lease was renewed since we looked first): the lease of a lead that just died
            # may still run for a while, and its stream will never end
            alive = committed or source.proven
            if meta is not None and (
                view.state == "done" or (meta["stream"] and view.data and alive)
            ):
                if not meta["stream"]:
                    trace.status = meta["status"]
                    trace.saved = usage_from_body(_json(view.data))
                    await downstream.reply(meta["status"], self._headers(trace, meta), view.data)
                    return True
                if not committed:
                    await downstream.commit({**self._headers(trace, meta), **SSE_HEADERS})
                    trace.status, trace.first_byte, committed = 200, time.monotonic(), True
                if view.data:
                    trace.saved = usage_from_run(call.endpoint, view.data) or trace.saved
                    await downstream.write(view.data)
                    offset += len(view.data)
                if view.state == "done":
                    await downstream.finish()
                    return True
            left = deadline - time.monotonic()
            if not committed and left <= 0:
                raise IdempotencyConflict(
                    "a request with this Idempotency-Key is still running; retry with the same "
                    "key shortly to get its answer",
                    param="Idempotency-Key",
                    headers=dict(_RETRY_SOON),
                )
            await source.changed(left if not committed else self.spec.lease)

    def _headers(self, trace: Trace, meta: dict[str, Any]) -> dict[str, str]:
        """The lead's headers (its `x-request-id` too: this is its answer), marked replayed."""
        return {"x-request-id": trace.request_id, **meta["headers"],
                "x-savepoint-request-id": trace.request_id, **trace.extra_headers,
                REPLAYED: "true"}  # fmt: skip


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None

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
follower that has not started answering takes over too (it does not start following a
stream whose lease is down to half: a live lead renews it long before); one that already
streamed part of the dead lead's answer ends its stream with a retryable error event.

The same key with another request (method, path, canonical body) is refused with 422. A
follower that waited `idempotency.wait` (cut to the client's own deadline) for a lead that
has not started answering gets 409 with `Retry-After`. A store that is down degrades the
key to this process: duplicates here still attach, replicas cannot see the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from gateway.breakers import EventSink
from gateway.config.schema import IdempotencySpec
from gateway.decide.deadlines import client_budget
from gateway.decide.idempotency import kept, parse_key, record_key
from gateway.decide.keys import fingerprint
from gateway.decide.usage import usage_from_body, usage_from_run
from gateway.downstream import Downstream
from gateway.errors import (
    IdempotencyConflict,
    IdempotencyKeyReused,
    InvalidRequest,
    SavepointError,
    UpstreamError,
    error_event,
    error_object,
    shape_of,
)
from gateway.model import Call, Principal, Trace
from gateway.stages.capture import Capture
from gateway.stages.guard import StoreGuard
from gateway.stages.relay import JSON, SSE_HEADERS
from gateway.stores.base import IdemRecord, Store

REPLAYED = "idempotent-replayed"
_RECENT_TTL, _RECENT_BYTES = 30.0, 32 * 1024 * 1024  # finished records kept in memory
_RETRY_SOON = {"retry-after": "1", "retry-after-ms": "1000", "x-should-retry": "true"}
_RECENT_TTL, _RECENT_BYTES = 30.0, 32 * 1024 * 1024  # finished records kept in memory
_RETRY_SOON = {"retry-after": "1", "retry-after-ms": "1000", "x-should-retry": "true"}
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # a remote follower's polling, backing off
_LOST = UpstreamError(
    "the request this one was attached to (same Idempotency-Key) failed before it completed; "
    "retry with the same key to run it again",
    headers={"x-should-retry": "true"},
)


@dataclass(frozen=True, slots=True)
class _View:
    """A record as a follower sees it, wherever the lead runs."""

    fingerprint: str
    owner: str
    state: str  # running, done, failed
    meta: dict[str, Any] | None  # status, headers, stream (and error, once failed)
    data: bytes  # the answer from the follower's offset on
    lease: float  # seconds left


class Lead:
    """The request executing for its key. `publish` is its capture's tee; `settle` ends it."""

    def __init__(self, key: str, fp: str, owner: str, stage: Idempotency, recorded: bool):
        self.key, self.fingerprint, self.owner = key, fp, owner
        self.state = "running"
        self.meta: dict[str, Any] | None = None
        self.log = bytearray()
        self.version = 0  # bumped on every change, for local followers
        self._changed = asyncio.Event()
        self._stage = stage
        self._pending = bytearray()  # published, not yet in the store
        self._pending_meta = b""
        self._final: tuple[str, bytes] | None = None  # (state, meta) to end the record with
        self._wake = asyncio.Event()
        if recorded:
            stage.guard.later(self._write())

    def view(self, offset: int) -> _View:
        return _View(self.fingerprint, self.owner, self.state, self.meta,
                     bytes(self.log[offset:]), math.inf)  # fmt: skip

    async def changed(self, since: int, at_most: float) -> None:
        """Wait (at most `at_most` seconds) for a change after `version` `since`."""
        if self.version == since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), at_most)

    def publish(self, headers: Mapping[str, str], run: bytes) -> None:
        """A run of the stream, as it goes to the client."""
        if self.meta is None:
            self._set_meta({"status": 200, "headers": dict(headers), "stream": True})
        self.log += run
        self._pending += run
        self._notify()

    def settle(self, capture: Capture | None, error: BaseException | None) -> None:
        """The request is over: keep its answer, or mark it failed."""
        if self.state != "running":
            return
        status = capture.status if capture is not None else 0
        whole = capture is not None and capture.body is not None
        complete = capture is not None and capture.complete and not capture.too_big
        if error is None and capture is not None and status and kept(status, complete):
            if whole:
                assert capture.body is not None
                self._set_meta({"status": status, "headers": dict(capture.headers),
                                "stream": False})  # fmt: skip
                self.log += capture.body
                self._pending += capture.body
            self.state = "done"
        else:
            self._set_meta(_failure(capture, error))
            self.state = "failed"
        self._final = (self.state, self._pending_meta or orjson.dumps(self.meta))
        if self.state == "done":
            self._stage.recent.put(self.key, self.view(0))
        self._stage.ended(self)
        self._notify()
        self._wake.set()

    def _set_meta(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self._pending_meta = orjson.dumps(meta)

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()

    async def _write(self) -> None:
        """Carry what is published to the store, in batches (what piles up while a write is
        on its way goes with the next), renew the lease when idle, end the record last."""
        stage, spec = self._stage, self._stage.spec
        while self._final is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), spec.lease / 3)
            self._wake.clear()
            if self._final is not None:
                break
            meta, data = self._take()
            ok, owned = await stage.guard.call(
                stage.store.idem_write(self.key, self.owner, meta, data, spec.lease)
            )
            if not ok:  # put it back: the log must have no gap
                self._pending[:0], self._pending_meta = data, self._pending_meta or meta
            elif not owned:  # our lease lapsed and another request took the key over
                stage.events({"event": "idempotency_lost", "owner": self.owner})
                return
        state, meta = self._final
        _, data = self._take()
        ttl = spec.retention if state == "done" else spec.lease
        await stage.guard.call(stage.store.idem_end(self.key, self.owner, state, meta, data, ttl))

    def _take(self) -> tuple[bytes, bytes]:
        meta, data = self._pending_meta, bytes(self._pending)
        self._pending_meta, self._pending = b"", bytearray()
        return meta, data


def _failure(capture: Capture | None, error: BaseException | None) -> dict[str, Any]:
    """The meta of a failed record: what its followers answer (a retryable error)."""
    if isinstance(error, SavepointError):
        return {"status": shape_of(error).status, "headers": error.headers,
                "error": error_object(error)}  # fmt: skip
    if capture is not None and capture.status >= 400 and capture.body is not None:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            obj = orjson.loads(capture.body)["error"]
            return {"status": capture.status, "headers": dict(capture.headers), "error": obj}
    return {"status": 502, "headers": _LOST.headers, "error": error_object(_LOST)}


class _Remote:
    """A record held by another gateway (or finished), read from the store."""

    def __init__(self, stage: Idempotency, key: str, first: IdemRecord):
        self._stage, self._key = stage, key
        self._first: IdemRecord | None = first
        self._poll = _POLL_FIRST

    async def view(self, offset: int) -> _View | None:
        record, self._first = self._first, None  # the claim's answer first (offset 0)
        if record is None:
            ok, record = await self._stage.guard.call(
                self._stage.store.idem_read(self._key, offset)
            )
            if not ok or record is None:
                return None
        meta = orjson.loads(record.meta) if record.meta else None
        view = _View(record.fingerprint, record.owner, record.state, meta, record.data,
                     record.lease)  # fmt: skip
        if view.state == "done" and offset == 0:
            self._stage.recent.put(self._key, view)
        return view

    async def changed(self, at_most: float) -> None:
        await asyncio.sleep(min(self._poll, at_most))
        self._poll = min(self._poll * 2, _POLL_MAX)


class _Local:
    """A lead in this process."""

    def __init__(self, lead: Lead):
        self._lead = lead
        self._seen = lead.version

    async def view(self, offset: int) -> _View | None:
        self._seen = self._lead.version
        return self._lead.view(offset)

    async def changed(self, at_most: float) -> None:
        await self._lead.changed(self._seen, at_most)


class _Finished:
    """A finished record this process saw lately (see `_Recent`)."""

    def __init__(self, view: _View):
        self._view = view

    async def view(self, offset: int) -> _View | None:
        return replace(self._view, data=self._view.data[offset:])

    async def changed(self, at_most: float) -> None:
        raise AssertionError("a finished record does not change")


_Source = _Remote | _Local | _Finished


class _Recent:
    """Finished records this process saw lately, newest last, within a byte bound. A finished
    record never changes (until it expires), so a burst of retries of one key is answered
    from here without a store round trip; `ttl` bounds how long a replica may go on replaying
    a record after it expired in the store."""

    def __init__(self, ttl: float, max_bytes: int):
        self._ttl, self._max_bytes = ttl, max_bytes
        self._views: OrderedDict[str, tuple[float, _View]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> _View | None:
        found = self._views.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self._drop(key)
            return None
        return found[1]

    def put(self, key: str, view: _View) -> None:
        if len(view.data) > self._max_bytes // 4:
            return
        if key in self._views:
            self._drop(key)
        self._views[key] = (time.monotonic() + self._ttl, view)
        self._bytes += len(view.data)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._views)))

    def _drop(self, key: str) -> None:
        _, view = self._views.pop(key)
        self._bytes -= len(view.data)


class Idempotency:
    def __init__(self, store: Store, events: EventSink, spec: IdempotencySpec):
        self.store, self.events, self.spec = store, events, spec
        self.guard = StoreGuard("idempotency", events)
        self._instance = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._leads: dict[str, Lead] = {}  # keys led in this process
        self._claiming: dict[str, asyncio.Event] = {}  # keys being claimed in this process
        self.recent = _Recent(min(_RECENT_TTL, spec.retention), _RECENT_BYTES)

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
            if (claiming := self._claiming.get(key)) is None:
                break
            await claiming.wait()  # one claim per key at a time in this process
        local = self._leads.get(key)
        if local is not None:
            return _Local(local)
        self._claiming[key] = claiming = asyncio.Event()
        try:
            owner = f"{self._instance}/{trace.request_id}"
            spec = self.spec
            ok, record = await self.guard.call(
                self.store.idem_claim(key, fp, owner, spec.lease, spec.retention)
            )
            if not ok:
                trace.extra_headers["x-savepoint-degraded"] = "store"
            if record is not None:
                return _Remote(self, key, record)
            lead = self._leads[key] = Lead(key, fp, owner, self, recorded=ok)
            return lead
        finally:
            del self._claiming[key]
            claiming.set()

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
                await downstream.write(error_event(error_object(_LOST), call.endpoint.typed_events))
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
            # a lead that is alive renews its lease every third of it: one whose lease is down
            # to half has stalled or died, and its stream is not worth starting to follow
            alive = committed or view.lease > self.spec.lease / 2
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

"""The lead of an `Idempotency-Key`: the request executing for its key, recording its answer
as it goes (in memory for the followers in this process, in the store for the others), and
the memory of records that finished lately.

A lead writes to the store from one background task: batches of stream events (what piles up
while a write is on its way goes with the next), a lease renewal every third of the lease
when idle, and the record's end last. Every write says where its bytes start in the log, so
a write that timed out but did land is never appended twice. Until the store has the end,
the lead stays the key's local lead: a retry in this process gets its answer from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway import jsonbytes
from gateway.breakers import EventSink
from gateway.config.schema import IdempotencySpec
from gateway.decide.idempotency import kept
from gateway.errors import SavepointError, UpstreamError, error_object, shape_of
from gateway.stages.capture import Capture
from gateway.stages.guard import StoreGuard
from gateway.stores.base import Store

_ENTRY_BYTES = 2048  # what a remembered record costs beyond its data (key, headers), roughly
_LOG_LIMIT = 32 * 1024 * 1024  # the longest stream a key records (events are wordy)
_OWN_HEADERS = ("x-savepoint-degraded",)  # about the lead's request, not its answer
_END_RETRIES = (0.1, 0.5, 0.0)  # pauses after each failed attempt to end a record

LOST = UpstreamError(
    "the request this one was attached to (same Idempotency-Key) failed before it completed; "
    "retry with the same key to run it again",
    headers={"x-should-retry": "true"},
)


@dataclass(frozen=True, slots=True)
class View:
    """A record as a follower sees it, wherever the lead runs."""

    fingerprint: str
    owner: str
    state: str  # running, done, failed
    meta: dict[str, Any] | None  # status, headers, stream (and error, once failed)
    data: bytes  # the answer from the follower's offset on
    lease: float  # seconds left


class Keeper(Protocol):
    """What a lead needs of the idempotency stage."""

    store: Store
    guard: StoreGuard
    spec: IdempotencySpec
    events: EventSink
    recent: Recent

    def ended(self, lead: Lead) -> None: ...


class Lead:
    """The request executing for its key. `publish` is its capture's tee; `settle` ends it."""

    def __init__(self, key: str, fp: str, owner: str, stage: Keeper, recorded: bool):
        self.key, self.fingerprint, self.owner = key, fp, owner
        self.state = "running"
        self.meta: dict[str, Any] | None = None
        self.log = bytearray()
        self.version = 0  # bumped on every change, for local followers
        self._changed = asyncio.Event()
        self._stage = stage
        self._recorded = recorded
        self._overflow = False  # the stream outgrew _LOG_LIMIT: it will not be kept
        self._pending = bytearray()  # published, not yet in the store
        self._pending_meta = b""
        self._final: tuple[str, bytes] | None = None  # (state, meta) to end the record with
        self._wake = asyncio.Event()
        self.finished = asyncio.Event()  # the store has the record's end (or never will)
        if recorded:
            stage.guard.later(self._write())

    def view(self, offset: int) -> View:
        return View(self.fingerprint, self.owner, self.state, self.meta,
                     bytes(self.log[offset:]), math.inf)  # fmt: skip

    async def changed(self, since: int, at_most: float) -> None:
        """Wait (at most `at_most` seconds) for a change after `version` `since`."""
        if self.version == since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), at_most)

    def publish(self, headers: Mapping[str, str], run: bytes) -> None:
        """A run of the stream, as it goes to the client."""
        if self._overflow or len(self.log) + len(run) > _LOG_LIMIT:
            self._overflow = True  # its followers wait for the end, and get a retryable error
            return
        if self.meta is None:
            self._set_meta({"status": 200, "headers": _answer_headers(headers), "stream": True})
        self.log += run
        self._pending += run
        self._notify()

    def settle(self, capture: Capture | None, error: BaseException | None) -> None:
        """The request is over: keep its answer, or mark it failed."""
        if self.state != "running":
            return
        if error is None and capture is not None and self._keeps(capture):
            if capture.body is not None:  # a whole answer (a stream's runs are in the log)
                self._set_meta({"status": capture.status, "stream": False,
                                "headers": _answer_headers(capture.headers)})  # fmt: skip
                self.log += capture.body
                self._pending += capture.body
            self.state = "done"
        else:
            self._set_meta(failure(capture, error))
            self.state = "failed"
        self._final = (self.state, self._pending_meta or jsonbytes.dumps(self.meta))
        if not self._recorded:
            self._finished(kept=True)
        self._notify()
        self._wake.set()

    def _keeps(self, capture: Capture) -> bool:
        if self._overflow:
            return False
        if capture.status == 200:  # complete: its final event came, with no error in it
            complete = capture.answer(cut_short=True) is not None
        else:
            complete = capture.body is not None and len(capture.body) <= capture.limit
        return kept(capture.status, complete)

    def _set_meta(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self._pending_meta = jsonbytes.dumps(meta)

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake.set()

    async def _write(self) -> None:
        """Carry what is published to the store, in batches (what piles up while a write is
        on its way goes with the next), renew the lease when idle, end the record last.
        Every write says where its data starts in the log, so a write that failed but did
        land is never appended twice."""
        stage, spec = self._stage, self._stage.spec
        stored = 0  # bytes of the log the store has acknowledged
        kept = False
        try:
            while self._final is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), spec.lease / 3)
                self._wake.clear()
                if self._final is not None:
                    break
                meta, data = self._take()
                ok, owned = await stage.guard.call(
                    stage.store.idem_write(self.key, self.owner, meta, data, spec.lease, at=stored)
                )
                if not ok:  # put it back: the log must have no gap
                    self._pending[:0], self._pending_meta = data, self._pending_meta or meta
                elif not owned:  # our lease lapsed and another request took the key over
                    stage.events({"event": "idempotency_lost", "owner": self.owner})
                    return
                else:
                    stored += len(data)
            state, meta = self._final
            _, data = self._take()
            ttl = spec.retention if state == "done" else spec.lease
            for pause in _END_RETRIES:  # a blip here would hold the key for a whole lease
                ok, owned = await stage.guard.call(
                    stage.store.idem_end(self.key, self.owner, state, meta, data, ttl, at=stored)
                )
                if ok:
                    break
                await asyncio.sleep(pause)
            kept = ok and bool(owned)
        finally:  # whatever happened: local followers must not wait on this lead any more
            self._finished(kept)

    def _finished(self, kept: bool) -> None:
        """The record is as final as it gets: local followers now go through the store, or,
        if it was kept done, through the memory of recent records."""
        if kept and self.state == "done":
            self._stage.recent.put(self.key, self.view(0))
        self._stage.ended(self)
        self.finished.set()

    def _take(self) -> tuple[bytes, bytes]:
        meta, data = self._pending_meta, bytes(self._pending)
        self._pending_meta, self._pending = b"", bytearray()
        return meta, data


def _answer_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}


def failure(capture: Capture | None, error: BaseException | None) -> dict[str, Any]:
    """The meta of a failed record: what its followers answer (a retryable error)."""
    if isinstance(error, SavepointError):
        return {"status": shape_of(error).status, "headers": error.headers,
                "error": error_object(error)}  # fmt: skip
    if capture is not None and capture.status >= 400 and capture.body is not None:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, KeyError):
            obj = orjson.loads(capture.body)["error"]
            return {"status": capture.status, "headers": dict(capture.headers), "error": obj}
    return {"status": 502, "headers": LOST.headers, "error": error_object(LOST)}


class Recent:
    """Finished records this process saw lately, oldest first, within a byte bound. A finished
    record never changes (until it expires), so a burst of retries of one key is answered
    from here without a store round trip; `ttl` bounds how long a replica may go on replaying
    a record after it expired in the store."""

    def __init__(self, ttl: float, max_bytes: int):
        self._ttl, self._max_bytes = ttl, max_bytes
        self._views: OrderedDict[str, tuple[float, View]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> View | None:
        found = self._views.get(key)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, key: str, view: View) -> None:
        if _ENTRY_BYTES + len(view.data) > self._max_bytes // 4:
            return
        if key in self._views:
            self._drop(key)
        now = time.monotonic()
        self._views[key] = (now + self._ttl, view)
        self._bytes += _ENTRY_BYTES + len(view.data)
        # one TTL for all: the oldest entries expire first
        while self._views and (self._bytes > self._max_bytes or self._oldest_expiry() < now):
            self._drop(next(iter(self._views)))

    def _oldest_expiry(self) -> float:
        return next(iter(self._views.values()))[0]

    def _drop(self, key: str) -> None:
        _, view = self._views.pop(key)
        self._bytes -= _ENTRY_BYTES + len(view.data)

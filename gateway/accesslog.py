"""The access log: one JSON line per request, written off the event loop.

`write` only formats the line and puts it on a queue; a thread writes the queue to stderr (or
a file) in batches, so a slow terminal or pipe never stalls a request. The queue holds at
most `server.max_log_backlog` lines: past that, lines are dropped, and the next line that
fits is preceded by an `access_log_dropped` line with their count. No secrets are ever in
a line: clients appear by name, providers by name, keys never.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from gateway import jsonbytes
from gateway.config.schema import ServerSpec
from gateway.model import Trace


class AccessLog:
    def __init__(
        self,
        stream: TextIO | None = None,
        worker: int | None = None,
        max_backlog: int = ServerSpec().max_log_backlog,
    ):
        self._stream = stream or sys.stderr
        self._worker = worker  # this process's index among the workers of one gateway
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._max_backlog = max_backlog
        self._dropped = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._drain, name="savepoint-access-log", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def write(self, trace: Trace, now: float) -> None:
        self._put(line(trace, now, self._worker))

    def event(self, record: dict[str, Any]) -> None:
        """A line about the gateway rather than a request (a breaker opening, say)."""
        self._put(_event(record))

    def _put(self, item: bytes) -> None:
        if self._queue.qsize() >= self._max_backlog:  # stderr is not keeping up
            self._dropped += 1
            return
        if self._dropped:
            self._queue.put(_event({"event": "access_log_dropped", "lines": self._dropped}))
            self._dropped = 0
        self._queue.put(item)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= 512:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            try:
                for chunk in _chunks(batch):
                    self._stream.write(chunk.decode())
                    self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone (closed pipe): drop the lines, keep draining
            if item is None:
                return


def _event(record: dict[str, Any]) -> bytes:
    return jsonbytes.dumps(
        {"ts": round(time.time(), 3), **record}, option=orjson.OPT_APPEND_NEWLINE
    )


_ATOMIC = 4096  # PIPE_BUF: a write to a pipe up to this size is never interleaved with another


def _chunks(lines: list[bytes]) -> list[bytes]:
    """Lines joined into writes of at most `_ATOMIC` bytes, so that the workers of one gateway
    sharing a stderr pipe never cut each other's lines (a longer line goes alone)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for item in lines:
        if current and size + len(item) > _ATOMIC:
            chunks.append(b"".join(current))
            current, size = [], 0
        current.append(item)
        size += len(item)
    if current:
        chunks.append(b"".join(current))
    return chunks


def line(trace: Trace, now: float, worker: int | None = None) -> bytes:
    record: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "request_id": trace.request_id,
        "method": trace.method,
        "path": trace.path,
        "status": trace.status,
        "latency_ms": round((now - trace.started) * 1000, 2),
        "client": trace.client,
        "model": trace.model,
        "target": trace.target,
        "stream": trace.stream,
    }
    if trace.upstream_request_id:
        record["upstream_request_id"] = trace.upstream_request_id
    if trace.first_byte is not None:
        record["ttfb_ms"] = round((trace.first_byte - trace.started) * 1000, 2)
    if trace.error_code:
        record["error"] = trace.error_code
    if len(trace.attempts) > 1 or trace.fallback or trace.error_code or trace.status >= 400:
        record["attempts"] = [[a.target, a.outcome, a.ms] for a in trace.attempts]
        record["fallback"] = trace.fallback
    if trace.cache is not None:
        record["cache"] = trace.cache
    if trace.run is not None:
        record["run"] = trace.run
    if trace.idempotency is not None:
        record["idempotency"] = trace.idempotency
    if trace.flags:
        record["flags"] = trace.flags
    if trace.detached:
        record["detached"] = True
    if worker is not None:
        record["worker"] = worker
    if trace.saved is not None:
        record["saved_tokens"] = trace.saved.total_tokens
    if trace.usage is not None:
        u = trace.usage
        record["tokens"] = {"prompt": u.prompt_tokens, "completion": u.completion_tokens,
                            "total": u.total_tokens}  # fmt: skip
        if trace.estimated:
            record["tokens"]["estimated"] = True
    return jsonbytes.dumps(record, option=orjson.OPT_APPEND_NEWLINE)  # queued: right-sized

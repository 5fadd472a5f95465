"""The access log: one JSON line per request, written off the event loop.

Lines go through a `QueueHandler` to a `QueueListener` thread that writes them to stderr (or
a file), so a slow terminal or pipe never stalls a request. No secrets are ever in a line:
clients appear by name, providers by name, keys never.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

import orjson

from gateway.model import Trace

LOGGER_NAME = "savepoint.access"


class AccessLog:
    def __init__(self, stream: TextIO | None = None):
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._logger = logging.Logger(LOGGER_NAME)  # not registered globally: one per app
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._logger.propagate = False

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()

    def write(self, trace: Trace, now: float) -> None:
        self._logger.info(line(trace, now))


def line(trace: Trace, now: float) -> str:
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
    if trace.usage is not None:
        u = trace.usage
        record["tokens"] = {"prompt": u.prompt_tokens, "completion": u.completion_tokens,
                            "total": u.total_tokens}  # fmt: skip
    return orjson.dumps(record).decode()

"""Graceful drain: the state shared by the server (stop accepting) and the pipeline.

On SIGTERM/SIGINT the gateway stops accepting connections, /readyz turns 503, and in-flight
requests get `server.drain_timeout` to finish. When it passes, the requests still running are
ended with an error the client can read: a stream that has started gets an error event
(its upstream read is aborted), any other request is cancelled and the pipeline, seeing
`expired`, answers 503. Nothing is cut without an error.

The same count of in-flight requests bounds how many one worker takes on at once
(`server.max_in_flight`): past it, a 503 `overloaded` with `retry-after`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.config.schema import ServerSpec
from gateway.errors import GatewayUnavailable, Overloaded
from gateway.providers.base import EventStream

SHUTDOWN = "the gateway is shutting down and its drain deadline passed; retry the request"


class Drain:
    """In-flight requests, so that shutdown can wait for them and then end them cleanly.

    `enter` returns a token that `leave` and `streaming` take back (the request's task), so
    the hot path costs one dict insert and one delete; the idle event only matters once
    draining has begun."""

    def __init__(self, max_in_flight: int = ServerSpec().max_in_flight) -> None:
        self._max_in_flight = max_in_flight
        self.draining = False
        self.expired = False
        # in-flight request task -> its upstream stream once it has committed one
        self._tasks: dict[asyncio.Task[Any], EventStream | None] = {}
        self._idle = asyncio.Event()

    def enter(self) -> asyncio.Task[Any] | None:
        """Count a request in (its token), or refuse it past `server.max_in_flight`."""
        if len(self._tasks) >= self._max_in_flight:
            raise Overloaded(
                f"this gateway worker is already serving {len(self._tasks)} requests "
                "(server.max_in_flight); retry shortly",
                headers={"retry-after": "1", "x-should-retry": "true"},
            )
        task = asyncio.current_task()
        if task is not None:
            self._tasks[task] = None
        return task

    def streaming(self, token: asyncio.Task[Any] | None, stream: EventStream) -> None:
        """This request has committed a stream: at expiry, end it with an error event rather
        than cancelling it."""
        if token in self._tasks:
            self._tasks[token] = stream

    def leave(self, token: asyncio.Task[Any] | None) -> None:
        if token is not None:
            self._tasks.pop(token, None)
        if self.draining and not self._tasks:
            self._idle.set()

    async def run(self, deadline: float) -> None:
        """Wait for in-flight requests; after `deadline` seconds, end the rest with an error
        and give them a moment to write it."""
        self.draining = True
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), deadline)
        except TimeoutError:
            self.expired = True
            for task, stream in list(self._tasks.items()):
                if stream is not None:
                    stream.abort(GatewayUnavailable(SHUTDOWN))
                else:
                    task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)

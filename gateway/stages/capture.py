"""The live answer as the relay passes it on, kept for the cache and the run journal."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.model import Endpoint
from gateway.transcode import assemble, complete


@dataclass(slots=True)
class Capture:
    """The live answer as it is relayed, kept up to `limit` bytes."""

    limit: int
    body: bytes | None = None  # a whole answer
    events: bytearray = field(default_factory=bytearray)  # a stream's runs
    complete: bool = False
    too_big: bool = False
    detach: bool = False  # a stream goes on being read to its end if the client leaves

    def add_run(self, run: bytes) -> None:
        if self.too_big:
            return
        if len(self.events) + len(run) > self.limit * 4:  # events are wordier than the body
            self.too_big = True
            self.events.clear()
            return
        self.events += run

    def answer(self, endpoint: Endpoint) -> bytes | None:
        """The answer in its one stored form (the whole body), if it is complete, successful
        and within the limit; else None: nothing that failed or was cut is ever kept."""
        if not self.complete or self.too_big:
            return None
        body = self.body if self.body is not None else assemble(endpoint, bytes(self.events))
        if body is None or len(body) > self.limit or not complete(endpoint, body):
            return None
        return body

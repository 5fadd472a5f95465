"""The live answer as the relay passes it on, kept for the cache, the run journal and
`Idempotency-Key` (which keeps error answers too, and follows a stream as it goes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.model import Endpoint
from gateway.transcode import assemble, complete


@dataclass(slots=True)
class Capture:
    """The live answer as it is relayed, kept up to `limit` bytes."""

    limit: int
    status: int = 0  # 0 until the relay answers
    headers: Mapping[str, str] = field(default_factory=dict)  # as the client got them
    body: bytes | None = None  # a whole answer (or a whole error answer)
    events: bytearray = field(default_factory=bytearray)  # a stream's runs
    complete: bool = False
    too_big: bool = False
    detach: bool = False  # a stream goes on being read to its end if the client leaves
    tee: Callable[[Mapping[str, str], bytes], None] | None = None  # sees each run (headers, run)

    def add_run(self, run: bytes, sent: bytes | None = None) -> None:
        """A run as the upstream sent it, and as the client got it (`sent`, if different:
        without the usage chunk it did not ask for)."""
        if self.tee is not None:
            self.tee(self.headers, run if sent is None else sent)
        if self.too_big:
            return
        if len(self.events) + len(run) > self.limit * 4:  # events are wordier than the body
            self.too_big = True
            self.events.clear()
            return
        self.events += run

    def answer(self, endpoint: Endpoint, cut_short: bool = False) -> bytes | None:
        """The answer in its one stored form (the whole body), if it is complete, successful
        and within the limit; else None: nothing that failed or broke off is ever kept.
        `cut_short`: an answer stopped by `max_tokens` or a content filter counts as complete
        (see `transcode.complete`)."""
        if not self.complete or self.too_big or self.status != 200:
            return None
        body = self.body if self.body is not None else assemble(endpoint, bytes(self.events))
        if body is None or len(body) > self.limit or not complete(endpoint, body, cut_short):
            return None
        return body

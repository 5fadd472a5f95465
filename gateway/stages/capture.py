"""The live answer as the relay passes it on, kept for the cache, the run journal and
`Idempotency-Key` (which keeps error answers too, and follows a stream as it goes).

A stream is assembled as it goes (`transcode.Assembly`): a capture holds the answer's text
and parts, not its events, which are several times larger (11 KB for a 40-chunk answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.model import Endpoint
from gateway.transcode import Assembly, complete, finished


@dataclass(slots=True)
class Capture:
    """The live answer as it is relayed, kept up to `limit` bytes."""

    limit: int
    endpoint: Endpoint
    status: int = 0  # 0 until the relay answers
    headers: Mapping[str, str] = field(default_factory=dict)  # as the client got them
    body: bytes | None = None  # a whole answer (or a whole error answer)
    parsed: Any = None  # ... and its JSON, if the relay read it
    assembly: Assembly | None = None  # a stream's runs, folded as they come
    assembled: bytes | None = None  # ... and their body, once asked for
    streamed: int = 0  # bytes of events seen
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
        self.streamed += len(run)
        if self.streamed > self.limit * 4:  # events are wordier than the body
            self.too_big, self.assembly = True, None
            return
        if self.assembly is None:
            self.assembly = Assembly(self.endpoint)
        self.assembly.add(run)

    def add_stored(self, events: bytes, body: bytes) -> None:
        """A stored answer served as a stream: its events (for the tee), and the body they
        were made from, which is what assembling them would give: no need to."""
        if self.tee is not None:
            self.tee(self.headers, events)
        self.assembled = body

    def answer(self, cut_short: bool = False) -> bytes | None:
        """The answer in its one stored form (the whole body), if it is complete, successful
        and within the limit; else None: nothing that failed or broke off is ever kept.
        `cut_short`: an answer stopped by `max_tokens` or a content filter counts as complete
        (see `transcode.complete`)."""
        if not self.complete or self.too_big or self.status != 200:
            return None
        if self.assembly is not None:  # once: `answer` may be asked again
            self.assembled, self.assembly = self.assembly.body(), None
        body = self.body if self.body is not None else self.assembled
        if body is None or len(body) > self.limit:
            return None
        if self.parsed is not None:  # set with `body` by the relay
            done = finished(self.endpoint, self.parsed, cut_short)
        else:
            done = complete(self.endpoint, body, cut_short)
        return body if done else None

"""The live answer as the relay passes it on, kept for the response cache (bounded)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Capture:
    """The live answer as it is relayed, kept for the cache up to `limit` bytes."""

    limit: int
    body: bytes | None = None  # a whole answer
    events: bytearray = field(default_factory=bytearray)  # a stream's runs
    complete: bool = False
    too_big: bool = False

    def add_run(self, run: bytes) -> None:
        if self.too_big:
            return
        if len(self.events) + len(run) > self.limit * 4:  # events are wordier than the body
            self.too_big = True
            self.events.clear()
            return
        self.events += run

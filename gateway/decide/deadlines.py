"""How long each phase of one upstream call may take.

The gateway must give up before its client does, so that its error (or, later, its fallback)
still reaches the client. The openai SDK sends its read timeout as `x-stainless-read-timeout`:
a non-streamed answer must arrive whole within it, and in a stream no gap between two reads
may exceed it. We keep a margin of a tenth of it, at most 5 s.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.config.schema import Timeouts

MAX_MARGIN = 5.0


def effective_timeouts(
    configured: Timeouts, client_read_timeout: float | None, stream: bool
) -> Timeouts:
    if client_read_timeout is None or client_read_timeout <= 0:
        return configured
    budget = client_read_timeout - min(MAX_MARGIN, client_read_timeout / 10)
    if stream:
        return replace(
            configured,
            first_byte=min(configured.first_byte, budget),
            idle=min(configured.idle, budget),
        )
    return replace(configured, total=min(configured.total, budget))

"""How long a route, and each attempt along it, may take.

The gateway must give up before its client does, so that its error (or its fallback) still
reaches the client. The openai SDK sends its read timeout as `x-stainless-read-timeout`: a
non-streamed answer must arrive whole within it, and in a stream no gap between two reads may
exceed it (so neither may the wait for the first byte, retries included). We keep a margin of
a tenth of it, at most 5 s.
"""

from __future__ import annotations

from gateway.config.schema import Timeouts

MAX_MARGIN = 5.0


def client_budget(client_read_timeout: float | None) -> float:
    if client_read_timeout is None or client_read_timeout <= 0:
        return float("inf")
    return client_read_timeout - min(MAX_MARGIN, client_read_timeout / 10)


def chain_budget(route_deadline: float, client_read_timeout: float | None) -> float:
    """Seconds the route's attempts, backoffs and fallbacks may take, until the answer (a
    stream: until its first event)."""
    return min(route_deadline, client_budget(client_read_timeout))


def attempt_timeouts(
    configured: Timeouts, client_read_timeout: float | None, stream: bool, remaining: float
) -> Timeouts:
    """One attempt's timeouts: the target's, cut to what is left of the chain's budget. A
    stream's idle gaps are bounded by the client's read timeout; its total by the target."""
    if stream:
        first_byte = min(configured.first_byte, remaining)
        idle = min(configured.idle, client_budget(client_read_timeout))
        return Timeouts(min(configured.connect, first_byte), first_byte, idle, configured.total)
    total = min(configured.total, remaining)
    return Timeouts(
        min(configured.connect, total),
        min(configured.first_byte, total),
        min(configured.idle, total),
        total,
    )

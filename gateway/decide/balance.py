"""Which deployment of a group takes the next attempt.

A deployment is *available* when its breaker admits a call (closed, or due for its one
half-open probe), it is not cooling down after a 429, no other replica has ejected it, and
this request has attempts left on it. Among available deployments: `weighted` picks at random
in proportion to weights; `least_in_flight` picks the one with the fewest requests in flight
per unit of weight (ties at random).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from gateway.values import value


class Admission(enum.Enum):
    PASS = "pass"  # breaker closed
    PROBE = "probe"  # breaker due for its half-open probe: this request is it
    SKIP = "skip"  # breaker open, or probing already, or cooling down


@value
class Candidate:
    weight: float
    in_flight: int
    available: bool


def admission(
    state: str,
    now: float,
    opened_at: float | None,
    reset_timeout: float,
    probing: bool,
    blocked_until: float,
) -> Admission:
    """`state` is pybreaker's (closed, open, half-open); `blocked_until` is the later of a
    429 cooldown and another replica's ejection."""
    if now < blocked_until:
        return Admission.SKIP
    if state == "closed":
        return Admission.PASS
    if probing:
        return Admission.SKIP
    if state == "half-open" or (opened_at is not None and now >= opened_at + reset_timeout):
        return Admission.PROBE
    return Admission.SKIP


def choose(candidates: Sequence[Candidate], strategy: str, rand: float) -> int | None:
    """Index of the chosen candidate, or None if none is available. `rand` is in [0, 1)."""
    available = [i for i, c in enumerate(candidates) if c.available]
    if not available:
        return None
    if len(available) == 1:
        return available[0]
    if strategy == "least_in_flight":
        load = {i: candidates[i].in_flight / candidates[i].weight for i in available}
        least = min(load.values())
        tied = [i for i in available if load[i] == least]
        return tied[int(rand * len(tied))]
    total = sum(candidates[i].weight for i in available)
    point = rand * total
    for i in available:
        point -= candidates[i].weight
        if point < 0:
            return i
    return available[-1]

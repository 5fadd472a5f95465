"""After a failed attempt: retry the same deployment, switch to another one of its group,
move on to the route's next group, or give up. One pure function, `next_step`.

Rules, in order (a *transient* failure is connect error, first-byte timeout, server error,
rate limit or quota):
1. client errors, a stream gone silent, an exhausted deadline: give up (nothing to retry);
2. context window / content filter: the next eligible group if `fallback_on` lists the
   failure, else give up (the provider's answer goes back as it is);
3. transient, and another deployment of the group is available: switch, at once;
4. rate limit or quota: the next group if allowed; a rate limit with no other way out waits
   for its Retry-After and retries, if that fits the deadline; a quota gives up;
5. other transient failures: retry the same deployment after the backoff (or the provider's
   Retry-After if longer), if attempts, retry budget and deadline allow; else the next group
   if allowed; else give up.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config.schema import GroupSpec, TargetSpec
from gateway.model import Failure
from gateway.values import value

_FINAL = frozenset({Failure.CLIENT_ERROR, Failure.IDLE_TIMEOUT, Failure.DEADLINE})
_WRONG_TARGET = frozenset({Failure.CONTEXT_WINDOW, Failure.CONTENT_FILTER})
_LIMITED = frozenset({Failure.RATE_LIMITED, Failure.QUOTA})


@value
class RetrySame:
    delay: float


@value
class SwitchTarget:
    pass


@value
class NextGroup:
    index: int


@value
class GiveUp:
    pass


Step = RetrySame | SwitchTarget | NextGroup | GiveUp


@value
class Situation:
    failure: Failure
    attempts_here: int  # attempts this request made on the failed deployment, this one included
    max_attempts: int
    other_target: bool  # another deployment of the group is available and not tried out
    next_group: int | None  # the next group this failure may move to, if any
    fallback_on: frozenset[Failure]
    retry_after: float | None
    backoff: float  # the jittered backoff a same-deployment retry would wait
    remaining: float  # seconds left before the route's deadline
    budget_ok: bool  # a same-deployment retry fits the retry budget


def next_step(s: Situation) -> Step:
    if s.failure in _FINAL:
        return GiveUp()
    may_move = s.failure in s.fallback_on and s.next_group is not None
    if s.failure in _WRONG_TARGET:
        return NextGroup(s.next_group) if may_move and s.next_group is not None else GiveUp()
    if s.other_target:
        return SwitchTarget()
    if may_move and s.next_group is not None and s.failure in _LIMITED:
        return NextGroup(s.next_group)
    if s.failure is not Failure.QUOTA:
        delay = max(s.backoff, s.retry_after or 0.0)
        if s.attempts_here < s.max_attempts and s.budget_ok and delay < s.remaining:
            return RetrySame(delay)
    if may_move and s.next_group is not None:
        return NextGroup(s.next_group)
    return GiveUp()


def backoff(retries_so_far: int, base: float, cap: float, rand: float) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**n)), with `rand` in [0, 1)."""
    return rand * min(cap, base * 2.0**retries_so_far)


def budget_ok(active: int, retrying: int, ratio: float, minimum: int) -> bool:
    """Envoy's retry budget: requests retrying on a deployment stay within `ratio` of the
    requests active on it, but `minimum` may always retry."""
    return retrying < max(minimum, ratio * active)


def next_group(
    groups: Sequence[GroupSpec], current: int, failure: Failure, failed: TargetSpec
) -> int | None:
    """The next group a failure may move to. A context-window overflow only moves to a group
    with a deployment known to have a larger window than the one that overflowed."""
    for index in range(current + 1, len(groups)):
        if failure is not Failure.CONTEXT_WINDOW:
            return index
        if failed.context_window is not None and any(
            t.context_window is not None and t.context_window > failed.context_window
            for t in groups[index].targets
        ):
            return index
    return None

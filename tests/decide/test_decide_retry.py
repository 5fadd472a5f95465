from dataclasses import replace

import pytest

from gateway.config.schema import GroupSpec, TargetSpec, Timeouts
from gateway.decide.retry import (
    GiveUp,
    NextGroup,
    RetrySame,
    Situation,
    Step,
    SwitchTarget,
    backoff,
    budget_ok,
    next_group,
    next_step,
)
from gateway.model import Failure

F = Failure
ALL = frozenset(Failure)
BASE = Situation(
    failure=F.SERVER_ERROR,
    attempts_here=1,
    max_attempts=2,
    other_target=False,
    next_group=1,
    fallback_on=ALL,
    retry_after=None,
    backoff=0.2,
    remaining=10.0,
    budget_ok=True,
)


@pytest.mark.parametrize(
    ("changes", "step"),
    [
        ({}, RetrySame(0.2)),  # a 5xx with attempts left: the same deployment, after backoff
        ({"attempts_here": 2}, NextGroup(1)),  # attempts used up: the next group
        ({"attempts_here": 2, "next_group": None}, GiveUp()),
        ({"budget_ok": False}, NextGroup(1)),  # the retry budget is spent
        ({"retry_after": 3.0}, RetrySame(3.0)),  # the provider's Retry-After is honoured
        ({"retry_after": 30.0}, NextGroup(1)),  # ... unless it does not fit the deadline
        ({"retry_after": 30.0, "next_group": None}, GiveUp()),
        ({"other_target": True}, SwitchTarget()),  # another deployment of the group first
        ({"failure": F.CONNECT}, RetrySame(0.2)),
        ({"failure": F.FIRST_BYTE_TIMEOUT, "other_target": True}, SwitchTarget()),
        ({"failure": F.RATE_LIMITED}, NextGroup(1)),  # do not wait when there is a way out
        ({"failure": F.RATE_LIMITED, "next_group": None, "retry_after": 1.0}, RetrySame(1.0)),
        ({"failure": F.RATE_LIMITED, "next_group": None, "retry_after": 20.0}, GiveUp()),
        ({"failure": F.QUOTA, "next_group": None}, GiveUp()),  # waiting cannot fix a quota
        ({"failure": F.QUOTA}, NextGroup(1)),
        ({"failure": F.CLIENT_ERROR, "other_target": True}, GiveUp()),
        ({"failure": F.IDLE_TIMEOUT}, GiveUp()),
        ({"failure": F.DEADLINE}, GiveUp()),
        ({"failure": F.CONTEXT_WINDOW}, NextGroup(1)),
        ({"failure": F.CONTEXT_WINDOW, "next_group": None}, GiveUp()),
        ({"failure": F.CONTENT_FILTER, "fallback_on": frozenset()}, GiveUp()),
        ({"failure": F.CONTENT_FILTER}, NextGroup(1)),
        ({"fallback_on": frozenset(), "attempts_here": 2}, GiveUp()),  # not allowed to move on
    ],
)
def test_next_step(changes: dict[str, object], step: Step) -> None:
    assert next_step(replace(BASE, **changes)) == step  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("retries", "rand", "delay"),
    [(0, 0.5, 0.125), (1, 0.5, 0.25), (2, 0.999, 0.999), (10, 0.5, 4.0), (3, 0.0, 0.0)],
)
def test_backoff_is_full_jitter_capped(retries: int, rand: float, delay: float) -> None:
    assert backoff(retries, base=0.25, cap=8.0, rand=rand) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("active", "retrying", "ok"),
    [(1, 0, True), (1, 2, True), (1, 3, False), (50, 9, True), (50, 10, False), (100, 19, True)],
)
def test_retry_budget_is_a_fifth_of_active_with_a_floor_of_three(
    active: int, retrying: int, ok: bool
) -> None:
    assert budget_ok(active, retrying, ratio=0.2, minimum=3) is ok


def _target(model: str, window: int | None) -> TargetSpec:
    return TargetSpec("p", model, Timeouts(), context_window=window)


GROUPS = (
    GroupSpec((_target("small", 8_000),)),
    GroupSpec((_target("same", 8_000),)),
    GroupSpec((_target("unknown", None),)),
    GroupSpec((_target("big", 128_000),)),
)


def test_context_overflow_moves_only_to_a_bigger_window() -> None:
    assert next_group(GROUPS, 0, F.CONTEXT_WINDOW, GROUPS[0].targets[0]) == 3
    assert next_group(GROUPS, 3, F.CONTEXT_WINDOW, GROUPS[3].targets[0]) is None
    assert next_group(GROUPS, 0, F.CONTEXT_WINDOW, _target("x", None)) is None


def test_other_failures_move_to_the_next_group() -> None:
    assert next_group(GROUPS, 0, F.SERVER_ERROR, GROUPS[0].targets[0]) == 1
    assert next_group(GROUPS, 3, F.SERVER_ERROR, GROUPS[3].targets[0]) is None

"""Per-deployment health: pybreaker's state machine driven from outside any await."""

from __future__ import annotations

import time
from typing import Any

from gateway.breakers import Health
from gateway.config.schema import BreakerSpec
from gateway.decide.balance import Admission
from gateway.model import Failure

SPEC = BreakerSpec(fail_max=3, reset_timeout=0.05, max_reset_timeout=0.15, success_threshold=2,
                   rate_limit_cooldown=0.2, max_cooldown=1.0)  # fmt: skip
D = "up/model"


def _health() -> tuple[Health, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Health(SPEC, events.append), events


def _fail(health: Health, n: int, failure: Failure = Failure.SERVER_ERROR) -> None:
    for _ in range(n):
        health.record(D, failure, None, probe=False)


def test_breaker_opens_after_fail_max_consecutive_failures_and_logs_it_once() -> None:
    health, events = _health()
    _fail(health, 2)
    assert health.admission(D) is Admission.PASS
    _fail(health, 1)
    assert health.admission(D) is Admission.SKIP
    assert [e["to"] for e in events if e["event"] == "breaker"] == ["open"]


def test_a_success_resets_the_consecutive_count() -> None:
    health, _ = _health()
    _fail(health, 2)
    health.record(D, None, None, probe=True)
    _fail(health, 2)
    assert health.admission(D) is Admission.PASS


def test_client_errors_and_rate_limits_do_not_trip_the_breaker() -> None:
    health, _ = _health()
    _fail(health, 5, Failure.CLIENT_ERROR)
    _fail(health, 5, Failure.CONTEXT_WINDOW)
    assert health.admission(D) is Admission.PASS


def test_one_probe_after_the_reset_timeout_then_close_after_enough_successes() -> None:
    health, events = _health()
    _fail(health, 3)
    time.sleep(0.06)
    assert health.admission(D) is Admission.PROBE
    health.begin_probe(D)
    assert [health.admission(D) for _ in range(50)] == [Admission.SKIP] * 50  # one at a time
    health.record(D, None, None, probe=True)  # first success: half-open, waiting for a second
    assert health.admission(D) is Admission.PROBE
    health.begin_probe(D)
    health.record(D, None, None, probe=True)
    assert health.admission(D) is Admission.PASS
    assert [e["to"] for e in events if e["event"] == "breaker"] == ["open", "half-open", "closed"]


def test_a_failed_probe_reopens_with_a_doubled_timeout_up_to_the_cap() -> None:
    health, events = _health()
    _fail(health, 3)
    timeouts = []
    for _ in range(3):
        time.sleep(0.16)
        assert health.admission(D) is Admission.PROBE
        health.begin_probe(D)
        health.record(D, Failure.SERVER_ERROR, None, probe=True)
        timeouts.append(events[-1]["reset_timeout_s"])
    assert timeouts == [0.1, 0.15, 0.15]


def test_a_429_benches_the_deployment_for_its_retry_after() -> None:
    health, events = _health()
    health.record(D, Failure.RATE_LIMITED, 0.1, probe=False)
    assert health.admission(D) is Admission.SKIP
    assert 0.05 < health.next_chance([D]) <= 0.1
    time.sleep(0.11)
    assert health.admission(D) is Admission.PASS
    assert events[-1] == {
        "event": "cooldown",
        "target": D,
        "seconds": 0.1,
        "reason": "rate_limited",
    }


def test_a_429_without_retry_after_uses_the_default_cooldown_and_quota_the_longest() -> None:
    health, _ = _health()
    health.record(D, Failure.RATE_LIMITED, None, probe=False)
    assert 0.15 < health.next_chance([D]) <= 0.2
    health.record("other/model", Failure.QUOTA, None, probe=False)
    assert 0.9 < health.next_chance(["other/model"]) <= 1.0


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    health, _ = _health()
    _fail(health, 3)
    time.sleep(0.06)
    health.begin_probe(D)
    assert health.admission(D) is Admission.SKIP
    health.no_verdict(D, probe=True)
    assert health.admission(D) is Admission.PROBE


def test_snapshot_shows_what_the_admin_api_reports() -> None:
    health, _ = _health()
    _fail(health, 3)
    (row,) = health.snapshot()
    assert row["target"] == D and row["state"] == "open" and row["failures"] == 3
    assert 0 < row["retry_in_s"] <= 0.05


def test_only_the_probe_frees_the_probe_slot() -> None:
    health, _ = _health()
    _fail(health, 3)
    time.sleep(0.06)
    assert health.admission(D) is Admission.PROBE
    health.begin_probe(D)
    health.no_verdict(D, probe=False)  # another request, admitted before the breaker opened
    health.record(D, Failure.CLIENT_ERROR, None, probe=False)
    assert health.admission(D) is Admission.SKIP  # still probing: no second probe

from collections import Counter

import pytest

from gateway.decide.balance import Admission, Candidate, admission, choose


@pytest.mark.parametrize(
    ("state", "now", "opened_at", "probing", "blocked_until", "verdict"),
    [
        ("closed", 100.0, None, False, 0.0, Admission.PASS),
        ("closed", 100.0, None, False, 105.0, Admission.SKIP),  # cooling down after a 429
        ("open", 100.0, 90.0, False, 0.0, Admission.SKIP),  # 10 s of a 30 s reset timeout
        ("open", 120.0, 90.0, False, 0.0, Admission.PROBE),  # due: this request probes
        ("open", 120.0, 90.0, True, 0.0, Admission.SKIP),  # one probe at a time
        ("half-open", 120.0, 90.0, False, 0.0, Admission.PROBE),
        ("half-open", 120.0, 90.0, True, 0.0, Admission.SKIP),
        ("open", 120.0, 90.0, False, 200.0, Admission.SKIP),  # ejected by another replica
    ],
)
def test_admission(
    state: str, now: float, opened_at: float | None, probing: bool, blocked_until: float,
    verdict: Admission,
) -> None:  # fmt: skip
    assert admission(state, now, opened_at, 30.0, probing, blocked_until) is verdict


def test_weighted_choice_follows_the_weights() -> None:
    candidates = [Candidate(3.0, 0, True), Candidate(1.0, 0, True)]
    picks = Counter(choose(candidates, "weighted", i / 1000) for i in range(1000))
    assert picks == {0: 750, 1: 250}


def test_unavailable_deployments_are_never_chosen() -> None:
    candidates = [Candidate(100.0, 0, False), Candidate(1.0, 0, True)]
    assert {choose(candidates, "weighted", i / 10) for i in range(10)} == {1}
    assert choose([Candidate(1.0, 0, False)], "weighted", 0.5) is None


def test_least_in_flight_prefers_the_least_loaded_per_weight() -> None:
    candidates = [Candidate(1.0, 4, True), Candidate(2.0, 6, True), Candidate(1.0, 5, True)]
    assert choose(candidates, "least_in_flight", 0.99) == 1  # 3 per unit of weight
    tied = [Candidate(1.0, 2, True), Candidate(1.0, 2, True)]
    assert {choose(tied, "least_in_flight", r) for r in (0.1, 0.9)} == {0, 1}

import pytest

from gateway.decide.leases import MIN_REQUESTS, SHARE, lease_size, leased_quota


@pytest.mark.parametrize(
    ("demand", "cost", "left", "size"),
    [
        (500.0, 1.0, 1_000_000.0, 500.0),  # a busy limit far from its end: the recent demand
        (500.0, 1.0, 800.0, 100.0),  # near its end: at most 1/SHARE of what is left
        (500.0, 1.0, 8 * MIN_REQUESTS - 1, 0.0),  # nearly spent: checked request by request
        (MIN_REQUESTS - 1, 1.0, 1_000_000.0, 0.0),  # not busy: checked request by request
        (float(MIN_REQUESTS), 1.0, 1_000_000.0, float(MIN_REQUESTS)),
        (16_000.0, 1_040.0, 10**9, 0.0),  # tokens: fewer than MIN_REQUESTS requests' worth
        (40_000.0, 1_040.0, 10**9, 40_000.0),
        (500.5, 1.0, 1_000_000.0, 500.0),  # whole units
        (500.0, 0.0, 1_000_000.0, 500.0),  # a free request still needs a busy limit
    ],
)
def test_a_lease_covers_recent_demand_within_a_share_of_what_is_left(
    demand: float, cost: float, left: float, size: float
) -> None:
    assert lease_size(demand, cost, left) == size
    assert SHARE * lease_size(demand, cost, left) <= left


@pytest.mark.parametrize(
    ("key", "leased"),
    [
        ("b/alice/2026-11-26/tokens", True),
        ("b/alice/2026-11/usd", True),
        ("g/alice/0123abcd/29473", False),  # the loop guard counts each request
        ("r/alice/run-1/steps", False),  # a run's steps are checked step by step
    ],
)
def test_only_budgets_among_quotas_are_leased(key: str, leased: bool) -> None:
    assert leased_quota(key) is leased

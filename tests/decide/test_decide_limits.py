import math
from collections.abc import Sequence

import pytest

from gateway.decide.limits import (
    Kind,
    Quota,
    Rate,
    Slots,
    State,
    Tally,
    Verdict,
    admit,
    settle,
)

NOW = 1_700_000_000_000.0  # epoch ms
LEASE = 30_000.0


def merged(state: State, new: State) -> State:
    """The whole state once the store wrote `new` over the keys it decided."""
    return State(
        {**state.tats, **new.tats},
        {**state.leases, **new.leases},
        {**state.quotas, **new.quotas},
    )


class Limits:
    """A store in memory: applies each admission's or settlement's new state."""

    def __init__(self) -> None:
        self.state = State()

    def admit(
        self,
        now: float,
        rates: Sequence[Rate] = (),
        slots: Sequence[Slots] = (),
        quotas: Sequence[Quota] = (),
        request_id: str = "req",
        lease: float = LEASE,
    ) -> Verdict:
        decision = admit(self.state, rates, slots, quotas, request_id, lease, now)
        assert (decision.state is None) == (not decision.verdict.allowed)
        if decision.state is not None:
            self.state = merged(self.state, decision.state)
        return decision.verdict

    def settle(
        self,
        now: float,
        rates: Sequence[Rate] = (),
        quotas: Sequence[Quota] = (),
        slots: Sequence[Slots] = (),
        request_id: str = "req",
    ) -> None:
        self.state = merged(self.state, settle(self.state, rates, quotas, slots, request_id, now))


# Rates.


@pytest.mark.parametrize("per_minute", [1, 3, 7, 60, 70, 106, 137, 600, 1000, 1234, 7837])
def test_a_rate_admits_exactly_its_limit_of_three_times_as_many_simultaneous_requests(
    per_minute: int,
) -> None:
    # 106/min: summing T (a repeating fraction) in doubles would refuse the 106th request
    limits = Limits()
    rate = Rate("c:alice:rpm", per_minute, 1)
    now = NOW + 0.456  # a clock between grid points
    verdicts = [limits.admit(now, [rate]) for _ in range(3 * per_minute)]
    assert sum(v.allowed for v in verdicts) == per_minute
    assert [v.limits[0].remaining for v in verdicts[:per_minute]] == [
        per_minute - 1 - i for i in range(per_minute)
    ]


def test_a_rate_whose_interval_is_off_the_grid_is_at_most_a_hair_more_generous() -> None:
    # 12345/min: T = 4.8602... ms, charged 4.859375 (rounded down to 1/1024 ms)
    limits = Limits()
    rate = Rate("rpm", 12_345, 1)
    assert sum(limits.admit(NOW, [rate]).allowed for _ in range(13_000)) == 12_347


def test_a_60_per_minute_rate_admits_one_more_request_each_second() -> None:
    limits = Limits()
    rate = Rate("rpm", 60, 1)
    assert sum(limits.admit(NOW, [rate]).allowed for _ in range(200)) == 60
    early = limits.admit(NOW + 999, [rate])
    assert not early.allowed and early.retry_after == pytest.approx(0.001)
    assert limits.admit(NOW + 1000, [rate]).allowed
    assert not limits.admit(NOW + 1000, [rate]).allowed
    # after 10 s of quiet, 10 more
    assert sum(limits.admit(NOW + 11_000, [rate]).allowed for _ in range(20)) == 10
    # after a whole idle minute, the full burst again
    assert sum(limits.admit(NOW + 71_000, [rate]).allowed for _ in range(200)) == 60


def test_token_costs_are_taken_from_the_bucket_in_one_piece() -> None:
    limits = Limits()

    def tpm(cost: float) -> Rate:
        return Rate("c:alice:tpm", 1000, cost)

    assert limits.admit(NOW, [tpm(400)]).allowed
    assert limits.admit(NOW, [tpm(400)]).allowed
    refused = limits.admit(NOW, [tpm(400)])
    # 200 tokens left; 400 fit once 200 more have refilled: 200 * 60 ms
    assert not refused.allowed and not refused.exceeds
    assert refused.retry_after == pytest.approx(12.0)
    assert refused.limits[0].remaining == 200
    assert limits.admit(NOW, [tpm(200)]).allowed  # exactly the rest
    assert not limits.admit(NOW, [tpm(1)]).allowed
    assert limits.admit(NOW + 60, [tpm(1)]).allowed  # one token refills in 60 ms
    assert limits.admit(NOW + 60, [tpm(0.5)]).allowed is False  # a fraction waits its share
    assert limits.admit(NOW + 90, [tpm(0.5)]).allowed


def test_a_cost_larger_than_the_whole_limit_can_never_pass() -> None:
    limits = Limits()
    verdict = limits.admit(NOW, [Rate("tpm", 1000, 1001)])
    assert not verdict.allowed and verdict.exceeds and verdict.retry_after == math.inf
    assert verdict.blocked is not None and verdict.blocked.key == "tpm"
    assert verdict.limits[0].remaining == 1000  # the bucket itself is full and untouched
    assert limits.state == State()
    # exactly the whole limit passes, on a full bucket only
    assert limits.admit(NOW, [Rate("tpm", 1000, 1000)]).allowed
    waiting = limits.admit(NOW, [Rate("tpm", 1000, 1000)])
    assert not waiting.allowed and not waiting.exceeds and waiting.retry_after == 60.0
    assert limits.admit(NOW, [Rate("none", 0, 1)]).exceeds  # a zero limit admits nothing


@pytest.mark.parametrize(
    ("taken", "cost", "remaining", "reset"),
    [
        (0, 1, 59, 1.0),  # the first request of a 60/min bucket
        (1, 1, 58, 2.0),
        (59, 1, 0, 60.0),  # the 60th: nothing left, full again in a minute
        (0, 10, 50, 10.0),
        (30, 30, 0, 60.0),
    ],
)
def test_an_admitted_request_reports_what_its_rate_has_left_and_when_it_is_full(
    taken: int, cost: float, remaining: float, reset: float
) -> None:
    limits = Limits()
    if taken:
        assert limits.admit(NOW, [Rate("rpm", 60, taken)]).allowed
    verdict = limits.admit(NOW, [Rate("rpm", 60, cost)])
    assert verdict.allowed and verdict.retry_after == 0 and verdict.blocked is None
    (status,) = verdict.limits
    assert (status.key, status.kind, status.limit) == ("rpm", Kind.RATE, 60)
    assert (status.remaining, status.reset) == (remaining, reset)


def test_a_refused_request_reports_the_rate_as_it_stands() -> None:
    limits = Limits()
    assert limits.admit(NOW, [Rate("rpm", 60, 60)]).allowed
    verdict = limits.admit(NOW + 2500, [Rate("rpm", 60, 3)])
    assert not verdict.allowed
    (status,) = verdict.limits
    assert status.remaining == 2  # 2.5 s refilled two whole requests
    assert status.reset == 57.5
    assert verdict.retry_after == pytest.approx(0.5)  # the third refills at 3 s
    assert verdict.blocked == status


# All or nothing.


def test_a_request_refused_by_its_second_limit_does_not_consume_the_first() -> None:
    limits = Limits()
    rpm, tpm = Rate("c:alice:rpm", 60, 1), Rate("m:gpt:tpm", 1000, 800)
    assert limits.admit(NOW, [rpm, tpm]).allowed
    before = limits.state
    refused = limits.admit(NOW, [rpm, tpm])
    assert not refused.allowed
    assert refused.blocked is not None and refused.blocked.key == "m:gpt:tpm"
    assert refused.limits[0].remaining == 59  # the rate that would have passed, untouched
    assert limits.state == before
    # so the first limit alone still has 59 requests in it
    assert sum(limits.admit(NOW, [rpm]).allowed for _ in range(100)) == 59


def test_a_full_quota_refuses_and_leaves_rates_and_slots_untouched() -> None:
    limits = Limits()
    quota = Quota("c:alice:day", 100, 60, NOW + 3_600_000)
    rate, slots = Rate("rpm", 60, 1), Slots("conc", 1)
    assert limits.admit(NOW, [rate], [slots], [quota], "one").allowed
    limits.settle(NOW, slots=[slots], request_id="one")
    before = limits.state
    refused = limits.admit(NOW, [rate], [slots], [quota], "two")
    assert not refused.allowed and refused.blocked is not None
    assert (refused.blocked.key, refused.blocked.kind) == ("c:alice:day", Kind.QUOTA)
    assert refused.retry_after == 3600.0  # until the period ends
    assert [s.remaining for s in refused.limits] == [59, 1, 40]
    assert limits.state == before


def test_the_limit_that_frees_up_last_is_the_one_reported() -> None:
    limits = Limits()
    rpm, tpm = Rate("rpm", 60, 1), Rate("tpm", 600, 1)
    assert limits.admit(NOW, [Rate("rpm", 60, 60), Rate("tpm", 600, 600)]).allowed
    verdict = limits.admit(NOW, [rpm, tpm])
    assert verdict.blocked is not None and verdict.blocked.key == "rpm"
    assert verdict.retry_after == 1.0  # tpm would admit after 0.1 s, rpm after 1 s
    # a limit the request alone exceeds wins over any wait
    verdict = limits.admit(NOW, [rpm, Rate("tpm", 600, 601)])
    assert verdict.blocked is not None and verdict.blocked.key == "tpm"
    assert verdict.exceeds and verdict.retry_after == math.inf


# Quotas.


@pytest.mark.parametrize(
    ("used", "cost", "allowed", "remaining"),
    [
        (0, 1000, True, 0),
        (999, 1, True, 0),
        (1000, 0, True, 0),
        (999, 2, False, 1),
        (1000, 1, False, 0),
        (400, 600, True, 0),
        (400, 599, True, 1),
    ],
)
def test_a_quota_admits_up_to_its_limit_exactly(
    used: float, cost: float, allowed: bool, remaining: float
) -> None:
    state = State(quotas={"q": Tally(used, NOW + 10_000)})
    decision = admit(state, [], [], [Quota("q", 1000, cost, NOW + 10_000)], "r", LEASE, NOW)
    assert decision.verdict.allowed is allowed
    (status,) = decision.verdict.limits
    assert (status.remaining, status.reset) == (remaining, 10.0)
    if allowed:
        assert decision.state is not None
        assert decision.state.quotas == {"q": Tally(used + cost, NOW + 10_000)}
    else:
        assert decision.state is None and decision.verdict.retry_after == 10.0


def test_a_quota_counts_from_zero_once_its_period_is_over() -> None:
    limits = Limits()
    today = Quota("c:alice:day", 1000, 1000, NOW + 5000)
    assert limits.admit(NOW, quotas=[today]).allowed
    assert not limits.admit(NOW + 4999, quotas=[today]).allowed
    tomorrow = Quota("c:alice:day", 1000, 1000, NOW + 5000 + 86_400_000)
    assert not limits.admit(NOW + 4999, quotas=[tomorrow]).allowed  # the old period still runs
    assert limits.admit(NOW + 5000, quotas=[tomorrow]).allowed
    assert limits.state.quotas["c:alice:day"] == Tally(1000, NOW + 5000 + 86_400_000)


def test_a_quota_cost_larger_than_its_limit_can_never_pass() -> None:
    verdict = Limits().admit(NOW, quotas=[Quota("q", 1000, 1001, NOW + 5000)])
    assert not verdict.allowed and verdict.exceeds and verdict.retry_after == math.inf


# Slots.


def test_slots_admit_up_to_the_limit_and_a_release_frees_one() -> None:
    limits = Limits()
    slots = Slots("c:alice:conc", 3)
    verdicts = [limits.admit(NOW, slots=[slots], request_id=f"r{i}") for i in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.limits[0].remaining for v in verdicts] == [2, 1, 0, 0, 0]
    refused = verdicts[3]
    assert refused.blocked is not None and refused.blocked.kind is Kind.SLOTS
    assert refused.retry_after == 1.0  # slots cannot know: the documented constant
    limits.settle(NOW + 10, slots=[slots], request_id="r1")
    assert limits.admit(NOW + 10, slots=[slots], request_id="r3").allowed
    assert not limits.admit(NOW + 10, slots=[slots], request_id="r4").allowed
    assert set(limits.state.leases["c:alice:conc"]) == {"r0", "r2", "r3"}


def test_an_expired_lease_frees_its_slot() -> None:
    limits = Limits()
    slots = Slots("conc", 2)
    assert limits.admit(NOW, slots=[slots], request_id="dead", lease=200).allowed
    assert limits.admit(NOW, slots=[slots], request_id="alive").allowed
    refused = limits.admit(NOW + 50, slots=[slots], request_id="new")
    assert not refused.allowed and refused.retry_after == pytest.approx(0.15)  # dead's lease
    assert limits.admit(NOW + 200, slots=[slots], request_id="new").allowed
    assert set(limits.state.leases["conc"]) == {"alive", "new"}  # the dead lease was reaped


def test_a_request_admitted_again_renews_its_lease_instead_of_taking_another_slot() -> None:
    limits = Limits()
    slots = Slots("conc", 1)
    assert limits.admit(NOW, slots=[slots], request_id="a", lease=100).allowed
    assert limits.admit(NOW + 50, slots=[slots], request_id="a", lease=100).allowed
    assert limits.state.leases["conc"] == {"a": NOW + 150}
    assert not limits.admit(NOW + 50, slots=[slots], request_id="b").allowed
    assert Limits().admit(NOW, slots=[Slots("none", 0)]).exceeds


# Settle.


def test_settle_credit_gives_back_what_a_request_did_not_use() -> None:
    limits = Limits()
    tpm = Rate("tpm", 1000, 800)
    assert limits.admit(NOW, [tpm]).allowed
    assert not limits.admit(NOW, [Rate("tpm", 1000, 500)]).allowed
    limits.settle(NOW, [Rate("tpm", 1000, 100 - 800)])  # it used 100 of the 800 reserved
    verdict = limits.admit(NOW, [Rate("tpm", 1000, 500)])
    assert verdict.allowed and verdict.limits[0].remaining == 400


def test_settle_credit_never_makes_a_bucket_fuller_than_full() -> None:
    limits = Limits()
    assert limits.admit(NOW, [Rate("tpm", 1000, 100)]).allowed
    limits.settle(NOW, [Rate("tpm", 1000, -5000)])
    assert limits.state.tats["tpm"] == NOW
    assert sum(limits.admit(NOW, [Rate("tpm", 1000, 100)]).allowed for _ in range(20)) == 10


def test_settle_debit_puts_the_bucket_in_debt() -> None:
    limits = Limits()
    assert limits.admit(NOW, [Rate("tpm", 1000, 100)]).allowed
    limits.settle(NOW, [Rate("tpm", 1000, 1400)])  # it used 1500: 500 more than the limit
    refused = limits.admit(NOW, [Rate("tpm", 1000, 1)])
    assert not refused.allowed and not refused.exceeds
    assert refused.limits[0].remaining == 0
    assert refused.limits[0].reset == 90.0  # 1500 tokens at 60 ms each
    assert refused.retry_after == pytest.approx(30.06)  # pay off 500, then take 1
    assert limits.admit(NOW + 30_060, [Rate("tpm", 1000, 1)]).allowed


def test_settle_moves_a_quota_by_the_delta_never_below_zero() -> None:
    limits = Limits()
    day = NOW + 86_400_000
    assert limits.admit(NOW, quotas=[Quota("q", 1000, 600, day)]).allowed
    limits.settle(NOW, quotas=[Quota("q", 1000, 300, day)])
    assert limits.state.quotas["q"] == Tally(900, day)
    limits.settle(NOW, quotas=[Quota("q", 1000, -5000, day)])
    assert limits.state.quotas["q"] == Tally(0, day)
    limits.settle(NOW, quotas=[Quota("q", 1000, 1500, day)])  # never refused: 500 in debt
    refused = limits.admit(NOW, quotas=[Quota("q", 1000, 0, day)])
    assert not refused.allowed and refused.limits[0].remaining == 0


def test_settle_after_the_period_ended_charges_nothing_to_the_next() -> None:
    limits = Limits()
    period = NOW + 1000
    assert limits.admit(NOW, quotas=[Quota("q", 1000, 100, period)]).allowed
    limits.settle(NOW + 1000, quotas=[Quota("q", 1000, 900, period)])
    assert limits.state.quotas["q"] == Tally(100, period)  # untouched, and expired
    verdict = limits.admit(NOW + 1000, quotas=[Quota("q", 1000, 1000, NOW + 2000)])
    assert verdict.allowed


def test_settle_releases_the_request_s_leases_and_reaps_expired_ones() -> None:
    limits = Limits()
    slots = Slots("conc", 3)
    assert limits.admit(NOW, slots=[slots], request_id="a").allowed
    assert limits.admit(NOW, slots=[slots], request_id="b", lease=100).allowed
    assert limits.admit(NOW, slots=[slots], request_id="c").allowed
    limits.settle(NOW + 100, slots=[slots], request_id="a")
    assert set(limits.state.leases["conc"]) == {"c"}
    limits.settle(NOW + 100, slots=[slots], request_id="unknown")  # nothing to release
    assert set(limits.state.leases["conc"]) == {"c"}


# Keys.


def test_keys_are_independent() -> None:
    limits = Limits()
    assert limits.admit(NOW, [Rate("alice", 60, 60)]).allowed
    assert not limits.admit(NOW, [Rate("alice", 60, 1)]).allowed
    assert limits.admit(NOW, [Rate("bob", 60, 60)]).allowed
    # the same name as another kind of limit is another limit
    assert limits.admit(NOW, quotas=[Quota("alice", 10, 10, NOW + 1000)]).allowed
    assert limits.admit(NOW, slots=[Slots("alice", 1)]).allowed
    assert limits.state.tats == {"alice": NOW + 60_000, "bob": NOW + 60_000}


def test_a_key_given_twice_in_one_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="rate key appears twice"):
        admit(State(), [Rate("k", 60, 1), Rate("k", 600, 1)], [], [], "r", LEASE, NOW)
    with pytest.raises(ValueError, match="slots key appears twice"):
        settle(State(), [], [], [Slots("k", 1), Slots("k", 2)], "r", NOW)

"""The limits contract of the store seam (`limits_admit`, `limits_settle`), run against every
implementation (embedded SQLite and Redis), plus each backend's own housekeeping.

Keys are unique per test (uuid4 hex), so runs against the shared Redis never meet. The clock
is the store's, so numbers that depend on it are checked within what a test run can take.
"""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from harness import OwnRedis, store_error

from gateway.decide import limits
from gateway.decide.limits import Kind, Quota, Rate, Slots, State, Verdict
from gateway.stores.base import Store
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore

T = TypeVar("T")

SHARED_REDIS = "redis://127.0.0.1:6379/0"
LEASE = 30.0  # seconds


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SqliteStore(str(tmp_path / "nested" / "sp.db"))
    return RedisStore(SHARED_REDIS)


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> list[Store]:
    """Stores sharing one state: 2 SQLite connections (own writer threads) on one file, or 3
    Redis clients (own connection pools) on one server, as processes or replicas would."""
    if request.param == "sqlite":
        return [SqliteStore(str(tmp_path / "sp.db")) for _ in range(2)]
    return [RedisStore(SHARED_REDIS) for _ in range(3)]


def with_open(stores: Store | Sequence[Store], body: Callable[..., Awaitable[T]]) -> T:
    """Open the store(s), run `body` with them, close them."""
    group = [stores] if not isinstance(stores, Sequence) else list(stores)

    async def run() -> T:
        for s in group:  # one after the other: the first creates the SQLite file and schema
            await s.open()
        try:
            return await body(*group)
        finally:
            for s in group:
                await s.close()

    return asyncio.run(run())


def new_key(name: str) -> str:
    return f"{uuid.uuid4().hex}:{name}"


def now_ms() -> float:
    return time.time() * 1000


def status(verdict: Verdict, key: str) -> limits.Status:
    (found,) = [s for s in verdict.limits if s.key == key]
    return found


# Rates.


def test_a_60_per_minute_rate_admits_exactly_60_of_200_concurrent_requests(store: Store) -> None:
    rpm = Rate(new_key("rpm"), 60, 1)

    async def body(s: Store) -> list[Verdict]:
        calls = (s.limits_admit([rpm], [], [], f"r{i}", LEASE) for i in range(200))
        return list(await asyncio.gather(*calls))

    verdicts = with_open(store, body)
    admitted = [v for v in verdicts if v.allowed]
    assert len(admitted) == 60
    # each admission saw the state the one before it left: every count from 59 down to 0
    assert sorted(v.limits[0].remaining for v in admitted) == list(range(60))
    for refused in (v for v in verdicts if not v.allowed):
        assert refused.blocked is not None and refused.blocked.key == rpm.key
        assert not refused.exceeds and 0.5 < refused.retry_after <= 1.0
        assert refused.limits[0].remaining == 0


def test_stores_sharing_one_state_admit_exactly_the_limit_between_them(
    replicas: list[Store],
) -> None:
    rpm = Rate(new_key("rpm"), 60, 1)
    tpm = Rate(new_key("tpm"), 100_000, 1000)

    async def body(*stores: Store) -> list[Verdict]:
        calls = (
            stores[i % len(stores)].limits_admit([rpm, tpm], [], [], f"r{i}", LEASE)
            for i in range(200)
        )
        return list(await asyncio.gather(*calls))

    verdicts = with_open(replicas, body)
    assert sum(v.allowed for v in verdicts) == 60
    # no two admissions, through whichever store, saw the same state
    assert sorted(status(v, rpm.key).remaining for v in verdicts if v.allowed) == list(range(60))
    # the tokens of the 60 admitted only (refilling 1.67 a ms while the test runs)
    assert 40_000 <= min(status(v, tpm.key).remaining for v in verdicts) < 41_000


def test_a_cost_larger_than_the_whole_limit_is_refused_for_good(store: Store) -> None:
    tpm = Rate(new_key("tpm"), 1000, 1500)

    async def body(s: Store) -> tuple[Verdict, Verdict]:
        too_large = await s.limits_admit([tpm], [], [], "r1", LEASE)
        whole = await s.limits_admit([Rate(tpm.key, 1000, 1000)], [], [], "r2", LEASE)
        return too_large, whole

    too_large, whole = with_open(store, body)
    assert not too_large.allowed and too_large.exceeds and too_large.retry_after == math.inf
    assert too_large.blocked == too_large.limits[0]
    assert too_large.limits[0].remaining == 1000  # untouched: the whole limit still fits
    assert whole.allowed and whole.limits[0].remaining == 0


def test_a_token_reservation_settled_with_a_credit_lets_more_in(store: Store) -> None:
    key = new_key("tpm")

    async def body(s: Store) -> tuple[Verdict, Verdict]:
        assert (await s.limits_admit([Rate(key, 1000, 800)], [], [], "r1", LEASE)).allowed
        refused = await s.limits_admit([Rate(key, 1000, 500)], [], [], "r2", LEASE)
        await s.limits_settle([Rate(key, 1000, 100 - 800)], [], [], "r1")  # it used 100
        return refused, await s.limits_admit([Rate(key, 1000, 500)], [], [], "r2", LEASE)

    refused, admitted = with_open(store, body)
    assert not refused.allowed and 17.0 < refused.retry_after <= 18.0  # 300 tokens short
    assert admitted.allowed
    # 1000 - 100 - 500, plus what refilled while the test ran (1000/min: 1 per 60 ms)
    assert 400 <= admitted.limits[0].remaining <= 405


def test_a_settled_debit_puts_the_bucket_in_debt_and_blocks(store: Store) -> None:
    key = new_key("tpm")

    async def body(s: Store) -> Verdict:
        assert (await s.limits_admit([Rate(key, 1000, 100)], [], [], "r1", LEASE)).allowed
        await s.limits_settle([Rate(key, 1000, 1400)], [], [], "r1")  # it used 1500
        return await s.limits_admit([Rate(key, 1000, 1)], [], [], "r2", LEASE)

    refused = with_open(store, body)
    assert not refused.allowed and not refused.exceeds
    assert refused.limits[0].remaining == 0
    assert 89.0 < refused.limits[0].reset <= 90.0  # 1500 tokens at 60 ms each
    assert 29.5 < refused.retry_after <= 30.06  # pay off 500 tokens of debt, then take 1


# All or nothing.


def test_a_request_refused_by_one_limit_takes_nothing_from_the_others(store: Store) -> None:
    rpm, slots = Rate(new_key("rpm"), 60, 1), Slots(new_key("conc"), 5)
    day = now_ms() + 3_600_000
    quota = Quota(new_key("day"), 1000, 600, day)

    async def body(s: Store) -> tuple[Verdict, Verdict, Verdict]:
        first = await s.limits_admit([rpm], [slots], [quota], "r1", LEASE)
        refused = await s.limits_admit([rpm], [slots], [quota], "r2", LEASE)
        after = await s.limits_admit([rpm], [slots], [Quota(quota.key, 1000, 0, day)], "r3", LEASE)
        return first, refused, after

    first, refused, after = with_open(store, body)
    assert first.allowed and not refused.allowed
    assert refused.blocked is not None
    assert (refused.blocked.key, refused.blocked.kind) == (quota.key, Kind.QUOTA)
    assert 3599 < refused.retry_after <= 3600  # until the period ends
    assert [s.remaining for s in refused.limits] == [59, 4, 400]  # as they stand
    # the refused request took nothing: the next one finds what the first one left
    assert after.allowed and [s.remaining for s in after.limits] == [58, 3, 400]


# Slots.


def test_slots_admit_up_to_the_limit_and_a_release_frees_one(store: Store) -> None:
    slots = Slots(new_key("conc"), 3)

    async def body(s: Store) -> tuple[list[Verdict], list[Verdict]]:
        first = await asyncio.gather(
            *(s.limits_admit([], [slots], [], f"a{i}", LEASE) for i in range(10))
        )
        holder = next(i for i, v in enumerate(first) if v.allowed)
        await s.limits_settle([], [], [slots], f"a{holder}")
        second = await asyncio.gather(
            *(s.limits_admit([], [slots], [], f"b{i}", LEASE) for i in range(10))
        )
        return list(first), list(second)

    first, second = with_open(store, body)
    assert sum(v.allowed for v in first) == 3
    assert sorted(v.limits[0].remaining for v in first if v.allowed) == [0, 1, 2]
    for refused in (v for v in first if not v.allowed):
        assert refused.blocked is not None and refused.blocked.kind is Kind.SLOTS
        assert refused.retry_after == 1.0 and not refused.exceeds
    assert sum(v.allowed for v in second) == 1


def test_a_lease_that_lapses_frees_its_slot(store: Store) -> None:
    slots = Slots(new_key("conc"), 1)

    async def body(s: Store) -> tuple[Verdict, Verdict, Verdict]:
        dead = await s.limits_admit([], [slots], [], "dead", 0.2)  # its gateway never settles
        refused = await s.limits_admit([], [slots], [], "next", LEASE)
        await asyncio.sleep(0.25)
        return dead, refused, await s.limits_admit([], [slots], [], "next", LEASE)

    dead, refused, admitted = with_open(store, body)
    assert dead.allowed and not refused.allowed
    assert 0.1 < refused.retry_after <= 0.2  # the lease lapses sooner than the constant 1 s
    assert admitted.allowed


# Quotas.


def test_a_quota_is_exact_at_its_boundary_under_100_concurrent_requests(store: Store) -> None:
    day = now_ms() + 3_600_000
    key = new_key("day")

    async def body(s: Store) -> tuple[list[Verdict], list[Verdict]]:
        burst = await asyncio.gather(
            *(s.limits_admit([], [], [Quota(key, 1000, 30, day)], f"r{i}", LEASE)
              for i in range(100))
        )  # fmt: skip
        rest = [
            await s.limits_admit([], [], [Quota(key, 1000, cost, day)], f"s{cost}", LEASE)
            for cost in (11, 10, 1)
        ]
        return list(burst), rest

    burst, (eleven, ten, one) = with_open(store, body)
    admitted = [v for v in burst if v.allowed]
    assert len(admitted) == 33  # 990 of 1000: never a request beyond the limit
    assert sorted(v.limits[0].remaining for v in admitted) == [10 + 30 * i for i in range(33)]
    assert not eleven.allowed and eleven.limits[0].remaining == 10
    assert 3599 < eleven.retry_after <= 3600
    assert ten.allowed and ten.limits[0].remaining == 0  # exactly to the limit
    assert not one.allowed


def test_a_quota_counts_from_zero_once_its_period_ends(store: Store) -> None:
    key = new_key("minute")

    async def body(s: Store) -> list[Verdict]:
        period = now_ms() + 300
        verdicts = [
            await s.limits_admit([], [], [Quota(key, 10, 10, period)], "r1", LEASE),
            await s.limits_admit([], [], [Quota(key, 10, 1, period)], "r2", LEASE),
        ]
        await asyncio.sleep(0.35)
        following = now_ms() + 60_000
        verdicts.append(await s.limits_admit([], [], [Quota(key, 10, 10, following)], "r3", LEASE))
        return verdicts

    first, refused, next_period = with_open(store, body)
    assert first.allowed and 0.2 < first.limits[0].reset <= 0.3
    assert not refused.allowed and 0.2 < refused.retry_after <= 0.3
    assert next_period.allowed and next_period.limits[0].remaining == 0


def test_settle_moves_a_quota_by_the_delta(store: Store) -> None:
    day = now_ms() + 3_600_000
    key = new_key("day")

    def quota(cost: float) -> Quota:
        return Quota(key, 1000, cost, day)

    async def body(s: Store) -> list[Verdict]:
        assert (await s.limits_admit([], [], [quota(600)], "r1", LEASE)).allowed
        await s.limits_settle([], [quota(-500)], [], "r1")  # it used 100
        seen = [await s.limits_admit([], [], [quota(0)], "r2", LEASE)]
        await s.limits_settle([], [quota(-5000)], [], "r2")  # never below 0
        seen.append(await s.limits_admit([], [], [quota(0)], "r3", LEASE))
        await s.limits_settle([], [quota(1200)], [], "r3")  # never refused: over the limit
        seen.append(await s.limits_admit([], [], [quota(0)], "r4", LEASE))
        return seen

    after_credit, floored, in_debt = with_open(store, body)
    assert after_credit.limits[0].remaining == 900
    assert floored.limits[0].remaining == 1000
    assert not in_debt.allowed and in_debt.limits[0].remaining == 0


# Edges.


def test_no_limits_admit_at_once_and_a_repeated_key_is_an_error(store: Store) -> None:
    async def body(s: Store) -> Verdict:
        with pytest.raises(ValueError):
            await s.limits_admit([Rate("k", 60, 1), Rate("k", 60, 1)], [], [], "r", LEASE)
        await s.limits_settle([], [], [], "r")
        return await s.limits_admit([], [], [], "r", LEASE)

    assert with_open(store, body) == Verdict(True, ())


# Redis only.


def test_redis_limit_keys_share_one_hash_tag_and_expire_when_idle() -> None:
    rpm, slots = Rate(new_key("rpm"), 60, 1), Slots(new_key("conc"), 2)
    quota = Quota(new_key("day"), 1000, 10, now_ms() + 3_600_000)
    names = [
        f"sp:{{limits}}:rate:{rpm.key}",
        f"sp:{{limits}}:slots:{slots.key}",
        f"sp:{{limits}}:quota:{quota.key}",
    ]
    client = redis.Redis(host="127.0.0.1", port=6379)

    async def body(s: Store) -> tuple[list[int], list[int]]:
        assert (await s.limits_admit([rpm], [slots], [quota], "r1", 0.5)).allowed
        ttls = [client.pttl(name) for name in names]
        # a full credit empties the bucket; releasing the last lease empties the set
        await s.limits_settle([Rate(rpm.key, 60, -1)], [], [slots], "r1")
        return ttls, [client.exists(name) for name in names]

    try:
        ttls, exists = with_open(RedisStore(SHARED_REDIS), body)
        assert client.hget(names[2], "used") == b"10"
    finally:
        client.delete(*names)
        client.close()
    rate_ttl, slots_ttl, quota_ttl = ttls
    assert 0 < rate_ttl <= 1000  # the bucket is full again after one unit's interval
    assert 0 < slots_ttl <= 500  # the longest lease
    assert 3_590_000 < quota_ttl <= 3_600_000  # the end of the period
    assert exists == [0, 0, 1]


def test_redis_scripts_compute_what_the_pure_decision_does(own_redis: OwnRedis) -> None:
    """Random admissions and settlements on a fixed clock give the same verdicts, to the
    bit, from the Lua scripts and from `gateway.decide.limits`."""
    rng = random.Random(20261105)
    start = now_ms() + 3_600_000 + 0.123  # ahead of the server clock: no key expires early
    names = [f"k{i}" for i in range(4)]

    def rates() -> list[Rate]:
        keys = rng.sample(names, rng.randint(0, 3))
        return [
            Rate(k, rng.choice([7, 60, 1000, 1234.5]), rng.choice([0, 0.5, 1, 3, 17.3, 250]))
            for k in keys
        ]

    def quotas(at: float) -> list[Quota]:
        keys = rng.sample(names, rng.randint(0, 2))
        end = at + rng.choice([400.0, 5000.5, 90_000.0])
        return [Quota(k, rng.choice([10, 1000]), rng.choice([1, 3.5, 9]), end) for k in keys]

    def slots() -> list[Slots]:
        return [Slots(k, rng.choice([1, 2])) for k in rng.sample(names[:2], rng.randint(0, 2))]

    async def body(s: Store) -> int:
        assert isinstance(s, RedisStore)
        # bursts at one instant, where rounding would show: 3L requests to an L/min bucket
        for per_minute in (7, 106, 137, 1234.5):
            state, rate = State(), [Rate(f"burst:{per_minute}", per_minute, 1)]
            for _ in range(int(3 * per_minute)):
                decision = limits.admit(state, rate, [], [], "r", 1000.0, start)
                assert await s._limits_admit(rate, [], [], "r", 1.0, start) == decision.verdict
                state = _merged(state, decision.state or State())
        state, now, admitted = State(), start, 0
        for step in range(400):
            now += rng.choice([0.0, 0.25, 17.0, 333.3, 1500.0])
            request = f"r{rng.randint(0, 5)}"
            r, sl, q = rates(), slots(), quotas(now)
            if rng.random() < 0.7:
                lease = rng.choice([100.0, 30_000.0])
                decision = limits.admit(state, r, sl, q, request, lease, now)
                verdict = await s._limits_admit(r, sl, q, request, lease / 1000, now)
                assert verdict == decision.verdict, step
                if decision.state is not None:
                    state = _merged(state, decision.state)
                    admitted += 1
            else:
                deltas = [Rate(x.key, x.per_minute, x.cost - 10) for x in r]
                debts = [Quota(x.key, x.limit, x.cost - 5, x.expires_ms) for x in q]
                state = _merged(state, limits.settle(state, deltas, debts, sl, request, now))
                await s._limits_settle(deltas, debts, sl, request, now)
        return admitted

    admitted = with_open(RedisStore(own_redis.url), body)
    assert 50 < admitted < 280  # both verdicts were exercised


def _merged(state: State, new: State) -> State:
    return State(
        {**state.tats, **new.tats}, {**state.leases, **new.leases}, {**state.quotas, **new.quotas}
    )


def test_redis_limits_outage_is_store_unavailable_and_the_store_recovers(
    own_redis: OwnRedis,
) -> None:
    rpm, slots = Rate("rpm", 60, 1), Slots("conc", 2)
    quota = Quota("day", 100, 10, now_ms() + 3_600_000)

    async def body(s: Store) -> tuple[list[str], Verdict]:
        assert (await s.limits_admit([rpm], [slots], [quota], "r1", LEASE)).allowed
        own_redis.stop()
        errors = [
            await store_error(s.limits_admit([rpm], [slots], [quota], "r2", LEASE)),
            await store_error(s.limits_settle([rpm], [quota], [slots], "r1")),
        ]
        own_redis.start()  # a fresh server: the scripts are loaded again, the state is gone
        return errors, await s.limits_admit([rpm], [slots], [quota], "r3", LEASE)

    errors, after = with_open(RedisStore(own_redis.url), body)
    for error in errors:
        assert error.startswith(f"Redis at redis://***@127.0.0.1:{own_redis.port}/0: ")
        assert "hunter2" not in error
    assert after.allowed and [s.remaining for s in after.limits] == [59, 1, 90]


# SQLite only.


def test_sqlite_purges_idle_limit_rows_on_admission_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "sp.db"
    idle = new_key("idle")

    async def body(s: Store) -> None:
        # a bucket full again after 1 ms, a lease of 50 ms, a period of 50 ms
        quota = Quota(idle, 10, 1, now_ms() + 50)
        verdict = await s.limits_admit([Rate(idle, 60_000, 1)], [Slots(idle, 1)], [quota], "r",
                                       0.05)  # fmt: skip
        assert verdict.allowed
        await asyncio.sleep(1.1)  # idle rows go with the first admission after a second
        assert (await s.limits_admit([Rate(new_key("busy"), 60, 1)], [], [], "r", LEASE)).allowed

    with_open(SqliteStore(str(path)), body)
    db = sqlite3.connect(path)
    tables = ("limit_rates", "limit_slots", "limit_quotas")
    rows = {table: db.execute(f"SELECT key FROM {table}").fetchall() for table in tables}
    db.close()
    assert len(rows["limit_rates"]) == 1 and rows["limit_rates"][0][0] != idle
    assert rows["limit_slots"] == [] and rows["limit_quotas"] == []


def test_sqlite_purge_keeps_up_with_a_row_per_request(tmp_path: Path) -> None:
    """The loop guard leaves a quota row per distinct request: thousands a second under load,
    all idle a window later. One purge a second must take them all, not a hundred."""
    path = tmp_path / "sp.db"

    async def body(s: Store) -> None:
        ends = now_ms() + 50
        quotas = [Quota(new_key(f"g{i}"), 10, 1, ends) for i in range(5000)]
        assert (await s.limits_admit([], [], quotas, "r", LEASE)).allowed
        await asyncio.sleep(1.1)
        assert (await s.limits_admit([Rate(new_key("busy"), 60, 1)], [], [], "r", LEASE)).allowed

    with_open(SqliteStore(str(path)), body)
    db = sqlite3.connect(path)
    (left,) = db.execute("SELECT count(*) FROM limit_quotas").fetchone()
    db.close()
    assert left == 0


def test_sqlite_limits_survive_a_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "sp.db")
    rpm = Rate(new_key("rpm"), 60, 30)

    async def admit(s: Store) -> Verdict:
        return await s.limits_admit([rpm], [], [], "r", LEASE)

    assert with_open(SqliteStore(path), admit).allowed
    second = with_open(SqliteStore(path), admit)
    assert second.allowed and second.limits[0].remaining == 0
    assert not with_open(SqliteStore(path), admit).allowed

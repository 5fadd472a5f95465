"""Who may pass the limits: rates (GCRA), concurrency slots and quotas, checked all at once.

`admit` checks every limit that applies to a request against the state its keys hold and
either admits it through all of them, returning the state to write, or refuses it and changes
nothing: a request refused by one limit never consumes another. `settle` corrects a request's
reservation afterwards (its actual cost is known only once it ran) and releases its slots.

- A `Rate` is a GCRA bucket (SEMANTICS.md §5.3) with a full minute of burst: a unit costs
  T = 60000 / per_minute ms of "theoretical arrival time" (TAT); a request of `cost` units is
  admitted iff its TAT, `max(tat, now) + T * cost`, is at most a minute ahead of now. So a
  60/min bucket admits 60 simultaneous requests, then one a second. A debit at settle may
  push the TAT further ahead (debt), which refuses later requests until it is paid off.
- `Slots` hold one lease (request id -> expiry) per admitted request until `settle` releases
  it; a lease past its expiry no longer counts (a dead gateway's requests free their slots).
- A `Quota` is a counter of what was used in a period (tokens, micro-dollars): admitted iff
  `used + cost <= limit`. The counter ends at `expires_ms`, the end of the period the caller
  chose; a counter whose period is over counts as 0.

Invariants: times are epoch milliseconds (floats) passed in; nothing here reads a clock.
GCRA never rounds: TATs and `now` are taken on a grid of 1/1024 ms (about 1 µs), and a
request's charge `T * cost` is rounded down onto it, so every sum and comparison is exact in
doubles (until the year 2248). Without it, the 106th of 106 simultaneous requests to a
106/min bucket was refused, its TAT a few rounding errors past the minute. Rounding the
charge down makes a bucket whose T is not on the grid a hair more generous: exactly L of
simultaneous requests pass up to L of about 7800/min, and at most 1 µs of refill per
request is gained above that. The Redis store runs the same arithmetic in Lua, in the same
order of operations, so both stores agree to the bit.
Keys must be distinct within a kind; a rate, a slots limit and a quota may share a name.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import field

from gateway.values import value

MINUTE_MS = 60_000.0
GRID = 1024  # rate arithmetic runs on multiples of 1/GRID ms (module docstring)
# Slots free when requests end, which no state predicts: a refused request is told to retry
# after this long (or sooner, when the earliest lease lapses sooner).
SLOTS_RETRY_MS = 1_000.0


class Kind(enum.Enum):
    RATE = "rate"
    SLOTS = "slots"
    QUOTA = "quota"


@value
class Rate:
    key: str  # names the bucket, e.g. "c:alice:rpm"
    per_minute: float  # the limit L; must be positive
    cost: float  # units this request takes; at settle: actual - reserved (negative: a credit)


@value
class Slots:
    key: str
    limit: int


@value
class Quota:
    key: str
    limit: float
    cost: float  # at settle: actual - reserved
    expires_ms: float  # the end of the counter's period


@value
class Tally:
    """What a quota's counter holds."""

    used: float
    expires_ms: float


@value
class State:
    """What the limits' keys hold; an absent key is a full bucket, no leases, nothing used."""

    tats: Mapping[str, float] = field(default_factory=dict)  # rate key -> TAT (ms, on the grid)
    leases: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # -> id -> expiry
    quotas: Mapping[str, Tally] = field(default_factory=dict)


@value
class Status:
    """One limit after the verdict (after this request if admitted, as it stands if not)."""

    key: str
    kind: Kind
    limit: float
    remaining: float  # whole units for rates and slots; never below 0
    reset: float  # seconds until full again (rates, quotas); 0 for slots, which cannot know


@value
class Verdict:
    allowed: bool
    limits: tuple[Status, ...]  # rates, then slots, then quotas, each in the order given
    retry_after: float = 0.0  # seconds until `blocked` would admit this cost; inf if `exceeds`
    blocked: Status | None = None  # the limit that refused: the one that frees up last
    exceeds: bool = False  # the request alone exceeds `blocked`'s limit: it can never pass


@value
class Decision:
    verdict: Verdict
    state: State | None  # the new state of the limits' keys; None when refused: write nothing


def interval(rate: Rate) -> float:
    """T: the ms of TAT one unit of `rate` costs."""
    return MINUTE_MS / rate.per_minute


def charge(t: float, cost: float) -> float:
    """The ms of TAT that `cost` units take at `t` ms each, rounded onto the grid toward 0."""
    ms = math.floor(t * abs(cost) * GRID) / GRID
    return -ms if cost < 0 else ms


def on_grid(ms: float) -> float:
    return math.floor(ms * GRID) / GRID


def admit(
    state: State,
    rates: Sequence[Rate],
    slots: Sequence[Slots],
    quotas: Sequence[Quota],
    request_id: str,
    lease_ms: float,
    now_ms: float,
) -> Decision:
    """Admit the request through every limit or through none. An admitted request takes a
    lease of `lease_ms` on each slots limit (renewed if it holds one there already).

    When refused, `blocked` is the first limit the request alone exceeds, else the refusing
    limit that frees up last (the first of those on a tie), and `retry_after` its wait.
    """
    check_distinct(rates, slots, quotas)
    now, grid_now = now_ms, on_grid(now_ms)
    checks: list[_Check] = []
    tats: dict[str, float] = {}
    leases: dict[str, dict[str, float]] = {}
    tallies: dict[str, Tally] = {}

    for rate in rates:
        limit = rate.per_minute
        if limit <= 0:
            status = Status(rate.key, Kind.RATE, limit, 0.0, 0.0)
            checks.append(_Check(status, None, math.inf, True))
            continue
        t, cost = interval(rate), charge(interval(rate), rate.cost)
        backlog = max(state.tats.get(rate.key, grid_now) - grid_now, 0.0)
        after = backlog + cost
        status = Status(rate.key, Kind.RATE, limit, _units(backlog, t), backlog / 1000)
        if after <= MINUTE_MS:
            tats[rate.key] = grid_now + after
            admitted = Status(rate.key, Kind.RATE, limit, _units(after, t), after / 1000)
            checks.append(_Check(status, admitted))
        else:
            checks.append(_Check(status, None, after - MINUTE_MS, cost > MINUTE_MS))

    for slot in slots:
        live = {r: e for r, e in state.leases.get(slot.key, {}).items() if e > now}
        others = len(live) - (1 if request_id in live else 0)
        free = float(max(slot.limit - len(live), 0))
        status = Status(slot.key, Kind.SLOTS, slot.limit, free, 0.0)
        if others < slot.limit:
            live[request_id] = now + lease_ms
            leases[slot.key] = live
            admitted = Status(slot.key, Kind.SLOTS, slot.limit, float(slot.limit - others - 1), 0.0)
            checks.append(_Check(status, admitted))
        elif slot.limit < 1:
            checks.append(_Check(status, None, math.inf, True))
        else:
            checks.append(_Check(status, None, min(SLOTS_RETRY_MS, min(live.values()) - now)))

    for quota in quotas:
        tally = state.quotas.get(quota.key)
        used = tally.used if tally is not None and tally.expires_ms > now else 0.0
        reset = max(quota.expires_ms - now, 0.0)
        status = Status(quota.key, Kind.QUOTA, quota.limit, _left(quota, used), reset / 1000)
        if used + quota.cost <= quota.limit:
            used = used + quota.cost
            tallies[quota.key] = Tally(used, quota.expires_ms)
            admitted = Status(quota.key, Kind.QUOTA, quota.limit, _left(quota, used), reset / 1000)
            checks.append(_Check(status, admitted))
        else:
            checks.append(_Check(status, None, reset, quota.cost > quota.limit))

    refused = [check for check in checks if check.admitted is None]
    if not refused:
        statuses = tuple(check.admitted or check.status for check in checks)
        return Decision(Verdict(True, statuses), State(tats, leases, tallies))
    statuses = tuple(check.status for check in checks)
    blocked = next((c for c in refused if c.exceeds), None) or max(
        refused, key=lambda c: c.retry_ms
    )
    retry_after = math.inf if blocked.exceeds else max(blocked.retry_ms, 0.0) / 1000
    return Decision(Verdict(False, statuses, retry_after, blocked.status, blocked.exceeds), None)


def settle(
    state: State,
    rates: Sequence[Rate],
    quotas: Sequence[Quota],
    slots: Sequence[Slots],
    request_id: str,
    now_ms: float,
) -> State:
    """The new state of these keys once a request is over: each rate and quota corrected by
    its `cost` (here: actual - reserved), never refused, and the request's leases released.

    A credit moves the TAT back, but never behind now (an idle bucket is simply full); a
    debit moves it ahead and may put the bucket in debt. A quota's counter moves by the
    delta, never below 0; a correction for a period that is over (`expires_ms` <= now) is
    not applied, so it is never charged to the next period. Expired leases go too.
    """
    check_distinct(rates, slots, quotas)
    now, grid_now = now_ms, on_grid(now_ms)
    tats: dict[str, float] = {}
    for rate in rates:
        if rate.per_minute > 0:
            backlog = max(state.tats.get(rate.key, grid_now) - grid_now, 0.0)
            tats[rate.key] = grid_now + max(backlog + charge(interval(rate), rate.cost), 0.0)
    tallies: dict[str, Tally] = {}
    for quota in quotas:
        tally = state.quotas.get(quota.key)
        used = tally.used if tally is not None and tally.expires_ms > now else 0.0
        if quota.expires_ms > now:
            tallies[quota.key] = Tally(max(used + quota.cost, 0.0), quota.expires_ms)
    leases = {
        slot.key: {
            r: e for r, e in state.leases.get(slot.key, {}).items() if e > now and r != request_id
        }
        for slot in slots
    }
    return State(tats, leases, tallies)


def check_distinct(rates: Sequence[Rate], slots: Sequence[Slots], quotas: Sequence[Quota]) -> None:
    """Raise ValueError if a key appears twice within one kind of limit."""
    for kind, keys in (("rate", [r.key for r in rates]), ("slots", [s.key for s in slots]),
                       ("quota", [q.key for q in quotas])):  # fmt: skip
        if len(set(keys)) != len(keys):
            raise ValueError(f"a {kind} key appears twice: {sorted(keys)}")


@value
class _Check:
    """One limit's part of the verdict."""

    status: Status  # as it stands
    admitted: Status | None  # after this request; None: this limit refuses it
    retry_ms: float = 0.0  # when it refuses: how long until it would admit the request
    exceeds: bool = False  # when it refuses: never


def _units(backlog: float, t: float) -> float:
    """Whole units a bucket `backlog` ms ahead of now can still take."""
    return float(max(math.floor((MINUTE_MS - backlog) / t), 0))


def _left(quota: Quota, used: float) -> float:
    return max(quota.limit - used, 0.0)

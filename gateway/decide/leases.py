"""How much of a busy limit a worker takes ahead of need (a lease), so that most requests are
admitted without a store call.

Pure: a limit's recent demand and what the store last said was left in; the units to take
beyond a request's own cost out.

A lease is an ordinary admission of more than the request needs: the store counts the leased
units as used at once, and the worker admits later requests from them locally. So a budget is
never exceeded, by any number of workers or replicas: every unit admitted was taken from the
store first. A rate is exact in the same way but for timing: a unit is charged when it is
leased and used later, so over an interval a rate may admit, beyond what it charged in that
interval, what the workers held at its start: at most a lease each, about `HORIZON` of the
worker's own rate (1/240 of a minute's limit, if one worker used all of it).

What a lease costs is the other way round: units one worker holds unused are refused to the
others until it uses them or gives them back: once the lease lapses (`LEASE_TTL` after its
last top-up; the sweep that returns it runs every `LEASE_TTL`), and at shutdown. A crashed
worker's lease is lost, which a rate makes good within a minute and a budget does not: at
most a quarter second of that worker's spending. Hence the bounds:

- a lease covers what the worker used in the last `HORIZON` seconds, never more than
  1/`SHARE` of what the store said was left: near its end a limit is leased in ever smaller
  parts, and
- a lease smaller than `MIN_REQUESTS` requests' cost is not taken at all: a limit that is not
  busy (or nearly spent) is checked in the store for each request, exactly as without leases.

Only rates (requests and tokens per minute) and budget quotas are leased: concurrency slots
belong to one request each, and a durable run's counters are checked per step.
"""

from __future__ import annotations

import math

HORIZON = 0.25  # seconds of this worker's recent use that a lease covers
SHARE = 8  # a lease takes at most 1/SHARE of what was left
MIN_REQUESTS = 16  # a lease covers at least this many requests' cost, or none is taken
LEASE_TTL = HORIZON  # seconds after which what is left of a lease goes back to the store


def leased_quota(key: str) -> bool:
    """Whether a quota (by its key, `decide.admission`) may be leased: a budget's, not the
    loop guard's counters. Every rate may be; concurrency slots may not."""
    return key.startswith("b/")


def lease_size(demand: float, cost: float, left: float) -> float:
    """The whole units to take beyond `cost`: the recent `demand` (units used in the last
    `HORIZON`), at most 1/SHARE of `left` (what the store last said remained); 0 when that
    covers fewer than MIN_REQUESTS requests of `cost`."""
    size = math.floor(min(demand, left / SHARE))
    return float(size) if size >= MIN_REQUESTS * max(cost, 1.0) else 0.0

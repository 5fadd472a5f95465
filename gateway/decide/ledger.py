"""The usage ledger's arithmetic: one `Entry` per request, made from its `Trace`, and the
additive counters that daily aggregates and reports are sums of.

An entry says where the answer came from (its outcome), what the provider billed (tokens and
cost, from the usage it reported), what the gateway saved (the usage of a stored answer served
instead of a live call) and what was wasted (tokens billed for nothing the client could use).

Outcomes: `live` (answered by an upstream call), `cache_hit`, `replay` (from the run journal
or an `Idempotency-Key` record), `attached` (a duplicate that shared its lead's call),
`failed` (anything else: an error, a refusal, a stream broken after its 200).

Wasted: the usage billed for a failed request (a stream cut after tokens were produced, its
usage estimated from the text that was streamed), and the usage of a request the loop guard
flagged as repeating past its threshold. A request the guard blocked cost nothing; it counts
in `loops` with the flagged ones.

Counters are integers (cost in micro-dollars) so that sums are exact in any order, across
processes and replicas. Latency and time to first byte are counted in logarithmic buckets
(each 10% wider than the previous), from which reports read percentiles to within 5%.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.config.schema import PriceSpec
from gateway.decide.cost import cost_usd
from gateway.model import Trace, Usage

OUTCOMES = ("live", "cache_hit", "replay", "attached", "failed")
GROUPS = ("client", "model", "target", "day", "run")
MICRO = 1_000_000
_RATIO = math.log(1.1)  # latency buckets: bucket i holds (1.1**(i-1), 1.1**i] ms; 0 holds <= 1
NONE = "-"  # a group value that was not known (no client, no target)


@dataclass(slots=True)  # not frozen: a frozen dataclass takes twice as long to build
class Entry:
    """One request in the ledger. Tokens are what the provider billed; cost in micro-USD."""

    ts: float  # epoch seconds when the request was over
    request_id: str
    client: str | None
    run: str | None
    model: str | None  # as the client asked for it
    target: str | None  # the deployment that answered (`cache`, `journal`: stored answers)
    attempts: int
    status: int
    outcome: str
    stream: bool
    error: str | None
    prompt: int
    cached: int
    completion: int
    reasoning: int
    cost: int
    saved: int
    saved_cost: int
    wasted: int
    wasted_cost: int
    latency_ms: float
    ttfb_ms: float | None
    estimated: bool  # the upstream reported no usage; its tokens were counted by the gateway
    fallback: bool
    loop: str | None  # "flagged" or "blocked" by the loop guard


def from_json(data: bytes) -> Entry:
    return Entry(**orjson.loads(data))


def outcome(trace: Trace) -> str:
    """Where the answer came from. Stored answers first: a replayed failure is a replay."""
    if trace.idempotency == "replayed" or trace.cache == "replay":
        return "replay"
    if trace.idempotency == "attached":
        return "attached"
    if trace.cache == "hit":
        return "cache_hit"
    if trace.status >= 400 or trace.error_code is not None or not trace.status:
        return "failed"
    return "live"


def entry(
    trace: Trace,
    ended: float,
    price: PriceSpec | None,
    saved_price: PriceSpec | None,
    wall: float,
) -> Entry:
    """The ledger entry of a finished request (`ended`: monotonic time when it was over,
    `wall`: the same moment in epoch seconds).
    `price`: of the deployment that answered; `saved_price`: of the one a stored answer would
    have come from (the model's first)."""
    result = outcome(trace)
    usage = trace.usage or Usage()
    cost = _micro(usage, price)
    saved = trace.saved if result in ("cache_hit", "replay", "attached") else None
    loop = "flagged" if "loop" in trace.flags else None
    if trace.error_code == "loop_detected":
        loop = "blocked"
    wasteful = wasted(result, trace)
    return Entry(
        ts=round(wall, 3),
        request_id=trace.request_id,
        client=trace.client,
        run=trace.run,
        model=trace.model,
        target=trace.target,
        attempts=len(trace.attempts),
        status=trace.status,
        outcome=result,
        stream=trace.stream,
        error=trace.error_code,
        prompt=usage.prompt_tokens,
        cached=usage.cached_tokens,
        completion=usage.completion_tokens,
        reasoning=usage.reasoning_tokens,
        cost=cost,
        saved=saved.total_tokens if saved is not None else 0,
        saved_cost=_micro(saved, saved_price) if saved is not None else 0,
        wasted=usage.total_tokens if wasteful else 0,
        wasted_cost=cost if wasteful else 0,
        latency_ms=_ms(ended - trace.started),
        ttfb_ms=None if trace.first_byte is None else _ms(trace.first_byte - trace.started),
        estimated=trace.estimated,
        fallback=trace.fallback,
        loop=loop,
    )


def wasted(outcome: str, trace: Trace) -> bool:
    """Whether the usage of a request was wasted: it failed, or it repeated in a loop."""
    return outcome == "failed" or "loop" in trace.flags


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _micro(usage: Usage, price: PriceSpec | None) -> int:
    return round(cost_usd(usage, price) * MICRO) if price is not None else 0


def bucket(ms: float) -> int:
    return 0 if ms <= 1.0 else math.ceil(math.log(ms) / _RATIO)


def counters(e: Entry) -> dict[str, int]:
    """What one entry adds to the aggregates it belongs to (only the counters it moves)."""
    c = {"requests": 1, e.outcome: 1, f"lat:{bucket(e.latency_ms)}": 1}
    for name, value in (("prompt", e.prompt), ("cached", e.cached),
                        ("completion", e.completion), ("reasoning", e.reasoning),
                        ("cost", e.cost), ("saved", e.saved), ("saved_cost", e.saved_cost),
                        ("wasted", e.wasted), ("wasted_cost", e.wasted_cost),
                        ("fallbacks", e.fallback), ("loops", e.loop is not None),
                        ("estimated", e.estimated)):  # fmt: skip
        if value:
            c[name] = int(value)
    if e.ttfb_ms is not None:
        c["ttfb"] = 1
        c[f"ttfb:{bucket(e.ttfb_ms)}"] = 1
    return c


def add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def day_of(ts: float) -> str:
    """The UTC day of an epoch time, `YYYY-MM-DD`."""
    return _day(int(ts // 86400))


@functools.lru_cache(maxsize=64)
def _day(n: int) -> str:  # formatting a date costs more than the rest of an entry
    return datetime.fromtimestamp(n * 86400, UTC).strftime("%Y-%m-%d")


DayKey = tuple[str, str, str, str]  # (day, client, model, target)


def day_key(e: Entry) -> DayKey:
    """The daily aggregate an entry counts in."""
    return (day_of(e.ts), e.client or NONE, e.model or NONE, e.target or NONE)


def group_value(e: Entry, by: str) -> str:
    if by == "day":
        return day_of(e.ts)
    value: Any = getattr(e, by)
    return str(value) if value else NONE


def fold(
    rows: Iterable[tuple[Mapping[str, str], Mapping[str, int]]], by: tuple[str, ...]
) -> dict[tuple[str, ...], dict[str, int]]:
    """Sum rows (their group values and counters) into groups of `by`."""
    out: dict[tuple[str, ...], dict[str, int]] = {}
    for values, c in rows:
        add(out.setdefault(tuple(values.get(g, NONE) for g in by), {}), c)
    return out


def percentile(c: Mapping[str, int], prefix: str, total: int, q: float) -> float | None:
    """The q-quantile (0..1) of a bucketed series, in ms: the geometric middle of the bucket
    holding it (within 5% of the true value)."""
    if total <= 0:
        return None
    buckets = sorted(
        (int(k[len(prefix) + 1 :]), v) for k, v in c.items() if k.startswith(prefix + ":")
    )
    rank, seen = q * total, 0
    for i, n in buckets:
        seen += n
        if seen >= rank:
            return 1.0 if i == 0 else round(math.exp((i - 0.5) * _RATIO), 2)
    return None


def _quantiles(c: Mapping[str, int], prefix: str, total: int) -> dict[str, float | None]:
    return {"p50": percentile(c, prefix, total, 0.5), "p95": percentile(c, prefix, total, 0.95)}


def summary(c: Mapping[str, int]) -> dict[str, Any]:
    """A report row from summed counters: spent, saved and wasted tokens and cost, and how
    well it served (success rate, fallbacks, latency and time to first byte, cost/request)."""
    requests = c.get("requests", 0)
    tokens = c.get("prompt", 0) + c.get("completion", 0)
    failed = c.get("failed", 0)
    return {
        "requests": requests,
        "outcomes": {o: c.get(o, 0) for o in OUTCOMES},
        "success_rate": round((requests - failed) / requests, 4) if requests else None,
        "prompt_tokens": c.get("prompt", 0),
        "cached_tokens": c.get("cached", 0),
        "completion_tokens": c.get("completion", 0),
        "reasoning_tokens": c.get("reasoning", 0),
        "total_tokens": tokens,
        "cost_usd": c.get("cost", 0) / MICRO,
        "saved_tokens": c.get("saved", 0),
        "saved_usd": c.get("saved_cost", 0) / MICRO,
        "wasted_tokens": c.get("wasted", 0),
        "wasted_usd": c.get("wasted_cost", 0) / MICRO,
        "estimated_requests": c.get("estimated", 0),
        "fallbacks": c.get("fallbacks", 0),
        "loops": c.get("loops", 0),
        "latency_ms": _quantiles(c, "lat", requests),
        "ttfb_ms": _quantiles(c, "ttfb", c.get("ttfb", 0)),
        "cost_per_request_usd": round(c.get("cost", 0) / MICRO / requests, 8) if requests else None,
    }

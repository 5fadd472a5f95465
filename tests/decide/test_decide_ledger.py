"""The usage ledger's arithmetic: entries from traces, counters, percentiles, report queries."""

from __future__ import annotations

import calendar
import random
import time

import orjson
import pytest

from gateway.config.schema import PriceSpec
from gateway.decide import ledger
from gateway.decide.reports import daily_rows, entry_rows, parse_query, report
from gateway.errors import InvalidRequest
from gateway.model import Attempt, Trace, Usage

PRICE = PriceSpec(input=2.0, cached_input=0.5, output=8.0)
NOW = calendar.timegm((2026, 11, 26, 15, 30, 0, 0, 0, 0))
MIDNIGHT = calendar.timegm((2026, 11, 26, 0, 0, 0, 0, 0, 0))


def trace(**fields: object) -> Trace:
    t = Trace("r1", "POST", "/v1/chat/completions", 100.0, client="alice", model="m")
    for name, value in fields.items():
        setattr(t, name, value)
    return t


LIVE = Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500, cached_tokens=400)


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        pytest.param({"status": 200, "usage": LIVE}, "live", id="live"),
        pytest.param({"status": 200, "cache": "hit"}, "cache_hit", id="cache hit"),
        pytest.param({"status": 200, "cache": "miss", "usage": LIVE}, "live", id="cache miss"),
        pytest.param({"status": 200, "cache": "replay"}, "replay", id="run replay"),
        pytest.param({"status": 200, "idempotency": "replayed"}, "replay", id="idempotent replay"),
        pytest.param({"status": 400, "idempotency": "replayed"}, "replay", id="replayed 400"),
        pytest.param({"status": 200, "idempotency": "attached"}, "attached", id="attached"),
        pytest.param({"status": 503, "error_code": "upstream_error"}, "failed", id="5xx"),
        pytest.param({"status": 200, "error_code": "upstream_stream_cut"}, "failed", id="cut"),
        pytest.param({"status": 429, "error_code": "rate_limit_exceeded"}, "failed", id="refused"),
        pytest.param({"status": 0}, "failed", id="never answered"),
    ],
)
def test_outcome(fields: dict[str, object], outcome: str) -> None:
    assert ledger.outcome(trace(**fields)) == outcome


def test_a_live_answer_costs_its_usage_at_its_deployments_price() -> None:
    t = trace(status=200, usage=LIVE, target="p/gpt", first_byte=100.02)
    e = ledger.entry(t, 100.25, PRICE, None, wall=NOW)
    # 600 uncached at $2, 400 cached at $0.50, 500 out at $8 per million
    assert e.cost == 600 * 2 + 400 * 0.5 + 500 * 8
    assert (e.prompt, e.cached, e.completion, e.outcome) == (1000, 400, 500, "live")
    assert (e.saved, e.wasted, e.latency_ms, e.ttfb_ms) == (0, 0, 250.0, 20.0)
    assert ledger.from_json(orjson.dumps(e)) == e


def test_a_stored_answer_saves_what_it_would_have_cost_and_spends_nothing() -> None:
    t = trace(status=200, cache="hit", target="cache", saved=LIVE)
    e = ledger.entry(t, 100.001, None, PRICE, wall=NOW)
    assert (e.prompt, e.completion, e.cost) == (0, 0, 0)
    assert (e.saved, e.saved_cost) == (1500, 5400)


def test_a_failed_request_wastes_what_was_billed_for_it() -> None:
    cut = Usage(prompt_tokens=100, completion_tokens=40, total_tokens=140)
    t = trace(status=200, error_code="upstream_stream_cut", usage=cut, estimated=True)
    e = ledger.entry(t, 101.0, PRICE, None, wall=NOW)
    assert (e.outcome, e.wasted, e.wasted_cost, e.estimated) == ("failed", 140, e.cost, True)
    assert e.cost == 100 * 2 + 40 * 8


def test_loops_flagged_waste_their_tokens_and_blocked_ones_cost_nothing() -> None:
    flagged = ledger.entry(
        trace(status=200, usage=LIVE, flags=["loop"]), 101, PRICE, None, wall=NOW
    )
    blocked = ledger.entry(
        trace(status=429, error_code="loop_detected"), 101, PRICE, None, wall=NOW
    )
    assert (flagged.loop, flagged.wasted, flagged.outcome) == ("flagged", 1500, "live")
    assert (blocked.loop, blocked.wasted, blocked.cost) == ("blocked", 0, 0)
    assert ledger.counters(flagged)["loops"] == ledger.counters(blocked)["loops"] == 1


def test_counters_of_many_entries_sum_exactly_and_give_percentiles_within_five_percent() -> None:
    rng = random.Random(7)
    latencies = [rng.lognormvariate(5, 1) for _ in range(5000)]
    total: dict[str, int] = {}
    for i, ms in enumerate(latencies):
        t = trace(
            status=200, usage=LIVE, attempts=[Attempt("p/gpt", "ok", ms)], fallback=i % 10 == 0
        )
        ledger.add(total, ledger.counters(ledger.entry(t, 100 + ms / 1000, PRICE, None, wall=NOW)))
    s = ledger.summary(total)
    assert (s["requests"], s["total_tokens"], s["fallbacks"]) == (5000, 5000 * 1500, 500)
    assert s["cost_usd"] == pytest.approx(5000 * 5400 / 1e6)
    ordered = sorted(latencies)
    for q, key in ((0.5, "p50"), (0.95, "p95")):
        assert s["latency_ms"][key] == pytest.approx(ordered[int(q * 5000)], rel=0.05)


def test_query_defaults_to_today_by_client_and_model_from_the_daily_aggregates() -> None:
    q = parse_query({}, NOW)
    assert (q.start, q.end, q.by, q.daily, q.days) == (
        MIDNIGHT, NOW, ("client", "model"), True, ("2026-11-26", "2026-11-26"))  # fmt: skip


@pytest.mark.parametrize(
    ("params", "start", "end", "daily"),
    [
        ({"since": "7d"}, MIDNIGHT - 6 * 86400, NOW, True),
        ({"since": "12h"}, NOW - 12 * 3600, NOW, False),
        (
            {"from": "2026-11-20", "to": "2026-11-21"},
            MIDNIGHT - 6 * 86400,
            MIDNIGHT - 4 * 86400,
            True,
        ),
        ({"from": "2026-11-26T10:00:00Z"}, MIDNIGHT + 36000, NOW, False),
        (
            {"from": str(MIDNIGHT), "to": "2026-11-26T12:00:00+00:00"},
            MIDNIGHT,
            MIDNIGHT + 43200,
            False,
        ),
        ({"since": "1d", "run": "job-1"}, MIDNIGHT, NOW, False),
        ({"since": "1d", "group_by": "day,run"}, MIDNIGHT, NOW, False),
    ],
)
def test_query_times(params: dict[str, str], start: float, end: float, daily: bool) -> None:
    q = parse_query(params, NOW)
    assert (q.start, q.end, q.daily) == (start, end, daily)


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        ({"since": "week"}, "since", "30m, 12h, 7d"),
        ({"since": "0d"}, "since", "at least 1"),
        ({"from": "yesterday"}, "from", "a UTC day (2026-11-26)"),
        ({"from": "2026-13-45"}, "from", "not a date"),
        ({"from": "2026-11-27", "to": "2026-11-26"}, "from", "must be before"),
        ({"since": "1h", "from": "2026-11-26"}, "since", "not both"),
        ({"group_by": "client,colour"}, "group_by", "client, model, target, day, run"),
        ({"clients": "alice"}, "clients", "unknown parameter"),
    ],
)
def test_bad_queries_say_what_to_fix(params: dict[str, str], param: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_query(params, NOW)
    assert caught.value.param == param
    assert says in caught.value.message


def _entries() -> list[ledger.Entry]:
    out = []
    for i in range(40):
        client, model = ("alice", "bob")[i % 2], ("m", "n")[i % 4 // 2]
        run = f"alice/job-{i % 3}" if i % 2 == 0 else None
        t = trace(status=200, usage=LIVE, client=client, model=model, target="p/gpt", run=run)
        out.append(ledger.entry(t, 100.1, PRICE, None, wall=MIDNIGHT - 86400 * (i % 2) + i))
    return out


def test_entries_and_daily_aggregates_give_the_same_report() -> None:
    entries = _entries()
    daily: dict[ledger.DayKey, dict[str, int]] = {}
    for e in entries:
        ledger.add(daily.setdefault(ledger.day_key(e), {}), ledger.counters(e))
    q = parse_query({"since": "2d", "group_by": "day,client,model"}, NOW)
    from_entries = report(q, entry_rows(q, entries), "entries")
    from_daily = report(q, daily_rows(q, list(daily.items())), "daily")
    assert from_entries["groups"] == from_daily["groups"]
    assert from_entries["total"]["requests"] == 40
    assert [(g["day"], g["client"], g["requests"]) for g in from_daily["groups"]] == [
        ("2026-11-25", "bob", 10), ("2026-11-25", "bob", 10),
        ("2026-11-26", "alice", 10), ("2026-11-26", "alice", 10)]  # fmt: skip


def test_filters_and_run_grouping() -> None:
    q = parse_query({"since": "2d", "client": "alice", "run": "job-1", "group_by": "run"}, NOW)
    r = report(q, entry_rows(q, _entries()), "entries")
    assert [(g["run"], g["requests"]) for g in r["groups"]] == [("alice/job-1", 6)]
    assert r["filters"] == {"client": "alice", "run": "job-1"}
    q = parse_query({"since": "1d", "model": "n"}, NOW)
    assert report(q, entry_rows(q, _entries()), "entries")["total"]["requests"] == 10


def test_time_cut_of_entries() -> None:
    q = parse_query({"from": str(MIDNIGHT + 10), "to": str(MIDNIGHT + 20)}, NOW)
    kept = [g for _, g in entry_rows(q, _entries())]
    assert len(kept) == 5  # entries at midnight + 10, 12, 14, 16, 18


def test_day_of_is_utc() -> None:
    assert ledger.day_of(MIDNIGHT - 1) == "2026-11-25"
    assert ledger.day_of(MIDNIGHT) == time.strftime("%Y-%m-%d", time.gmtime(MIDNIGHT))

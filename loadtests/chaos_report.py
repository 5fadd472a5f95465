"""What the chaos run saw, per phase: pure functions from the client's outcomes, the mocks'
counters and the gateway's log to the JSON-able summary and its markdown table.

    requests, success     as the client saw them (`chaos_load.check_*`)
    p50 / p99             latency of the successful requests, from their due time
    upstream calls        both mocks' `/_mock/stats` totals at the phase's boundaries: calls
                          that *arrived* in the phase's window, over the phase's requests
    attempts              `x-savepoint-attempts` of each answer: upstream attempts made for
                          the requests of the phase, wherever they landed in time
    via fallback          answers with `x-savepoint-fallback: true`
    attempt outcomes      the gateway's access log, joined on the request id: how each of
                          those attempts ended (`primary/mock-gpt first_byte_timeout`...)
    breaker               the primary's state from `/admin/breakers` as the phase began,
                          and the `"event": "breaker"` lines placed in the phase by their time
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from chaos_load import Boundary, LoadRun, Outcome, Phase
from openloop import percentiles

PRIMARY, FALLBACK = "primary/mock-gpt", "fallback/mock-gpt"
_SAMPLES = 5  # access-log lines of failed requests kept per phase


def parse_log(text: str) -> list[dict[str, Any]]:
    """The gateway's JSON lines (access log and events); other lines are skipped."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def summarize(
    run: LoadRun, phases: Sequence[Phase], log: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    by_id = {r["request_id"]: r for r in log if "request_id" in r}
    events = [r for r in log if r.get("event") in ("breaker", "cooldown")]
    out = []
    for i, phase in enumerate(phases):
        mine = [o for o in run.outcomes if o.phase == i]
        start, end = run.boundaries[i], run.boundaries[i + 1]
        summary = _phase(phase, mine, start, end, by_id, _events_in(events, start, end))
        summary["switch_ms"] = round(run.switch_seconds[i] * 1000, 3)
        out.append(summary)
    return out


def _phase(
    phase: Phase,
    outcomes: list[Outcome],
    start: Boundary,
    end: Boundary,
    by_id: dict[str, dict[str, Any]],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    n = len(outcomes)
    ok = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    primary = end.primary_total - start.primary_total
    fallback = end.fallback_total - start.fallback_total
    lines = [by_id.get(o.request_id or "") for o in outcomes]
    logged, ended = _attempts(line for line in lines if line is not None)
    return {
        "name": phase.name,
        "primary_knobs": phase.knobs,
        "seconds": phase.seconds,
        "breaker_at_start": start.breaker,
        "requests": n,
        "ok": len(ok),
        "success_rate": round(len(ok) / n, 4) if n else 0.0,
        "by_kind": {
            kind: {"requests": len(group), "ok": sum(o.error is None for o in group)}
            for kind, group in (
                ("stream", [o for o in outcomes if o.stream]),
                ("whole", [o for o in outcomes if not o.stream]),
            )
        },
        "errors": dict(Counter(_kind(o) + o.error for o in failed if o.error)),
        "latency_ms": percentiles([o.latency for o in ok]),
        "late_ms": percentiles([o.late for o in outcomes if o.error != "unfinished"]),
        "upstream": {
            "primary": primary,
            "fallback": fallback,
            "per_request": round((primary + fallback) / n, 3) if n else 0.0,
            "primary_per_request": round(primary / n, 3) if n else 0.0,
            "fallback_per_request": round(fallback / n, 3) if n else 0.0,
        },
        "attempts_per_request": round(sum(o.attempts or 0 for o in outcomes) / n, 3) if n else 0.0,
        "via_fallback": sum(o.fallback for o in outcomes),
        "served_by": dict(Counter(o.target or "none" for o in ok)),
        "log": {
            "found": sum(line is not None for line in lines),
            "attempts": logged,
            "attempt_outcomes": ended,
        },
        "breaker": [
            {"at_s": round(e["ts"] - start.wall, 3), **{k: e[k] for k in e if k != "ts"}}
            for e in events
        ],
        "failed_samples": [
            {"client": _kind(o) + (o.error or ""), "gateway": by_id.get(o.request_id or "")}
            for o in failed[:_SAMPLES]
        ],
    }


def _kind(o: Outcome) -> str:
    return "stream: " if o.stream else "whole: "


def _attempts(lines: Iterable[dict[str, Any]]) -> tuple[int, dict[str, int]]:
    """Upstream attempts the gateway logged, and how many ended how (`target outcome`).

    A line without `attempts` is a request with one attempt and no fallback: a success, a
    stream that broke after the commit point (`ok, then <error>`), or a failure given up on,
    whose line names no target (`(no target logged) <error>`).
    """
    total, ended = 0, Counter[str]()
    for line in lines:
        attempts = line.get("attempts")
        if attempts is None:
            target, error = line.get("target"), line.get("error")
            if target:
                attempts = [[target, f"ok, then {error}" if error else "ok", 0]]
            else:
                attempts = [["(no target logged)", error or "?", 0]]
        total += len(attempts)
        ended.update(f"{target} {outcome}" for target, outcome, _ms in attempts)
    return total, dict(sorted(ended.items()))


def _events_in(
    events: list[dict[str, Any]], start: Boundary, end: Boundary
) -> list[dict[str, Any]]:
    return [e for e in events if start.wall <= e.get("ts", 0) < end.wall]


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    head = (
        f"Chaos run: {s['rate']:g} requests/s open loop, {s['stream_share']:.0%} streamed; "
        f"primary `timeouts.first_byte` {s['first_byte']:g} s"
        + (f", `timeouts.total` {s['primary_total']:g} s" if s["primary_total"] else "")
        + f", `breakers.reset_timeout` {s['reset_timeout']:g} s"
    )
    rows = [
        head,
        "",
        "| phase | s | primary | requests | success | p50 ms | p99 ms "
        "| upstream calls / request: mocks (primary + fallback) "
        "| attempts / request (x-savepoint-attempts) | via fallback "
        "| primary's breaker: at start; changes (s into phase) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for p in result["phases"]:
        up = p["upstream"]
        changes = _breaker(p["breaker"])
        rows.append(
            f"| {p['name']} | {p['seconds']:g} | {p['primary_knobs'] or 'healthy'} "
            f"| {p['requests']} | {_pct(p['success_rate'])} | {p['latency_ms']['p50']:.1f} "
            f"| {p['latency_ms']['p99']:.1f} | {up['per_request']:.2f} "
            f"({up['primary_per_request']:.2f} + {up['fallback_per_request']:.2f}) "
            f"| {p['attempts_per_request']:.2f} | {p['via_fallback']} "
            f"| {p['breaker_at_start']}{'; ' + changes if changes else ''} |"
        )
    failures = [p for p in result["phases"] if p["errors"]]
    if failures:
        rows += ["", "Client-visible failures:"]
        for p in failures:
            kinds = ", ".join(f"{n} x {e}" for e, n in sorted(p["errors"].items()))
            rows.append(f"- {p['name']}: {kinds}")
            for sample in p["failed_samples"][:2]:
                rows.append(f"  - gateway log: `{orjson.dumps(sample['gateway']).decode()}`")
    if result["notes"]:
        rows += ["", *(f"Note: {note}" for note in result["notes"])]
    return "\n".join(rows)


def _pct(rate: float) -> str:
    return "100%" if rate == 1.0 else f"{100 * rate:.2f}%"


def _breaker(events: list[dict[str, Any]], shown: int = 4) -> str:
    changes = [
        f"{e['to']} {e['at_s']:.2f}"
        for e in events
        if e.get("event") == "breaker" and e.get("target") == PRIMARY
    ]
    more = f" … (+{len(changes) - shown})" if len(changes) > shown else ""
    return ", ".join(changes[:shown]) + more


def notes(phases: list[dict[str, Any]], late_limit_ms: float = 10.0) -> list[str]:
    out = []
    behind = [p["name"] for p in phases if p["late_ms"]["p99"] > late_limit_ms]
    if behind:
        out.append(
            f"the load generator fell behind its schedule (p99 lateness above "
            f"{late_limit_ms:g} ms) in: {', '.join(behind)}; latencies there include it"
        )
    missing = [p["name"] for p in phases if p["log"]["found"] < p["requests"]]
    if missing:
        out.append(f"some requests have no access-log line in: {', '.join(missing)}")
    return out

"""What `bench.py`'s measurements mean: ratios and added latency against the baselines of the
same run, the aims of issue 6 (met or MISSED), notes on numbers something else limited, and
the markdown. Pure functions over the result dict that `bench.py` saves as JSON:

    scenarios[scenario][target]["saturation"]    the best wrk run (all of them in "rounds")
    scenarios[scenario][target]["latency"]       the open-loop report, or {"skipped": why}
    scenarios["stream-paced"][target]            {"unpaced": report, "paced": report}
    scenarios["held"][target]                    completed, seconds, RSS at rest and peak
    chaos["phases"]                              chaos.py's phases, success rate each

"Added" is a target's percentile minus the direct call's same percentile, same rate, same
run: a difference of percentiles, not a percentile of differences (noisy at p99).
"""

from __future__ import annotations

from typing import Any

SAVEPOINT = ("savepoint-sqlite", "savepoint-redis")
AIM_OVER_PASSTHROUGH = 0.70
AIM_OVER_LITELLM = 50.0
AIM_ADDED_P50_MS, AIM_ADDED_P99_MS = 1.0, 3.0
AIM_TTFB_P50_MS = 1.0
AIM_HELD_RSS_MB = 200.0
_NOT_CPU_BOUND = 90.0  # % of one CPU under which a saturated process was not the bottleneck
_FOREIGN_LOAD = 15.0  # % of a CPU used by processes that are not ours


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def _rps(result: dict[str, Any], scenario: str) -> dict[str, float]:
    return {
        name: m["saturation"]["rps"]
        for name, m in result["scenarios"].get(scenario, {}).items()
        if "saturation" in m
    }


def _lat(m: dict[str, Any]) -> dict[str, Any] | None:
    lat = m.get("latency")
    return lat if lat and "skipped" not in lat else None


def _added(own: dict[str, Any], base: dict[str, Any], measure: str) -> dict[str, float]:
    return {q: round(own[measure][q] - base[measure][q], 3) for q in ("p50", "p90", "p99")}


def compare(result: dict[str, Any]) -> dict[str, Any]:
    scenarios = result["scenarios"]
    chat, floor = _rps(result, "chat"), _rps(result, "chat").get("passthrough", 0.0)
    out: dict[str, Any] = {"rps": {s: _rps(result, s) for s in scenarios if s in _SATURATED}}
    out["over_passthrough_chat"] = {
        s: {n: ratio(r, floor) for n, r in rps.items() if n != "direct"}
        for s, rps in out["rps"].items()
    }
    out["over_litellm_chat"] = {
        n: ratio(chat[n], chat["litellm"]) for n in SAVEPOINT if n in chat and "litellm" in chat
    }
    cpu = {
        s: {n: m["saturation"]["cpu_us_per_request"] for n, m in t.items() if "saturation" in m}
        for s, t in scenarios.items()
        if s in _SATURATED
    }
    out["cpu_us_per_request"] = cpu
    added: dict[str, dict[str, Any]] = {}
    for s in ("chat", "stream"):
        direct = _lat(scenarios.get(s, {}).get("direct", {}))
        for name, m in scenarios.get(s, {}).items():
            own = _lat(m)
            if name != "direct" and own and direct:
                added.setdefault(s, {})[name] = {
                    "first_byte": _added(own, direct, "first_byte_ms"),
                    "end": _added(own, direct, "end_ms"),
                }
    out["added_ms"] = added
    paced: dict[str, Any] = {}
    chunks = result["settings"]["chunks"]
    base = scenarios.get("stream-paced", {}).get("direct", {})
    for name, m in scenarios.get("stream-paced", {}).items():
        if name == "direct" or "paced" not in m or "paced" not in base:
            continue
        first = _added(m["paced"], base["paced"], "first_byte_ms")
        end = _added(m["paced"], base["paced"], "end_ms")
        cpu_more = m["paced"]["cpu_us_per_request"] - m["unpaced"]["cpu_us_per_request"]
        paced[name] = {
            "added_first_byte_ms": first,
            "added_end_ms": end,
            # What forwarding one chunk adds, in µs, at p50: chunks arrive one by one, so the
            # last byte's added delay is the last chunk's (and the stream's end). Not the
            # first byte's: Savepoint holds a role-only first event back until the first
            # content event, one chunk interval later, so that a stream that breaks before
            # its first token can still be retried.
            "per_chunk_us": round(1000 * end["p50"], 1),
            # The target's CPU time for a paced stream beyond an unpaced one, per chunk.
            "cpu_us_per_chunk": round(cpu_more / chunks, 1),
        }
    out["paced"] = paced
    return out


_SATURATED = ("chat", "stream", "cache-hit", "idem-replay")


def aims(result: dict[str, Any]) -> list[str]:
    c, sc, rate = result["comparison"], result["scenarios"], result["settings"]["rate"]
    out = []

    def aim(text: str, met: bool) -> None:
        out.append(f"{text}: {'met' if met else 'MISSED'}")

    for name in SAVEPOINT:
        r = c["over_passthrough_chat"].get("chat", {}).get(name)
        if r is not None:
            aim(
                f"chat, {name} / pass-through requests/s = {r:.2f} (aim >= {AIM_OVER_PASSTHROUGH})",
                r >= AIM_OVER_PASSTHROUGH,
            )
        if name in c["over_litellm_chat"]:
            r = c["over_litellm_chat"][name]
            aim(
                f"chat, {name} / litellm requests/s = {r:.1f} (aim >= {AIM_OVER_LITELLM:g})",
                r >= AIM_OVER_LITELLM,
            )
        added = c["added_ms"].get("chat", {}).get(name)
        if added:
            e = added["end"]
            aim(
                f"chat at {rate}/s, {name} adds p50 {e['p50']:+.2f} ms, p99 {e['p99']:+.2f} ms "
                f"(aim < {AIM_ADDED_P50_MS:g} / < {AIM_ADDED_P99_MS:g} ms)",
                e["p50"] < AIM_ADDED_P50_MS and e["p99"] < AIM_ADDED_P99_MS,
            )
        added = c["added_ms"].get("stream", {}).get(name)
        if added:
            f = added["first_byte"]
            aim(
                f"stream at {rate}/s, {name} adds to the first byte p50 {f['p50']:+.2f} ms "
                f"(aim < {AIM_TTFB_P50_MS:g} ms)",
                f["p50"] < AIM_TTFB_P50_MS,
            )
        for s in ("cache-hit", "idem-replay"):
            r = c["over_passthrough_chat"].get(s, {}).get(name)
            if r is not None:
                aim(f"{s}, {name} / pass-through chat requests/s = {r:.2f} (aim >= 1)", r >= 1.0)
        h = sc.get("held", {}).get(name)
        if h:
            aim(
                f"held, {name}: {h['completed']:,} of {h['streams']:,} streams completed, peak "
                f"RSS {h['rss_peak_mb']:.0f} MB (aim: all, < {AIM_HELD_RSS_MB:g} MB)",
                h["completed"] == h["streams"] and h["rss_peak_mb"] < AIM_HELD_RSS_MB,
            )
    for name, p in c["paced"].items():
        out.append(
            f"stream-paced, {name}: {p['per_chunk_us']:+.1f} µs to forward a chunk "
            f"(latency), {p['cpu_us_per_chunk']:+.1f} µs of CPU per chunk (no aim)"
        )
    phases = result["chaos"].get("phases", [])
    if phases:
        worst = min(p["success_rate"] for p in phases)
        aim(
            f"chaos (savepoint-sqlite): lowest phase success {100 * worst:.2f}% (aim 100% in "
            "every phase)",
            worst == 1.0,
        )
    return out


def notes(result: dict[str, Any]) -> list[str]:
    """Warnings about numbers that something other than the target limited."""
    s, out = result["settings"], []
    sut, load = s["sut_cpu"], s["load_cpu"]
    if max(s["cpu_busy_before_pct"], default=0) > _FOREIGN_LOAD:
        out.append(
            f"other processes kept the machine busy before the run "
            f"({_cpus(s['cpu_busy_before_pct'], load)}): every number may be noisy."
        )
    for scenario, targets in result["scenarios"].items():
        rps = {n: m["saturation"]["rps"] for n, m in targets.items() if "saturation" in m}
        proxies = [r for n, r in rps.items() if n != "direct"]
        if "direct" in rps and proxies and rps["direct"] < max(proxies):
            out.append(
                f"{scenario}: direct saturated at {rps['direct']:,.0f} requests/s, below a "
                "proxy in front of it: the mock shares its CPU with wrk and is the limit "
                "there; compare with the pass-through."
            )
        for name, m in targets.items():
            sat = m.get("saturation")
            if sat and name != "direct":
                if sat["sut_cpu_pct"] < _NOT_CPU_BOUND:
                    out.append(
                        f"{scenario}/{name}: used {sat['sut_cpu_pct']:.0f}% of its CPU at "
                        f"saturation ({_cpus(sat['cpu_busy_pct'], load)}): something else "
                        "limited it; its requests/s is a lower bound."
                    )
                other = sat["cpu_busy_pct"][sut] - sat["sut_cpu_pct"] if sut is not None else 0
                if other > _FOREIGN_LOAD:
                    out.append(
                        f"{scenario}/{name}: other processes used ~{other:.0f}% of CPU "
                        f"{sut} during its best saturation run: noisy."
                    )
            for what, lat in _latencies(m):
                if "skipped" in lat:
                    out.append(f"{scenario}/{name}{what}: latency not measured: {lat['skipped']}.")
                elif lat.get("behind"):
                    out.append(
                        f"{scenario}/{name}{what}: the load generator fell behind (lateness "
                        f"p99 {lat['lateness_ms']['p99']:.2f} ms, sent "
                        f"{lat['sent_rate']:.0f}/s); its latencies include that."
                    )
            if "skipped" in m:
                out.append(f"{scenario}/{name}: not measured: {m['skipped']}.")
    for name, why in result["missing"].items():
        out.append(f"{name}: {why}.")
    return out


def _latencies(m: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", m["latency"])] if "latency" in m else []
    return found + [(f" ({k})", m[k]) for k in ("unpaced", "paced") if k in m]


def _cpus(busy: list[float], load_cpu: int | None) -> str:
    return ", ".join(
        f"CPU {i}{' (mock + load)' if i == load_cpu else ''} {pct:.0f}% busy"
        for i, pct in enumerate(busy)
    )


def _pair(p: dict[str, float] | None, sign: str = "") -> str:
    return f"{p['p50']:{sign}.2f} / {p['p99']:{sign}.2f}" if p else "-"


def markdown(result: dict[str, Any]) -> str:
    s, c, sc = result["settings"], result["comparison"], result["scenarios"]
    names = result["targets"]
    pinning = (
        f"the system under test pinned to CPU {s['sut_cpu']}, mock and load to CPU {s['load_cpu']}"
        if s["sut_cpu"] is not None
        else "NOT pinned (one CPU)"
    )
    litellm = (
        f"litellm {result['litellm_version'] or '(version unknown)'}"
        if "litellm" in names
        else "litellm: not installed"
    )
    head = "| | " + " | ".join(names) + " |"
    rule = "|---|" + "--:|" * len(names)
    lines = [
        f"## Savepoint benchmark ({result['started']})"
        + (" (smoke: numbers mean nothing)" if s["smoke"] else ""),
        "",
        f"{s['duration']:g} s per measurement, best of {s['rounds']} saturation runs "
        f"(wrk -t1 -c{s['connections']}), latency at {s['rate']}/s open loop; {pinning}; "
        f"Savepoint: one worker, production policy; {litellm}.",
        "",
        "### Saturation, requests/s (CPU µs per request)",
        "",
        head,
        rule,
    ]
    for scenario, rps in c["rps"].items():
        cells = [
            f"{rps[n]:,.0f} ({c['cpu_us_per_request'][scenario][n]:.0f})" if n in rps else "-"
            for n in names
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    for scenario in ("chat", "cache-hit", "idem-replay"):
        ratios = c["over_passthrough_chat"].get(scenario, {})
        if ratios:
            cells = [f"{ratios[n]:.2f}" if n in ratios else "-" for n in names]
            lines.append(f"| {scenario} / pass-through chat | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Latency at {s['rate']}/s, ms, p50 / p99 (added over direct)",
        "",
        head,
        rule,
    ]
    rows = [
        ("chat", "end", "chat, last byte"),
        ("stream", "first_byte", "stream, first byte"),
        ("stream", "end", "stream, last byte"),
        ("cache-hit", "end", "cache-hit"),
        ("idem-replay", "end", "idem-replay"),
    ]
    for scenario, measure, label in rows:
        cells = []
        for n in names:
            m = sc.get(scenario, {}).get(n)
            lat = _lat(m) if m else None
            cell = _pair(lat[f"{measure}_ms"]) if lat else "-"
            add = c["added_ms"].get(scenario, {}).get(n, {}).get(measure)
            cells.append(f"{cell} ({_pair(add, '+')})" if add else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if sc.get("stream-paced"):
        lines += [
            "",
            f"### Streams paced by the mock ({s['chunk_delay'] * 1000:g} ms per chunk, "
            f"{s['chunks']} chunks, {s['paced_rate']}/s), ms p50 / p99",
            "",
            "| target | first byte | last byte | added first byte | added last byte "
            "| chunk forwarding delay, µs | CPU µs per request: unpaced / paced "
            "| CPU µs per chunk |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for n, m in sc["stream-paced"].items():
            if "paced" not in m:
                lines.append(f"| {n} | not measured | | | | | | |")
                continue
            p, d = m["paced"], c["paced"].get(n)
            cells = [_pair(p["first_byte_ms"]), _pair(p["end_ms"])]
            if d:
                cells += [_pair(d["added_first_byte_ms"], "+"), _pair(d["added_end_ms"], "+")]
                cells.append(f"{d['per_chunk_us']:+.1f}")
            else:  # direct: the baseline of "added"
                cells += ["-", "-", "-"]
            cells.append(
                f"{m['unpaced']['cpu_us_per_request']:.0f} / {p['cpu_us_per_request']:.0f}"
            )
            cells.append(f"{d['cpu_us_per_chunk']:+.1f}" if d else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if sc.get("held"):
        lines += [
            "",
            f"### Held streams: the mock waits {s['held_delay']:g} s, then "
            f"{s['chunks']} chunks {s['held_chunk_delay'] * 1000:g} ms apart",
            "",
            "| target | streams | completed | seconds | RSS after start, MB "
            "| RSS before the streams, MB | RSS peak, MB |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for n, h in sc["held"].items():
            lines.append(
                f"| {n} | {h['streams']:,} | {h['completed']:,} | {h['seconds']:.1f} "
                f"| {h['rss_after_start_mb']:.0f} | {h['rss_at_rest_mb']:.0f} "
                f"| {h['rss_peak_mb']:.0f} |"
            )
    if result["chaos"].get("phases"):
        lines += [
            "",
            "### Chaos (chaos.py against savepoint-sqlite, short)",
            "",
            "| phase | requests | success | p50 ms | p99 ms |",
            "|---|--:|--:|--:|--:|",
        ]
        for p in result["chaos"]["phases"]:
            lines.append(
                f"| {p['name']} | {p['requests']} | {100 * p['success_rate']:.2f}% "
                f"| {p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} |"
            )
    lines += ["", "### Aims", ""] + [f"- {a}" for a in result["aims"]]
    if result["notes"]:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in result["notes"]]
    deleted = result["redis_keys_deleted"]
    lines += [
        "",
        f"CPU busy before the run (other work): {s['cpu_busy_before_pct']} %. "
        f"Redis, what the run wrote and deleted: {deleted}.",
    ]
    if result["optional_errors"]:
        lines += ["", "### Errors of the optional target (reported, not failing the run)", ""]
        lines += [f"- {e}" for e in result["optional_errors"]]
    if result["errors"]:
        lines += ["", "### ERRORS", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"

"""What the measurements mean: ratios and added latency against the baselines measured in the
same run, notes on anything that makes a number unreliable, and the markdown table.

Pure functions over the result dict that `bench_foundation.py` builds and saves as JSON:

    scenarios[scenario][target]["saturation"]   wrk numbers + CPU use during the run
    scenarios[scenario][target]["latency"][rate] openloop.py's report

Targets are `direct` (the mock itself), `passthrough` and `gateway`. "Added" latency is a
target's percentile minus the direct call's same percentile, at the same rate.
"""

from __future__ import annotations

from typing import Any

TARGETS = ("direct", "passthrough", "gateway")
PROXIES = ("passthrough", "gateway")
LABELS = {"direct": "direct (mock)", "passthrough": "pass-through", "gateway": "gateway"}
AIM_RATIO = 0.60  # gateway requests/s over the pass-through's, on one core
AIM_ADDED_P50_MS = 1.0
_NOT_CPU_BOUND = 90.0  # % of one CPU under which a saturated process was not the bottleneck
_FOREIGN_LOAD = 15.0  # % of a CPU used by processes that are not ours


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def compare(targets: dict[str, Any]) -> dict[str, Any]:
    """Ratios of requests/s and added latency for one scenario."""
    rps = {name: targets[name]["saturation"]["rps"] for name in TARGETS}
    cpu_us = {name: targets[name]["saturation"]["sut_cpu_us_per_request"] for name in TARGETS}
    direct = targets["direct"]["latency"]
    added: dict[str, dict[str, dict[str, float]]] = {}
    for name in PROXIES:
        added[name] = {}
        for rate, own in targets[name]["latency"].items():
            base = direct[rate]
            added[name][rate] = {
                f"{measure}_{p}": round(own[f"{measure}_ms"][p] - base[f"{measure}_ms"][p], 3)
                for measure in ("first_byte", "end")
                for p in ("p50", "p99")
            }
    return {
        "rps": rps,
        "gateway_over_passthrough": ratio(rps["gateway"], rps["passthrough"]),
        "gateway_over_direct": ratio(rps["gateway"], rps["direct"]),
        "passthrough_over_direct": ratio(rps["passthrough"], rps["direct"]),
        "cpu_us_per_request": cpu_us,
        # The requests/s ratio both would reach if each had its CPU to itself.
        "gateway_over_passthrough_by_cpu": ratio(cpu_us["passthrough"], cpu_us["gateway"]),
        "added_ms": added,
    }


def notes(scenarios: dict[str, dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """Warnings about numbers that were limited by something other than the target."""
    out = []
    sut_cpu, load_cpu = settings["sut_cpu"], settings["load_cpu"]
    before = settings["cpu_busy_before_pct"]
    if max(before) > _FOREIGN_LOAD:
        out.append(
            f"other processes kept the machine busy before the run ({_cpus(before, load_cpu)}): "
            "every number may be noisy."
        )
    for scenario, targets in scenarios.items():
        rps = {name: targets[name]["saturation"]["rps"] for name in TARGETS}
        if rps["direct"] < max(rps["passthrough"], rps["gateway"]):
            out.append(
                f"{scenario}: the direct target saturated at {rps['direct']:,.0f} rps, below a "
                "proxy in front of it: the mock shares CPU 1 with wrk and is the limit there, so "
                "`gateway / direct` understates the gateway; compare with the pass-through."
            )
        for name in PROXIES:
            sat = targets[name]["saturation"]
            busy = sat["cpu_busy_pct"]
            if sat["sut_cpu_pct"] < _NOT_CPU_BOUND:
                out.append(
                    f"{scenario}/{name}: used only {sat['sut_cpu_pct']:.0f}% of its CPU at "
                    f"saturation, so something else limited it ({_cpus(busy, load_cpu)}); its "
                    "requests/s is a lower bound."
                )
            if sut_cpu is not None and busy[sut_cpu] - sat["sut_cpu_pct"] > _FOREIGN_LOAD:
                out.append(
                    f"{scenario}/{name}: other processes used "
                    f"~{busy[sut_cpu] - sat['sut_cpu_pct']:.0f}% of CPU {sut_cpu} during its "
                    "saturation run; its requests/s is noisy."
                )
        for name in TARGETS:
            for rate, lat in targets[name]["latency"].items():
                if lat["behind"]:
                    out.append(
                        f"{scenario}/{name} at {rate}/s: the load generator fell behind its "
                        f"schedule (lateness p99 {lat['lateness_ms']['p99']:.2f} ms, sent "
                        f"{lat['sent_rate']:.0f}/s); latencies include its own delay."
                    )
                if float(rate) > 0.9 * rps[name] > 0:
                    out.append(
                        f"{scenario}/{name} at {rate}/s: the rate is at or above what it "
                        f"sustains ({rps[name]:,.0f} rps), so its latency is mostly queueing."
                    )
    return out


def aims(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for scenario, c in comparisons.items():
        r = c["gateway_over_passthrough"]
        out.append(
            f"{scenario}: gateway / pass-through requests/s = {r:.3f} "
            f"(from CPU time per request: {c['gateway_over_passthrough_by_cpu']:.3f}) "
            f"(aim >= {AIM_RATIO:.2f}): {'met' if r >= AIM_RATIO else 'MISSED'}"
        )
        added = c["added_ms"]["gateway"]
        worst = max(a["end_p50"] for a in added.values())
        at = ", ".join(f"{a['end_p50']:+.2f} ms at {rate}/s" for rate, a in added.items())
        out.append(
            f"{scenario}: gateway adds at p50 {at} (aim < {AIM_ADDED_P50_MS:g} ms): "
            f"{'met' if worst < AIM_ADDED_P50_MS else 'MISSED'}"
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    scenarios, comparisons = result["scenarios"], result["comparison"]
    pinning = (
        f"system under test pinned to CPU {s['sut_cpu']}, mock and load generators to CPU "
        f"{s['load_cpu']}"
        if s["sut_cpu"] is not None
        else "NOT pinned (fewer than 2 CPUs available)"
    )
    lines = [
        f"## Savepoint foundation benchmark ({result['started']})",
        "",
        f"{s['duration_s']:g} s per measurement; {pinning}.",
        "",
        f"### Saturation (wrk, 1 thread, {s['connections']} connections), requests/s",
        "",
        "| scenario | direct (mock) | pass-through | gateway | gateway / pass-through "
        "| gateway / direct | CPU used: mock / pass-through / gateway "
        "| CPU µs per request: pass-through / gateway (ratio) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario, targets in scenarios.items():
        c = comparisons[scenario]
        cpu = " / ".join(f"{targets[n]['saturation']['sut_cpu_pct']:.0f}%" for n in TARGETS)
        rps = " | ".join(f"{c['rps'][n]:,.0f}" for n in TARGETS)
        us = c["cpu_us_per_request"]
        lines.append(
            f"| {scenario} | {rps} | {c['gateway_over_passthrough']:.2f} "
            f"| {c['gateway_over_direct']:.2f} | {cpu} | {us['passthrough']:.0f} / "
            f"{us['gateway']:.0f} ({c['gateway_over_passthrough_by_cpu']:.2f}) |"
        )
    lines += [
        "",
        "### Latency at a fixed rate (open loop), ms, p50 / p99",
        "",
        "| scenario | rate | until | direct (mock) | pass-through | gateway "
        "| added by pass-through | added by gateway |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for scenario, targets in scenarios.items():
        added = comparisons[scenario]["added_ms"]
        stream = targets["direct"]["latency"][next(iter(targets["direct"]["latency"]))]["stream"]
        for rate in targets["direct"]["latency"]:
            for measure in ("first_byte", "end") if stream else ("end",):
                ms = [targets[n]["latency"][rate][f"{measure}_ms"] for n in TARGETS]
                more = [added[n][rate] for n in PROXIES]
                cells = [_pair(m["p50"], m["p99"]) for m in ms]
                cells += [_pair(a[f"{measure}_p50"], a[f"{measure}_p99"], "+") for a in more]
                until = "first byte" if measure == "first_byte" else "last byte"
                lines.append(f"| {scenario} | {rate}/s | {until} | " + " | ".join(cells) + " |")
    lines += ["", "### Aims", ""] + [f"- {line}" for line in result["aims"]]
    if result["notes"]:
        lines += ["", "### Notes", ""] + [f"- {line}" for line in result["notes"]]
    if result["errors"]:
        lines += ["", "### ERRORS", ""] + [f"- {line}" for line in result["errors"]]
    return "\n".join(lines) + "\n"


def _cpus(busy: list[float], load_cpu: int | None) -> str:
    """`CPU 0 54% busy, CPU 1 (mock + load) 97% busy`."""
    return ", ".join(
        f"CPU {i}{' (mock + load)' if i == load_cpu else ''} {pct:.0f}% busy"
        for i, pct in enumerate(busy)
    )


def _pair(p50: float, p99: float, sign: str = "") -> str:
    return f"{p50:{sign}.2f} / {p99:{sign}.2f}"

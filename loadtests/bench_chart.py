"""The chart of `bench.py`: latency percentiles (p50, p90, p99) per scenario and target, and
requests/s at saturation, in one PNG. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

# (scenario, part of the report, measure, label)
LATENCIES = (
    ("chat", "latency", "end_ms", "chat"),
    ("stream", "latency", "first_byte_ms", "stream\nfirst byte"),
    ("stream", "latency", "end_ms", "stream\nlast byte"),
    ("stream-paced", "paced", "end_ms", "paced stream\nlast byte"),
    ("cache-hit", "latency", "end_ms", "cache hit"),
    ("idem-replay", "latency", "end_ms", "idempotent\nreplay"),
)
QUANTILES = (("p50", 1.0), ("p90", 0.55), ("p99", 0.3))  # bar alpha: lighter, higher


def draw(result: dict[str, Any], path: Path) -> None:
    targets: list[str] = result["targets"]
    scenarios = result["scenarios"]
    colors = {name: f"C{i}" for i, name in enumerate(targets)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 9), gridspec_kw={"height_ratios": [3, 2]})
    width = 0.8 / max(1, len(targets))
    for x, (scenario, part, measure, _) in enumerate(LATENCIES):
        for i, name in enumerate(targets):
            lat = scenarios.get(scenario, {}).get(name, {}).get(part)
            if not lat or measure not in lat:
                continue
            at = x - 0.4 + (i + 0.5) * width
            # Drawn highest first, so each lower percentile shows on top of the one above it.
            for q, alpha in reversed(QUANTILES):
                top.bar(
                    at,
                    lat[measure][q],
                    width,
                    color=colors[name],
                    alpha=alpha,
                    label=name if q == "p50" and x == 0 else None,
                )
    top.set_xticks(range(len(LATENCIES)), [label for *_, label in LATENCIES])
    top.set_yscale("log")
    top.set_ylabel("ms (solid p50, lighter p90, lightest p99)")
    rate, paced = result["settings"]["rate"], result["settings"]["paced_rate"]
    top.set_title(f"Latency at a fixed rate ({rate}/s; paced streams {paced}/s), open loop")
    # Every target in the legend, also one without latencies (not measured at this rate).
    handles = [Patch(color=colors[name], label=name) for name in targets]
    top.legend(handles=handles, loc="upper left", fontsize="small")
    top.grid(axis="y", which="both", alpha=0.3)
    saturated = [s for s in ("chat", "stream", "cache-hit", "idem-replay") if s in scenarios]
    for x, scenario in enumerate(saturated):
        for i, name in enumerate(targets):
            sat = scenarios[scenario].get(name, {}).get("saturation")
            if sat:
                at = x - 0.4 + (i + 0.5) * width
                bottom.bar(at, sat["rps"], width, color=colors[name])
                bottom.text(
                    at,
                    sat["rps"],
                    f"{sat['rps']:,.0f}",
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                    rotation=90,
                )
    bottom.set_xticks(range(len(saturated)), saturated)
    bottom.set_ylabel("requests/s")
    bottom.set_title("Saturation (wrk, best run); Savepoint and the proxies on one CPU")
    bottom.grid(axis="y", alpha=0.3)
    bottom.margins(y=0.2)
    fig.suptitle(f"Savepoint benchmark, {result['started']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

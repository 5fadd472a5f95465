"""The first benchmark: what the gateway costs over a bare pass-through proxy and over calling
the provider directly, all measured in the same run.

    python loadtests/bench_foundation.py [--duration 8] [--rounds 3] [--smoke] [--out FILE]

    CPU 1: mock provider, wrk / openloop.py      CPU 0: the system under test
    load ──> direct: mock
    load ──> pass-through (loadtests/passthrough.py) ──> mock
    load ──> gateway (savepoint serve)              ──> mock

For each scenario (chat; chat streamed in 40 chunks with usage) and target: requests/s at
saturation (wrk), then p50/p99 at fixed rates (openloop.py). Prints a markdown table, writes
the same numbers as JSON under loadtests/results/, and exits 1 if any target answered with an
error. No absolute time is ever asserted. Every process it starts is stopped at the end, by
PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import report
import wrk
from processes import Child, ChildFailed, Children, cpu_busy, free_port, pinned

HERE = Path(__file__).resolve().parent
_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the benchmark."},
]
SCENARIOS: dict[str, dict[str, Any]] = {
    "chat": {"model": "mock-gpt", "messages": _MESSAGES},
    "chat-stream": {
        "model": "mock-gpt",
        "messages": _MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
}
CHUNKS = 40
POLICY = """\
version: 1
store: {{path: {store}}}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-bench
models:
  mock-gpt:
    targets: [up/mock-gpt]
"""


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float
    warmup: float
    rounds: int  # saturation runs per target, interleaved; the best one counts
    rates: tuple[int, ...]
    connections: int
    sut_cpu: int | None  # the system under test's CPU
    load_cpu: int | None  # the mock's and the load generators'


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    process: Child  # whose CPU use tells whether it was the bottleneck (direct: the mock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturation runs per target; the best counts"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run: proves it works")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    args = parser.parse_args()
    settings = _settings(args.duration, args.rounds, args.smoke)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the children
    with tempfile.TemporaryDirectory(prefix="savepoint-bench-") as work:
        children = Children(Path(work))
        try:
            result = run(children, settings, Path(work))
        except ChildFailed as e:
            print(f"bench_foundation: FAILED: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench_foundation: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            children.stop_all()
    result["settings"]["smoke"] = args.smoke
    print(report.markdown(result))
    out = args.out or HERE / "results" / f"foundation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    if result["errors"]:
        print("bench_foundation: FAILED: a target answered with errors", file=sys.stderr)
        return 1
    return 0


def _settings(duration: float, rounds: int, smoke: bool) -> Settings:
    cpus = sorted(os.sched_getaffinity(0))
    sut, load = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if smoke:
        return Settings(1.0, 0.2, 1, (20, 50), 8, sut, load)
    return Settings(duration, min(1.0, duration / 4), max(1, rounds), (200, 1000), 64, sut, load)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(children: Children, settings: Settings, work: Path) -> dict[str, Any]:
    before = cpu_busy()
    time.sleep(1.0)  # how busy the machine is with other work, before we add any
    busy_before = [round(100 * (b - a), 1) for a, b in zip(before, cpu_busy(), strict=True)]
    targets = start_targets(children, settings, work)
    scenarios: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for scenario, body in SCENARIOS.items():
        for target in targets:
            check_answer(target, body)
        results: dict[str, Any] = {t.name: {"latency": {}} for t in targets}
        best = saturations(children, settings, targets, body)
        for target, sat in zip(targets, best, strict=True):
            results[target.name]["saturation"] = sat
            errors += [f"{scenario}/{target.name}, wrk: {e}" for e in sat["errors"]]
        for rate in settings.rates:
            for target in targets:
                lat = latency(children, settings, target, body, rate)
                results[target.name]["latency"][str(rate)] = lat
                if lat["errors"]:
                    errors.append(f"{scenario}/{target.name} at {rate}/s: {lat['errors']}")
        scenarios[scenario] = results
    comparison = {name: report.compare(targets) for name, targets in scenarios.items()}
    recorded = {
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "rounds": settings.rounds,
        "rates": list(settings.rates),
        "connections": settings.connections,
        "chunks": CHUNKS,
        "sut_cpu": settings.sut_cpu,
        "load_cpu": settings.load_cpu,
        "cpu_busy_before_pct": busy_before,
    }
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": recorded,
        "scenarios": scenarios,
        "comparison": comparison,
        "aims": report.aims(comparison),
        "notes": report.notes(scenarios, recorded),
        "errors": errors,
    }


def start_targets(children: Children, settings: Settings, work: Path) -> list[Target]:
    """The mock, the pass-through and the gateway, listening; as targets in table order."""
    python = sys.executable
    mock_port, pass_port, gate_port = free_port(), free_port(), free_port()
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(store=work / "savepoint.db", mock_port=mock_port))
    mock_argv = [python, "-m", "gateway", "mock", "--port", str(mock_port), "--chunks", str(CHUNKS)]
    mock = children.start("mock", pinned(settings.load_cpu, mock_argv))
    upstream = f"http://127.0.0.1:{mock_port}"
    pass_argv = [python, str(HERE / "passthrough.py"), "--port", str(pass_port)]
    passthrough = children.start(
        "passthrough", pinned(settings.sut_cpu, [*pass_argv, "--upstream", upstream])
    )
    # The gateway's stderr is its access log (one line per request): a file, never a pipe.
    gate_argv = [python, "-m", "gateway", "serve", "--policy", str(policy), "--port"]
    gateway = children.start("gateway", pinned(settings.sut_cpu, [*gate_argv, str(gate_port)]))
    for child, port in ((mock, mock_port), (passthrough, pass_port), (gateway, gate_port)):
        child.wait_listening(port)
    path = "/v1/chat/completions"
    return [
        Target("direct", f"{upstream}{path}", mock),
        Target("passthrough", f"http://127.0.0.1:{pass_port}{path}", passthrough),
        Target("gateway", f"http://127.0.0.1:{gate_port}{path}", gateway),
    ]


def check_answer(target: Target, body: dict[str, Any]) -> None:
    """One request before measuring, so a broken target fails at once with its own words."""
    request = urllib.request.Request(
        target.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read().decode()
    except OSError as e:  # HTTPError and URLError are OSErrors
        detail = e.read().decode(errors="replace") if hasattr(e, "read") else ""
        message = f"{target.name} failed a first request: {e} {detail}"
        raise ChildFailed(f"{message}\n{target.process.tail()}") from None
    if body.get("stream") and not text.endswith("data: [DONE]\n\n"):
        raise ChildFailed(f"{target.name} answered a stream without [DONE]:\n{text[-500:]}")


def saturations(
    children: Children, settings: Settings, targets: list[Target], body: dict[str, Any]
) -> list[dict[str, Any]]:
    """The best of `settings.rounds` wrk runs for each target, with what went wrong in any."""
    payload = json.dumps(body)
    for target in targets:
        _wrk(children, settings, target, payload, settings.warmup)  # connections up
    # Rounds interleave the targets, so a burst of other load on the machine hits one round
    # of each rather than all of one target; such noise only ever lowers requests/s.
    rounds = [
        [saturation(children, settings, target, targets[0], payload) for target in targets]
        for _ in range(settings.rounds)
    ]
    best = []
    for i, target in enumerate(targets):
        runs = [r[i] for r in rounds]
        errors = [e for sat in runs for e in _saturation_errors(sat, target)]
        top = max(runs, key=lambda sat: float(sat["rps"]))
        best.append({**top, "rounds_rps": [r["rps"] for r in runs], "errors": errors})
    return best


def saturation(
    children: Children, settings: Settings, target: Target, mock: Target, payload: str
) -> dict[str, Any]:
    """One wrk run; with the CPU use of the target, the mock and each CPU meanwhile."""
    seen_before = _mock_total(mock.url)
    own, upstream, busy = target.process.cpu_seconds(), mock.process.cpu_seconds(), cpu_busy()
    started = time.monotonic()
    result = _wrk(children, settings, target, payload, settings.duration)
    elapsed = time.monotonic() - started
    own = target.process.cpu_seconds() - own
    busy = [b - a for a, b in zip(busy, cpu_busy(), strict=True)]
    return {
        **result.to_json(),
        "sut_cpu_pct": round(100 * own / elapsed, 1),
        # CPU time per answer: unlike requests/s, barely moved by a busy CPU 1 or other load.
        "sut_cpu_us_per_request": round(1e6 * own / max(1, result.requests), 1),
        "mock_cpu_pct": round(100 * (mock.process.cpu_seconds() - upstream) / elapsed, 1),
        "cpu_busy_pct": [round(100 * b / elapsed, 1) for b in busy],
        "mock_requests": _mock_total(mock.url) - seen_before,
    }


def _wrk(
    children: Children, settings: Settings, target: Target, payload: str, seconds: float
) -> wrk.WrkReport:
    return wrk.saturate(
        children, target.url, payload, settings.connections, seconds, settings.load_cpu
    )


def _saturation_errors(sat: dict[str, Any], target: Target) -> list[str]:
    errors = []
    if sat["non_2xx"] or sat["socket_errors"] or not sat["requests"]:
        errors.append(
            f"{sat['requests']} requests, {sat['non_2xx']} not 2xx, "
            f"{sat['socket_errors']} socket errors\n{target.process.tail(5)}"
        )
    if sat["mock_requests"] < sat["requests"]:
        errors.append(
            f"{sat['requests']} answers but the mock saw only {sat['mock_requests']} requests"
        )
    return errors


def _mock_total(chat_url: str) -> int:
    stats_url = chat_url.replace("/v1/chat/completions", "/_mock/stats")
    with urllib.request.urlopen(stats_url, timeout=10) as reply:
        return int(json.load(reply)["total"])


def latency(
    children: Children, settings: Settings, target: Target, body: dict[str, Any], rate: int
) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "openloop.py"), "--url", target.url, "--rate", str(rate)]
    argv += ["--duration", str(settings.duration), "--warmup", str(settings.warmup)]
    argv += ["--body", json.dumps(body)]
    timeout = settings.duration + settings.warmup + 30
    out = children.run("openloop", pinned(settings.load_cpu, argv), timeout)
    result: dict[str, Any] = json.loads(out)
    return result


if __name__ == "__main__":
    sys.exit(main())

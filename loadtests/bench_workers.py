"""How the gateway scales from one worker to two (`savepoint serve --workers 1` and `2`).

    python loadtests/bench_workers.py [--duration 10] [--rounds 3] [--connections 64]
                                      [--smoke] [--out FILE]

    wrk (chat.lua) ──> gateway --workers 1 ──> mock          nothing pinned: the kernel
    wrk (chat.lua) ──> gateway --workers 2 ──> mock          spreads every process over the CPUs

Both gateways run at once on their own ports, with the same policy (authentication with one
client key `sk-bench`, the usage ledger on, as it is by default) and a SQLite store each; the
one not being measured is idle. Rounds alternate the order (1 then 2, 2 then 1, ...) so that
neither configuration always runs on a warmer machine, and each reports its best round.

For each: requests/s at saturation, the ratio 2w/1w, and the CPU seconds each process used
while measured (from /proc: the gateway's workers summed, the mock, and the rest of the
machine: wrk and whatever else runs). With 2 CPUs, wrk and the mock share them with the
gateway, so the 2-worker req/s is bounded by what they leave. The gateway's CPU per request
(all its processes) says what the workers would do with the cores to themselves:
`cores / (CPU per request)` is printed as the CPU-bound ceiling of each configuration.

Any non-2xx answer or socket error exits 1, and so does a 2-worker gateway whose access log
shows a worker that served nothing. Prints a markdown table, writes JSON under
loadtests/results/. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import wrk
from processes import Child, ChildFailed, Children, cpu_busy, free_port, measured

HERE = Path(__file__).resolve().parent
_TICK = float(os.sysconf("SC_CLK_TCK"))
MODEL = "workers-bench"
POLICY = """\
version: 1
store: {{path: "{store}"}}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider
clients:
  bench:
    key_sha256: {key_sha256}
models:
  {model}:
    targets: [up/mock-gpt]
"""
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "How do workers scale?"}]}
)


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float
    warmup: float
    rounds: int
    connections: int


@dataclass(frozen=True, slots=True)
class Gateway:
    workers: int
    url: str
    child: Child  # the process started: the gateway, or the supervisor of its workers

    def processes(self) -> list[int]:
        """The PIDs doing the work: the gateway itself, or its workers (and the supervisor)."""
        pid = self.child.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *(int(c) for c in children)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each (best kept)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections")
    parser.add_argument("--smoke", action="store_true", help="tiny run: proves it works")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    args = parser.parse_args()
    if args.smoke:
        settings = Settings(duration=2.0, warmup=0.5, rounds=1, connections=16)
    else:
        settings = Settings(args.duration, 2.0, args.rounds, args.connections)
    out = args.out or HERE / "results" / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = measured("bench_workers", lambda children, work: run(children, work, settings), out)
    if result is None:
        return 1
    print(table(result))
    print(f"results: {out}")
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0


def run(children: Children, work: Path, settings: Settings) -> dict[str, Any]:
    python = sys.executable
    mock_port = free_port()
    mock = children.start("mock", [python, "-m", "gateway", "mock", "--port", str(mock_port)])
    mock.wait_listening(mock_port)
    gateways = [start_gateway(children, work, n, mock_port) for n in (1, 2)]
    for gateway in gateways:  # connections, the tokenizer, SQLite's pages: warm
        wrk.saturate(children, gateway.url, BODY, settings.connections, settings.warmup, None)
    rounds: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    errors = []
    for r in range(settings.rounds):
        for gateway in gateways if r % 2 == 0 else gateways[::-1]:
            measured = measure(children, gateway, mock, settings)
            rounds[gateway.workers].append(measured)
            if measured["non_2xx"] or measured["socket_errors"] or not measured["requests"]:
                errors.append(f"{gateway.workers} worker(s), round {r + 1}: {measured}")
    served = served_by_worker(gateways[1].child)
    if len(served) < 2 or min(served.values()) == 0:
        errors.append(f"2 workers: requests by worker {dict(served)}: one served nothing")
    best = {n: max(rs, key=lambda m: m["rps"]) for n, rs in rounds.items()}
    return {
        "settings": asdict(settings),
        "cpus": len(cpu_busy()),
        "rounds": {str(n): rs for n, rs in rounds.items()},
        "best": {str(n): m for n, m in best.items()},
        "ratio_2w_1w": round(best[2]["rps"] / best[1]["rps"], 2) if best[1]["rps"] else None,
        "served_by_worker_2w": {str(k): v for k, v in sorted(served.items())},
        "errors": errors,
    }


def start_gateway(children: Children, work: Path, workers: int, mock_port: int) -> Gateway:
    policy = work / f"policy-{workers}w.yaml"
    digest = hashlib.sha256(b"sk-bench").hexdigest()
    store = work / f"store-{workers}w.db"
    text = POLICY.format(store=store, mock_port=mock_port, model=MODEL, key_sha256=digest)
    policy.write_text(text)
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port",
            str(port), "--workers", str(workers)]  # fmt: skip
    # The gateway's stderr is its access log: a file, never a pipe.
    child = children.start(f"gateway-{workers}w", argv)
    deadline = time.monotonic() + 30
    while "listening" not in child.stdout.read_text():  # printed once every worker listens
        if child.popen.poll() is not None or time.monotonic() > deadline:
            raise ChildFailed(f"gateway-{workers}w did not start\n{child.tail()}")
        time.sleep(0.05)
    return Gateway(workers, f"http://127.0.0.1:{port}/v1/chat/completions", child)


def measure(
    children: Children, gateway: Gateway, mock: Child, settings: Settings
) -> dict[str, Any]:
    pids = gateway.processes()
    before = (_cpu(pids), mock.cpu_seconds(), sum(cpu_busy()), time.monotonic())
    report = wrk.saturate(
        children, gateway.url, BODY, settings.connections, settings.duration, None
    )
    gateway_cpu, mock_cpu = _cpu(pids) - before[0], mock.cpu_seconds() - before[1]
    busy, wall = sum(cpu_busy()) - before[2], time.monotonic() - before[3]
    per_request = gateway_cpu / report.requests * 1e6 if report.requests else 0.0
    return {
        **report.to_json(),
        "wall_s": round(wall, 2),
        "cpu_s": {
            "gateway": round(gateway_cpu, 2),
            "mock": round(mock_cpu, 2),
            "rest": round(max(busy - gateway_cpu - mock_cpu, 0.0), 2),  # wrk and the machine
        },
        "gateway_cpu_us_per_request": round(per_request),
        # what the gateway would serve if its workers had a core each to themselves
        "cpu_bound_ceiling_rps": round(gateway.workers * 1e6 / per_request) if per_request else 0,
    }


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # a worker that died (and was replaced) while measured
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def served_by_worker(child: Child) -> Counter[int]:
    """Requests each worker answered, from the access log (its `worker` field)."""
    served: Counter[int] = Counter()
    with child.stderr.open("rb") as log:
        for line in log:
            if line.startswith(b"{") and b'"path":"/v1/' in line:
                worker = json.loads(line).get("worker")
                if worker is not None:
                    served[worker] += 1
    return served


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['cpus']} CPUs, nothing pinned; best of {result['settings']['rounds']} "
        f"round(s) of {result['settings']['duration']:g} s, "
        f"wrk -c{result['settings']['connections']}",
        "",
        "| workers | req/s | vs 1w | gateway CPU s | mock CPU s | rest CPU s "
        "| gateway CPU µs/req | CPU-bound ceiling req/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = result["best"]["1"]["rps"]
    for n, m in result["best"].items():
        cpu = m["cpu_s"]
        lines.append(
            f"| {n} | {m['rps']:,.0f} | {m['rps'] / base:.2f}x | {cpu['gateway']} | "
            f"{cpu['mock']} | {cpu['rest']} | {m['gateway_cpu_us_per_request']} | "
            f"{m['cpu_bound_ceiling_rps']:,} |"
        )
    all_rounds = {n: ", ".join(f"{m['rps']:,.0f}" for m in rs)
                  for n, rs in result["rounds"].items()}  # fmt: skip
    lines += ["", f"rounds (req/s): 1w {all_rounds['1']}; 2w {all_rounds['2']}"]
    lines.append(f"2 workers, requests by worker: {result['served_by_worker_2w']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

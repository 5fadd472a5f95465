"""Where one gateway worker's time goes per request: CPU per thread, and the event loop's
profile by function.

    python loadtests/profile_path.py [--policy production] [--seconds 10] [--profile]

    CPU 1: mock, wrk (-t1 -c32, every body unique: cache misses), redis-server (--store redis)
    CPU 0: one gateway worker (SQLite store in a temporary directory, or a Redis of its own)

Policies: `default` (one model, nothing else), `production` (auth with one client, the
response cache on the model, the usage ledger, metrics, the access log, breakers) and
`limits` (production plus the client's rpm, tpm and a USD budget, with the default loop
guard riding along), `deployment` (production plus the provider's own rpm and tpm on its
model: `providers.up.limits`); `--store redis` starts a redis-server of its own; `--connections 1`
measures one request at a time; `--stream` sends streams of 40 chunks (and `--rate` then
measures the first byte); `--hits` sends one prompt again and again (cache hits, and the loop
guard's repeats); each load run (the warm-up, the measured run) sends prompts of its own;
with `--store redis` the redis-server's CPU per request is printed too; `--baseline`
measures the bare pass-through (`passthrough.py`) on CPU 0 under the same load after the
gateway, and prints the gateway's ratios to it (requests/s, CPU per request); `--rate R`
adds the latency at R requests/s (open loop, prompts no earlier phase sent) of the gateway
and of the mock called directly, their difference, and the gateway's CPU and context
switches per request by thread at that rate.
Prints requests/s and the CPU µs per request of each thread of the gateway (from
/proc/<pid>/task/*/stat, before and after the load); with `--profile`, also runs
`py-spy record` on the event-loop thread for as long again and prints the functions with
the largest inclusive share of its samples, then each sample charged to the innermost
gateway function on its stack (the gateway's own code and the library calls it makes).
docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import wrk
from bench_measure import MARKER, open_loop
from bench_targets import Target
from processes import Child, Children, free_port, pinned

HERE = Path(__file__).resolve().parent
_TICK = float(os.sysconf("SC_CLK_TCK"))
_BASE = """\
version: 1
store: {store}
providers:
  up: {{kind: openai, base_url: "http://127.0.0.1:{mock}/v1", api_key: sk-up{up}}}
"""
# The provider's own limits, per policy (`providers.up.limits`).
_DEPLOYMENT_LIMITS = {"deployment": ", limits: {mock-gpt: {rpm: 10000000, tpm: 1000000000}}"}
POLICIES = {
    "default": "models:\n  bench: {targets: [up/mock-gpt]}\n",
    "production": """\
clients:
  bench: {key_sha256: c00397de4384b5bbaf14c02fe1ec7020d28d1eeab6a722c576c84b6678c41c29}
models:
  bench: {targets: [up/mock-gpt], cache: {enabled: true}}
""",
    "deployment": """\
clients:
  bench: {key_sha256: c00397de4384b5bbaf14c02fe1ec7020d28d1eeab6a722c576c84b6678c41c29}
models:
  bench: {targets: [up/mock-gpt], cache: {enabled: true}}
""",
    "limits": """\
clients:
  bench:
    key_sha256: c00397de4384b5bbaf14c02fe1ec7020d28d1eeab6a722c576c84b6678c41c29
    limits: {rpm: 10000000, tpm: 1000000000}
    budget: {usd: 1000000, period: day}
models:
  bench: {targets: [up/mock-gpt], cache: {enabled: true}}
""",
}
_UNIQUE = MARKER
_BODY = {
    "model": "bench",
    "messages": [{"role": "user", "content": f"Say hello to request {_UNIQUE}."}],
}


def _tasks(pid: int, file: str) -> Iterator[tuple[str, str]]:
    """(thread, its /proc file `file`) for each thread still there: the event loop (the main
    thread) and the others by id (Python 3.11 does not name its threads for the kernel)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / file).read_text()
        except FileNotFoundError:
            continue
        yield ("event loop" if task.name == str(pid) else f"thread {task.name}"), text


def threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread."""
    return {
        name: sum(map(int, stat.rpartition(")")[2].split()[11:13])) / _TICK
        for name, stat in _tasks(pid, "stat")
    }


def _store_cpu(redis: Child | None) -> float:
    """The CPU seconds the benchmark's redis-server has used (0 without one)."""
    return sum(threads(redis.pid).values()) if redis is not None else 0.0


def switches(pid: int) -> dict[str, int]:
    """Context switches per thread, voluntary and not."""
    return {
        name: sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
        for name, status in _tasks(pid, "status")
    }


def _loop_samples(collapsed: str, pid: int) -> Iterator[tuple[list[tuple[str, str]], int]]:
    """py-spy's collapsed stacks (`--threads`) -> the event loop's: ((function, file) from the
    outermost frame in, sample count)."""
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        root, _, rest = stack.partition(";")
        if not n.isdigit() or (f"tid: {pid})" not in root and f"({pid})" not in root):
            continue
        frames = []
        for frame in rest.split(";"):
            function, _, where = frame.partition(" (")
            frames.append((function, where.partition(":")[0]))
        yield frames, int(n)


def inclusive_shares(collapsed: str, top: int, pid: int) -> list[tuple[str, float]]:
    """The functions with the largest share of the event loop's samples that have them
    anywhere on the stack."""
    counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, n in _loop_samples(collapsed, pid):
        samples += n
        for frame in {f"{function} ({path})" for function, path in frames}:
            counts[frame] += n
    return [(f, 100 * c / samples) for f, c in counts.most_common(top)] if samples else []


def _passthrough(
    children: Children, mock_port: int, seconds: float, load: Callable[..., wrk.WrkReport]
) -> tuple[wrk.WrkReport, float]:
    """The bare pass-through on the gateway's CPU, under the same load: (report, CPU s)."""
    port = free_port()
    argv = [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
            "--upstream", f"http://127.0.0.1:{mock_port}"]  # fmt: skip
    proxy = children.start("passthrough", pinned(0, argv))
    proxy.wait_listening(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    load(2, url)
    before = sum(threads(proxy.pid).values())
    report = load(seconds, url)
    return report, sum(threads(proxy.pid).values()) - before


_ENTRY = ("gateway/cli.py", "gateway/__main__.py")  # the process's frames, under every request


def own_shares(collapsed: str, top: int, pid: int) -> list[tuple[str, float]]:
    """Each of the event loop's samples charged to the innermost gateway function on its
    stack (what it does itself, plus the library code it calls that is not the gateway's
    again): where the gateway's own time goes. Samples with no gateway frame are aiohttp's
    server and the event loop, under `(server and loop)`."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, n in _loop_samples(collapsed, pid):
        owner = next((f"{function} ({path})" for function, path in reversed(frames)
                      if path.startswith("gateway/") and path not in _ENTRY),
                     "(server and loop)")  # fmt: skip
        counts[owner] += n
    total = counts.total()
    return [(f, 100 * c / total) for f, c in counts.most_common(top)] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="production")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--profile", action="store_true", help="py-spy the event loop too")
    parser.add_argument(
        "--rate", type=float, help="also latency at this open-loop rate, against a direct call"
    )
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--stream", action="store_true", help="streams of 40 chunks instead")
    parser.add_argument(
        "--hits", action="store_true", help="one prompt again and again: cache hits, not misses"
    )
    parser.add_argument(
        "--baseline", action="store_true",
        help="also the bare pass-through under the same load, and the gateway's ratio to it",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="savepoint-profile-") as work:
        children = Children(Path(work))
        try:
            return run(children, Path(work), args)
        finally:
            children.stop_all()


def run(children: Children, work: Path, args: argparse.Namespace) -> int:
    mock_port, port = free_port(), free_port()
    store = f"{{path: {work / 'sp.db'}}}"
    redis: Child | None = None
    if args.store == "redis":  # a server of its own: nothing is left in a shared one
        redis_port = free_port()
        redis_argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no"]
        redis = children.start("redis", pinned(1, redis_argv))
        redis.wait_listening(redis_port)
        store = f"{{kind: redis, url: 'redis://127.0.0.1:{redis_port}/0'}}"
    mock_argv = [sys.executable, "-m", "gateway", "mock", "--port", str(mock_port)]
    mock_argv += ["--chunks", "40"]
    mock = children.start("mock", pinned(1, mock_argv))
    policy = work / "policy.yaml"
    up = _DEPLOYMENT_LIMITS.get(args.policy, "")
    policy.write_text(_BASE.format(store=store, mock=mock_port, up=up) + POLICIES[args.policy])
    argv = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy)]
    gateway = children.start("gateway", pinned(0, [*argv, "--port", str(port), "--workers", "1"]))
    mock.wait_listening(mock_port)
    gateway.wait_listening(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps({**_BODY, "stream": True} if args.stream else _BODY)
    measured = "first_byte_ms" if args.stream else "end_ms"
    if args.hits:
        body = body.replace(_UNIQUE, "again")
    env = {"SAVEPOINT_BENCH_BODY": body, "SAVEPOINT_BENCH_UNIQUE": "" if args.hits else _UNIQUE}

    runs = itertools.count(1)

    def load(seconds: float, target: str = url) -> wrk.WrkReport:
        wrk_argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{max(1, round(seconds))}s",
                    "-s", str(HERE / "replay.lua"), target]  # fmt: skip
        # Prompts of its own: wrk's counter starts at 1 in every run, and a prompt the
        # warm-up sent would be a cache hit, not the miss being measured.
        own = {**env, "SAVEPOINT_BENCH_BODY": body.replace(_UNIQUE, f"{next(runs)}-{_UNIQUE}")}
        return wrk.parse(children.run("wrk", pinned(1, wrk_argv), seconds + 30, env=own))

    load(2)  # warm-up: connections, imports, the tokenizer
    before, store_before = threads(gateway.pid), _store_cpu(redis)
    report = load(args.seconds)
    after, store_after = threads(gateway.pid), _store_cpu(redis)
    if report.failed:
        print(f"FAILED: {report}\n{gateway.tail()}", file=sys.stderr)
        return 1
    latency = 1000 * args.connections / report.rps  # closed loop: Little's law
    print(f"policy {args.policy}, {args.store}: {report.rps:,.0f} req/s, {report.requests:,} "
          f"requests, {latency:.2f} ms per request (connections / req/s)")  # fmt: skip
    print("| thread | CPU µs per request |\n|---|---:|")
    for name in sorted(after, key=lambda n: after[n] - before.get(n, 0.0), reverse=True):
        used = after[name] - before.get(name, 0.0)
        if used > 0:
            print(f"| {name} | {1e6 * used / report.requests:,.0f} |")
    if redis is not None:
        store_cpu = 1e6 * (store_after - store_before) / report.requests
        print(f"| redis-server (its own process) | {store_cpu:,.0f} |")
    if args.baseline:
        floor, floor_cpu = _passthrough(children, mock_port, args.seconds, load)
        used = sum(after.values()) - sum(before.values())
        print(f"pass-through: {floor.rps:,.0f} req/s, {1e6 * floor_cpu / floor.requests:,.0f} "
              f"CPU µs per request; the gateway: {report.rps / floor.rps:.2f} of its req/s, "
              f"{used / report.requests / (floor_cpu / floor.requests):.2f} x its CPU per "
              "request")  # fmt: skip
    if args.rate:
        mock_url = f"http://127.0.0.1:{mock_port}"
        # Its own prompts: wrk's counter and the open loop's both count from 1, and a prompt
        # wrk sent would be a cache hit, not the miss being measured.
        rate_body = body.replace("request", "open-loop request")

        def at_rate(target: Target) -> dict[str, Any]:
            return open_loop(children, target, rate_body, args.rate, args.seconds, 1.0, 1,
                             mock_url)  # fmt: skip

        direct = at_rate(Target("direct", f"{mock_url}/v1/chat/completions", mock, "bench"))
        cpu, switched = threads(gateway.pid), switches(gateway.pid)
        own = at_rate(Target("gateway", url, gateway, "bench"))
        cpu_after, switched_after = threads(gateway.pid), switches(gateway.pid)
        for lat in (direct, own):
            if lat["errors"]:
                raise SystemExit(f"open loop: {lat['errors']}")
        what = "first byte" if args.stream else "last byte"
        print(f"\nlatency at {args.rate:g}/s, open loop, ms to the {what} (late: the client's "
              "own p99 lateness)")  # fmt: skip
        print("| | p50 | p99 | late | CPU µs per request |\n|---|--:|--:|--:|--:|")
        for name, lat in (("direct", direct), ("gateway", own), ("added", None)):
            if lat is None:
                p50 = own[measured]["p50"] - direct[measured]["p50"]
                p99 = own[measured]["p99"] - direct[measured]["p99"]
                print(f"| added | {p50:+.2f} | {p99:+.2f} | | |")
            else:
                late = lat.get("lateness_ms", {}).get("p99", float("nan"))
                print(f"| {name} | {lat[measured]['p50']:.2f} | {lat[measured]['p99']:.2f} "
                      f"| {late:.2f} | {lat['cpu_us_per_request']:,.0f} |")  # fmt: skip
        sent = max(1, own["requests_sent"])  # warm-up included, as the CPU is
        print(f"\nthe gateway at {args.rate:g}/s, per request (warm-up included)")
        print("| thread | CPU µs | context switches |\n|---|--:|--:|")
        for name in sorted(cpu_after, key=lambda n: cpu_after[n] - cpu.get(n, 0.0), reverse=True):
            used = cpu_after[name] - cpu.get(name, 0.0)
            woke = switched_after.get(name, 0) - switched.get(name, 0)
            if used > 0:
                print(f"| {name} | {1e6 * used / sent:,.0f} | {woke / sent:.2f} |")
    if args.profile:
        out = work / "profile.txt"
        spy = ["py-spy", "record", "-r", "200", "-d", str(round(args.seconds))]
        spy += ["--format", "raw", "--threads", "-o", str(out), "-p", str(gateway.pid)]
        spy += ["--nonblocking"]
        spying = subprocess.Popen(pinned(1, spy), stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        load(args.seconds)
        spying.wait(timeout=args.seconds + 30)
        collapsed = out.read_text()
        print("\n| function (inclusive) | share of samples |\n|---|---:|")
        for frame, share in inclusive_shares(collapsed, args.top, gateway.pid):
            print(f"| {frame} | {share:.1f}% |")
        print("\n| innermost gateway function | share of samples |\n|---|---:|")
        for frame, share in own_shares(collapsed, args.top, gateway.pid):
            print(f"| {frame} | {share:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

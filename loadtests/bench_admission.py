"""Admission and accounting: what do limits, budgets, the loop guard and the usage ledger add
to a request, on both stores?

    python loadtests/bench_admission.py [--duration 5] [--rate 500] [--rounds 3] [--smoke]
                                        [--out FILE]

    CPU 1: mock provider (no delay), wrk / the open-loop client    CPU 0: the systems under test
    load ──> pass-through (loadtests/passthrough.py) ──> mock       for reference
    load ──> gateway, store S, no admission, no ledger ──> mock     none-S    (the baseline)
    load ──> gateway, store S, the usage ledger alone ──> mock      ledger-S  (the default)
    load ──> gateway, store S, the guard on every request ──> mock  guard-S   (counts repeats)
    load ──> gateway, store S, every kind of limit ──> mock         limits-S  (admit + settle)

for S in sqlite, redis: eight gateways, each with its own policy, all with authentication on and
one client (key `sk-bench`, named `bench-<nonce>`), so limits apply per client:

    none-S    `guard: {enabled: false}`, `usage: {enabled: false}`, no limits: no store call
              per request, no ledger entry
    ledger-S  `guard: {enabled: false}`, no limits, the usage ledger on (the default): an
              entry per request, one store call per `usage.flush` (0.5 s) for all of them
    guard-S   `guard: {enabled: true}` (flags, never refuses), no limits: every request is
              the same, so after its 20th repeat in the window the worker counts it itself
              (a `limits_admit` per repeat below the threshold and per 50 ms of first
              sightings; the default guard counts only requests that pass through limits,
              so without limits it is the baseline)
    limits-S  the default guard, which rides along with limits, plus client limits,
              client-on-model limits and model limits
              {rpm: 10000000, tpm: 1000000000, concurrency: 10000} and a client budget
              {tokens: 1000000000000}: nothing is refused; one `limits_admit` (in the request's
              path) and one `limits_settle` (after the answer) per request, plus the tiktoken
              estimate of the prompt

For each: requests/s at saturation (wrk, `chat.lua`), p50/p99 at a fixed rate (an open-loop
client, `openloop.py`'s method, counting answer headers), and for every target the Redis
server's `INFO commandstats` before and after each measurement (EVALSHA calls per request
that reached the mock: at least 2 for limits-redis, whose concurrency slots take an admit
and a settle each, or the run fails).
Latency runs in rounds that take the targets in turn; in each, the baseline's latency is
measured a second time after the other two targets of its store: the difference is the noise
floor of "added". Before measuring, two sample requests per target must show
`x-ratelimit-limit-requests` on the limits targets (and not on the others); every answer must
be a 200 without `x-savepoint-degraded`, and the guard's flag (`x-savepoint-loop`: every
request is the same) must show on the guard and limits targets' answers, never on the
baseline's. Any refusal or error exits 1. Prints a markdown table, writes JSON under
loadtests/results/. Every process it starts is stopped by PID; the Redis keys it created (all
named after the run's nonce) are deleted at the end.

guard-S and limits-S have the ledger on too (the default): limits-S minus none-S is what the
issue bounds (admission and ledger: under 0.5 ms at p99 on the embedded store).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import wrk
from processes import Child, ChildFailed, Children, cpu_busy, free_port, pinned

HERE = Path(__file__).resolve().parent
LUA = HERE / "chat.lua"  # sends `Authorization: Bearer sk-bench`
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-bench"
STORES = ("sqlite", "redis")
KINDS = ("none", "ledger", "guard", "limits")
LIMIT = {"rpm": 10_000_000, "tpm": 1_000_000_000, "concurrency": 10_000}
BUDGET = {"tokens": 1_000_000_000_000}
SETTLE_WAIT = 0.3  # seconds after a measurement before reading counters: settles run after
# Answer headers the open-loop client counts.
RATELIMIT, LOOP, DEGRADED = "x-ratelimit-limit-requests", "x-savepoint-loop", "x-savepoint-degraded"


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float
    warmup: float
    rate: int
    rounds: int
    connections: int
    sut_cpu: int | None
    load_cpu: int | None


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # e.g. "limits-redis"
    kind: str  # "passthrough" or one of KINDS
    store: str  # "-", "sqlite" or "redis"
    url: str
    process: Child
    model: str
    mock_stats: str  # the mock's request counter (GET /_mock/stats)


@dataclass(frozen=True, slots=True)
class Run:
    """What names this run's state: the client and the model carry the nonce, so every limit
    key it creates (`c/<client>/…`, `cm/<client>/<model>/…`, `m/<model>/…`, `b/<client>/…`,
    `g/<client>/…`) does too."""

    nonce: str

    @property
    def client(self) -> str:
        return f"bench-{self.nonce}"

    @property
    def model(self) -> str:
        return f"admission-bench-{self.nonce}"

    def body(self, model: str) -> str:
        return json.dumps(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": "Say hello to the benchmark."},
                ],
            }
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rate", type=int, default=500, help="open-loop requests per second")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds (median counts)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: proves it works")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    parser.add_argument("--openloop-child", help=argparse.SUPPRESS)  # internal: the load child
    args = parser.parse_args()
    if args.openloop_child:
        return _openloop_child(json.loads(args.openloop_child))
    settings = _settings(args.duration, args.rate, args.rounds, args.smoke)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the children
    bench = Run(uuid.uuid4().hex[:12])
    with tempfile.TemporaryDirectory(prefix="savepoint-bench-admission-") as work:
        children = Children(Path(work))
        try:
            targets = start_targets(children, settings, Path(work), bench)
            result = run(children, settings, targets, bench, args.smoke)
        except ChildFailed as e:
            print(f"bench_admission: FAILED: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench_admission: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            children.stop_all()  # first: a settle still running would write a key again
            deleted = _clean_redis(bench)
    result["settings"]["smoke"] = args.smoke
    result["redis_keys_deleted"] = deleted
    print(markdown(result))
    out = args.out or HERE / "results" / f"admission-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    if result["errors"]:
        print("bench_admission: FAILED:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


def _settings(duration: float, rate: int, rounds: int, smoke: bool) -> Settings:
    cpus = sorted(os.sched_getaffinity(0))
    sut, load = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if smoke:
        return Settings(1.0, 0.2, min(rate, 200), 1, 8, sut, load)
    return Settings(duration, min(1.0, duration / 4), rate, max(1, rounds), 64, sut, load)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# --- processes ------------------------------------------------------------------------------


def policy(kind: str, store: str, mock_port: int, work: Path, bench: Run) -> dict[str, Any]:
    """The target's policy (JSON is YAML): one client, one model on the mock."""
    spec: dict[str, Any] = (
        {"path": str(work / f"savepoint-{kind}.db")}
        if store == "sqlite"
        else {"kind": "redis", "url": REDIS_URL}
    )
    client: dict[str, Any] = {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}
    model: dict[str, Any] = {"targets": ["up/mock-gpt"]}
    if kind == "limits":
        client |= {"limits": LIMIT, "model_limits": {bench.model: LIMIT}, "budget": BUDGET}
        model["limits"] = LIMIT
    doc: dict[str, Any] = {
        "version": 1,
        "store": spec,
        "providers": {
            "up": {"kind": "openai", "base_url": f"http://127.0.0.1:{mock_port}/v1",
                   "api_key": "sk-bench"}
        },
        "clients": {bench.client: client},
        "models": {bench.model: model},
    }  # fmt: skip
    if kind in ("none", "ledger"):
        doc["guard"] = {"enabled": False}
    if kind == "none":
        doc["usage"] = {"enabled": False}
    elif kind == "guard":
        doc["guard"] = {"enabled": True}  # the default (unset) only rides along with limits
    return doc


def start_targets(children: Children, settings: Settings, work: Path, bench: Run) -> list[Target]:
    python = sys.executable
    mock_port, pass_port = free_port(), free_port()
    mock_argv = [python, "-m", "gateway", "mock", "--port", str(mock_port)]  # no delay
    mock = children.start("mock", pinned(settings.load_cpu, mock_argv))
    upstream = f"http://127.0.0.1:{mock_port}"
    stats = f"{upstream}/_mock/stats"
    pass_argv = [python, str(HERE / "passthrough.py"), "--port", str(pass_port)]
    passthrough = children.start(
        "passthrough", pinned(settings.sut_cpu, [*pass_argv, "--upstream", upstream])
    )
    path = "/v1/chat/completions"
    listening = [(mock, mock_port), (passthrough, pass_port)]
    targets = [
        Target("passthrough", "passthrough", "-", f"http://127.0.0.1:{pass_port}{path}",
               passthrough, "mock-gpt", stats)
    ]  # fmt: skip
    for store in STORES:
        for kind in KINDS:
            name = f"{kind}-{store}"
            (work / store).mkdir(exist_ok=True)
            file = work / f"policy-{name}.yaml"
            file.write_text(json.dumps(policy(kind, store, mock_port, work / store, bench)))
            port = free_port()
            argv = [python, "-m", "gateway", "serve", "--policy", str(file), "--port", str(port),
                    "--workers", "1"]  # fmt: skip
            # The gateway's stderr is its access log: a file, never a pipe.
            child = children.start(f"gateway-{name}", pinned(settings.sut_cpu, argv))
            listening.append((child, port))
            url = f"http://127.0.0.1:{port}{path}"
            targets.append(Target(name, kind, store, url, child, bench.model, stats))
    for child, port in listening:
        child.wait_listening(port, timeout=60.0)  # six gateways start on one CPU
    for target in targets[1:]:
        _check_ready(target)
    return targets


def _check_ready(target: Target) -> None:
    url = target.url.replace("/v1/chat/completions", "/readyz")
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            ready = json.load(reply)
    except (OSError, ValueError) as e:
        raise ChildFailed(f"{target.name}: /readyz failed: {e}\n{target.process.tail()}") from None
    if ready.get("store") != "ok":
        raise ChildFailed(f"{target.name}: store not ready: {ready}\n{target.process.tail()}")


def _clean_redis(bench: Run) -> int:
    """Delete this run's limit keys (`sp:{limits}:<kind>:<key>`, every key naming the run's
    client or model, hence its nonce); how many were deleted."""
    try:
        import redis  # the gateway's own dependency

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"sp:{{limits}}:*{bench.nonce}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
        return len(keys)
    except Exception as e:  # cleanup must not hide the result
        print(f"bench_admission: could not delete the Redis keys: {e}", file=sys.stderr)
        return -1


# --- the Redis server's counters ------------------------------------------------------------


class RedisCounters:
    """`INFO commandstats` and `INFO cpu` of the Redis server, before and after a measurement.
    Anything else using this Redis meanwhile is counted too: the sqlite and none targets, which
    make no script call of their own, show how much."""

    def __init__(self) -> None:
        import redis

        self._client = redis.Redis.from_url(REDIS_URL)

    def sample(self) -> dict[str, float]:
        stats = self._client.info("commandstats")
        cpu = self._client.info("cpu")

        def calls(name: str) -> float:
            return float(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

        return {
            "evalsha": calls("evalsha"),
            "eval": calls("eval"),
            "evalsha_usec": float(stats.get("cmdstat_evalsha", {}).get("usec", 0)),
            # Redis 7 counts the commands a script runs too (TIME, GET, ... inside EVALSHA)
            "all_calls": sum(float(v.get("calls", 0)) for v in stats.values()),
            "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        }

    def ping_ms(self, count: int) -> dict[str, float]:
        """Round trips of PING from this (Python, synchronous) client: a scale for "one Redis
        round trip"."""
        import openloop

        times = []
        for _ in range(count):
            started = time.perf_counter()
            self._client.ping()
            times.append(time.perf_counter() - started)
        return openloop.percentiles(times)

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, Any]:
        d = {k: after[k] - before[k] for k in before}
        return per_request(
            {
                "evalsha_calls": int(d["evalsha"]),
                "eval_calls": int(d["eval"]),
                "evalsha_usec": int(d["evalsha_usec"]),
                "commands": int(d["all_calls"]) - 2,  # minus our own INFOs
                "redis_cpu_us": round(1e6 * d["cpu_s"]),
                "requests": requests,
            }
        )

    def close(self) -> None:
        self._client.close()


_RAW = ("evalsha_calls", "eval_calls", "evalsha_usec", "commands", "redis_cpu_us", "requests")


def per_request(raw: dict[str, Any]) -> dict[str, Any]:
    """Redis's counters over a measurement (`_RAW`), and per request that reached the mock."""
    per = max(1, raw["requests"])
    calls = raw["evalsha_calls"] + raw["eval_calls"]
    return {
        **{k: raw[k] for k in _RAW},
        "evalsha_per_request": round(calls / per, 3),
        "script_usec_per_call": (
            round(raw["evalsha_usec"] / raw["evalsha_calls"], 2) if raw["evalsha_calls"] else 0.0
        ),
        "commands_per_request": round(raw["commands"] / per, 3),
        "redis_cpu_us_per_request": round(raw["redis_cpu_us"] / per, 1),
    }


# --- measuring --------------------------------------------------------------------------------


def run(
    children: Children, settings: Settings, targets: list[Target], bench: Run, smoke: bool
) -> dict[str, Any]:
    before = cpu_busy()
    time.sleep(1.0)  # how busy the machine is with other work, before we add any
    busy_before = [round(100 * (b - a), 1) for a, b in zip(before, cpu_busy(), strict=True)]
    redis_counters = RedisCounters()
    errors: list[str] = []
    results: dict[str, dict[str, Any]] = {
        t.name: {"check": check_answers(t, bench)} for t in targets
    }
    for target in targets:  # connections up, tiktoken and the scripts warm
        _wrk(children, settings, target, bench, settings.warmup)
    for target in targets:
        sat = saturation(children, settings, target, bench, redis_counters)
        results[target.name]["saturation"] = sat
        errors += [f"{target.name}, wrk: {e}" for e in sat["errors"]]
    # The baseline again after the other targets of its store: the noise floor of "added".
    order = [(t, "latency") for t in targets]
    for store in STORES:
        baseline = next(t for t in targets if t.name == f"none-{store}")
        last = max(i for i, (t, _) in enumerate(order) if t.store == store)
        order.insert(last + 1, (baseline, "latency_repeat"))
    # Rounds, each over every target in turn: load from elsewhere that comes and goes lands on
    # some rounds of every target rather than on all rounds of one.
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for number in range(1, settings.rounds + 1):
        for target, slot in order:
            lat = latency(children, settings, target, bench, redis_counters)
            rounds.setdefault((target.name, slot), []).append(lat)
            where = f"{target.name}, {settings.rate}/s, round {number}"
            errors += [f"{where}: {e}" for e in lat["problems"]]
    for (name, slot), measured in rounds.items():
        results[name][slot] = combine(measured)
    ping = redis_counters.ping_ms(200 if smoke else 2000)
    redis_counters.close()
    store_events = {t.name: _store_events(t.process) for t in targets if t.store != "-"}
    for name, events in store_events.items():
        if events["count"]:
            errors.append(f"{name} logged {events['count']} store events: {events['first']}")
    recorded = {
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "rate": settings.rate,
        "rounds": settings.rounds,
        "connections": settings.connections,
        "sut_cpu": settings.sut_cpu,
        "load_cpu": settings.load_cpu,
        "cpu_busy_before_pct": busy_before,
        "redis": REDIS_URL,
        "nonce": bench.nonce,
        "client": bench.client,
        "model": bench.model,
        "limit": LIMIT,
        "budget": BUDGET,
    }
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": recorded,
        "targets": results,
        "comparison": compare(results),
        "redis_ping_ms": ping,
        "store_events": store_events,
        "errors": errors,
    }


def _store_events(gateway: Child) -> dict[str, Any]:
    """The gateway's log lines about its store: unavailable, degraded answers."""
    count, first = 0, None
    with gateway.stderr.open(errors="replace") as log:
        for line in log:
            if "store_unavailable" in line or '"degraded"' in line:
                count += 1
                first = first or line.strip()[:400]
    return {"count": count, "first": first}


def _mock_total(stats_url: str) -> int:
    with urllib.request.urlopen(stats_url, timeout=10) as reply:
        return int(json.load(reply)["total"])


def check_answers(target: Target, bench: Run) -> dict[str, Any]:
    """Two sample requests before measuring: 200s, never degraded; the limits targets' answers
    carry OpenAI's rate-limit headers, the others' do not (no limit applies to them)."""
    seen = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    for _ in (1, 2):
        request = urllib.request.Request(
            target.url, data=target_body(target, bench).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
                seen.append(
                    {h: reply.headers.get(h) for h in (RATELIMIT, "x-ratelimit-limit-tokens",
                                                       LOOP, DEGRADED)}
                )  # fmt: skip
        except OSError as e:  # HTTPError and URLError are OSErrors
            detail = (
                e.read().decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else ""
            )
            message = f"{target.name} failed a sample request: {e} {detail}"
            raise ChildFailed(f"{message}\n{target.process.tail()}") from None
    if any(s[DEGRADED] for s in seen):
        raise ChildFailed(f"{target.name}: degraded answers (the store failed): {seen}")
    if target.kind == "limits":
        if any(s[RATELIMIT] != str(LIMIT["rpm"]) for s in seen):
            raise ChildFailed(
                f"{target.name}: answers without `{RATELIMIT}: {LIMIT['rpm']}`: {seen}"
            )
    elif target.kind != "passthrough" and any(s[RATELIMIT] for s in seen):
        raise ChildFailed(f"{target.name}: rate-limit headers without a limit: {seen}")
    return {"headers": seen}


def target_body(target: Target, bench: Run) -> str:
    return bench.body(target.model)


def _wrk(
    children: Children, settings: Settings, target: Target, bench: Run, seconds: float
) -> wrk.WrkReport:
    env = {"SAVEPOINT_BENCH_BODY": target_body(target, bench)}
    argv = ["wrk", "-t1", f"-c{settings.connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["-s", str(LUA), target.url]
    output = children.run("wrk", pinned(settings.load_cpu, argv), timeout=seconds + 30, env=env)
    return wrk.parse(output)


def saturation(
    children: Children,
    settings: Settings,
    target: Target,
    bench: Run,
    redis_counters: RedisCounters,
) -> dict[str, Any]:
    """One wrk run, with the target's CPU use, the mock's request count and Redis's counters."""
    seen_before, counters = _mock_total(target.mock_stats), redis_counters.sample()
    own, busy = target.process.cpu_seconds(), cpu_busy()
    started = time.monotonic()
    report = _wrk(children, settings, target, bench, settings.duration)
    elapsed = time.monotonic() - started
    own = target.process.cpu_seconds() - own
    busy = [b - a for a, b in zip(busy, cpu_busy(), strict=True)]
    time.sleep(SETTLE_WAIT)
    mock_requests = _mock_total(target.mock_stats) - seen_before
    sat = {
        **report.to_json(),
        "sut_cpu_pct": round(100 * own / elapsed, 1),
        "sut_cpu_us_per_request": round(1e6 * own / max(1, report.requests), 1),
        "cpu_busy_pct": [round(100 * b / elapsed, 1) for b in busy],
        "mock_requests": mock_requests,
        "redis": RedisCounters.delta(counters, redis_counters.sample(), mock_requests),
    }
    sat["errors"] = []
    if report.failed:
        sat["errors"].append(
            f"{report.requests} requests, {report.non_2xx} not 2xx (refused?), "
            f"{report.socket_errors} socket errors\n{target.process.tail(5)}"
        )
    if mock_requests < report.requests:
        sat["errors"].append(f"{report.requests} answers but the mock saw {mock_requests}")
    sat["errors"] += _script_calls(target, sat["redis"])
    return sat


def latency(
    children: Children,
    settings: Settings,
    target: Target,
    bench: Run,
    redis_counters: RedisCounters,
) -> dict[str, Any]:
    spec = {
        "url": target.url,
        "rate": settings.rate,
        "duration": settings.duration,
        "warmup": settings.warmup,
        "body": target_body(target, bench),
    }
    argv = [sys.executable, str(Path(__file__).resolve()), "--openloop-child", json.dumps(spec)]
    timeout = settings.duration + settings.warmup + 30
    seen_before, counters = _mock_total(target.mock_stats), redis_counters.sample()
    out = children.run("openloop", pinned(settings.load_cpu, argv), timeout)
    time.sleep(SETTLE_WAIT)
    result: dict[str, Any] = json.loads(out)
    result["mock_requests"] = _mock_total(target.mock_stats) - seen_before
    result["redis"] = RedisCounters.delta(
        counters, redis_counters.sample(), result["mock_requests"]
    )
    problems = [f"{n} x {error}" for error, n in result["errors"].items()]
    answers, tags = result["answers"], result["answer_headers"]
    if result["mock_requests"] < answers:
        problems.append(f"{answers} answers but the mock saw {result['mock_requests']}")
    if tags.get(DEGRADED):
        problems.append(f"{tags[DEGRADED]} answers with `{DEGRADED}` (the store failed)")
    if target.kind == "limits" and tags.get(RATELIMIT, 0) != answers:
        problems.append(f"only {tags.get(RATELIMIT, 0)} of {answers} answers had `{RATELIMIT}`")
    if target.kind in ("none", "ledger", "guard") and tags.get(RATELIMIT):
        problems.append(f"{tags[RATELIMIT]} answers had `{RATELIMIT}` without a limit")
    # Every request is the same: past `repeats` (20) in the guard's window it is flagged.
    if target.kind in ("guard", "limits") and tags.get(LOOP, 0) < answers / 2:
        problems.append(
            f"only {tags.get(LOOP, 0)} of {answers} answers had `{LOOP}`: is the guard counting?"
        )
    if target.kind in ("none", "ledger") and tags.get(LOOP):
        problems.append(f"{tags[LOOP]} answers had `{LOOP}` with the guard off")
    problems += _script_calls(target, result["redis"])
    result["problems"] = problems
    return result


# EVALSHA calls per request a Redis target must make at least: limits-redis has concurrency
# slots, which are never leased (an admit, and a settle that frees the slot). The guard's
# repeats past its threshold, and the leased rates and budget, take none.
_CALLS = {"limits": 2}


def _script_calls(target: Target, redis: dict[str, Any]) -> list[str]:
    """Too few script calls: admission did not reach Redis as it should (anything else using
    this Redis only adds calls; a settle still running at the count may subtract one or two)."""
    expected = _CALLS.get(target.kind, 0) if target.store == "redis" else 0
    if expected and redis["evalsha_per_request"] < 0.95 * expected:
        return [
            f"{redis['evalsha_per_request']:.2f} EVALSHA per request, expected {expected}: "
            "admission did not reach Redis once per store call"
        ]
    return []


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's latency rounds as one: counts summed, each percentile the median of the
    rounds' (`per_round` keeps them), lateness the worst, behind if any round was."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    def summed(key: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in rounds:
            total.update(r[key])
        return dict(total)

    quantiles = rounds[0]["end_ms"].keys()
    return {
        "rate": rounds[0]["rate"],
        "duration_s": rounds[0]["duration_s"],
        "rounds": len(rounds),
        **{k: sum(r[k] for r in rounds) for k in ("requests", "ok", "requests_sent", "answers")},
        "mock_requests": sum(r["mock_requests"] for r in rounds),
        "errors": summed("errors"),
        "answer_headers": summed("answer_headers"),
        "sent_rate": min(r["sent_rate"] for r in rounds),
        "behind": any(r["behind"] for r in rounds),
        "lateness_ms": {q: max(r["lateness_ms"][q] for r in rounds) for q in quantiles},
        "first_byte_ms": {q: median([r["first_byte_ms"][q] for r in rounds]) for q in quantiles},
        "end_ms": {q: median([r["end_ms"][q] for r in rounds]) for q in quantiles},
        "redis": per_request({k: sum(r["redis"][k] for r in rounds) for k in _RAW}),
        "problems": [p for r in rounds for p in r["problems"]],
        "per_round": [
            {k: r[k] for k in ("end_ms", "lateness_ms", "sent_rate", "behind")} for r in rounds
        ],
    }


# --- the open-loop child: openloop.py's method, counting answer headers -----------------------


def _openloop_child(spec: dict[str, Any]) -> int:
    import uvloop

    report = uvloop.run(_drive(spec))
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """As `openloop.drive`: request i is due at start + i / rate, latency from the due time;
    also counts the answers (warm-up included) carrying each header of interest."""
    import aiohttp
    import openloop

    rate, duration, warmup = float(spec["rate"]), float(spec["duration"]), float(spec["warmup"])
    payload = spec["body"].encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    skipped, counted = round(warmup * rate), max(1, round(duration * rate))
    seen: Counter[str] = Counter()
    answers = 0

    async def one(session: aiohttp.ClientSession, due: float) -> Any:
        nonlocal answers
        sent = time.perf_counter()
        late = sent - due
        first = 0.0
        try:
            async with session.post(spec["url"], data=payload, headers=headers) as reply:
                async for _chunk in reply.content.iter_any():
                    if not first:
                        first = time.perf_counter()
                status = reply.status
                tags = [h for h in (RATELIMIT, LOOP, DEGRADED) if h in reply.headers]
        except TimeoutError:
            return openloop.Sample(sent, late, 0.0, 0.0, "timeout")
        except aiohttp.ClientError as e:
            return openloop.Sample(sent, late, 0.0, 0.0, type(e).__name__)
        end = time.perf_counter()
        if status != 200:
            return openloop.Sample(sent, late, 0.0, 0.0, f"status {status}")
        if not first:
            return openloop.Sample(sent, late, 0.0, 0.0, "empty body")
        answers += 1
        seen.update(tags)
        return openloop.Sample(sent, late, first - due, end - due, None)

    connector = aiohttp.TCPConnector(limit=openloop.MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gc.freeze()
        tasks: list[asyncio.Task[Any]] = []
        start = time.perf_counter() + 0.01
        for i in range(skipped + counted):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, due)))
        done, pending = await asyncio.wait(tasks, timeout=11.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    samples = [
        t.result() if t in done else openloop.Sample(0.0, 0.0, 0.0, 0.0, "unfinished")
        for t in tasks
    ]
    report = openloop.summarize(samples[skipped:], rate, duration, stream=False)
    report["requests_sent"] = len(samples)
    report["answers"] = answers  # warm-up included, as the header counts
    report["answer_headers"] = dict(seen)
    return report


# --- report -------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def _added(target: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The target's p50 and p99 minus the baseline's, round by round (each round measures
    both within seconds of each other); the median of the rounds' differences."""
    per_round = [
        {q: round(t["end_ms"][q] - b["end_ms"][q], 3) for q in ("p50", "p99")}
        for t, b in zip(target["per_round"], base["per_round"], strict=True)
    ]
    median = {q: round(statistics.median(r[q] for r in per_round), 3) for q in ("p50", "p99")}
    return {**median, "per_round": per_round}


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per store: what guard and limits add over that store's baseline (none), same run, same
    rate; and the baseline's own repeat, the noise floor."""
    out: dict[str, Any] = {}
    for store in STORES:
        base = results[f"none-{store}"]
        b_lat, b_sat = base["latency"], base["saturation"]
        entry: dict[str, Any] = {"baseline_repeat_ms": _added(base["latency_repeat"], b_lat)}
        for kind in ("ledger", "guard", "limits"):
            m = results[f"{kind}-{store}"]
            sat = m["saturation"]
            entry[kind] = {
                "added_ms": _added(m["latency"], b_lat),
                "rps_ratio": _ratio(sat["rps"], b_sat["rps"]),
                "cpu_us_added": round(
                    sat["sut_cpu_us_per_request"] - b_sat["sut_cpu_us_per_request"], 1
                ),
                "evalsha_per_request": {
                    "wrk": sat["redis"]["evalsha_per_request"],
                    "openloop": m["latency"]["redis"]["evalsha_per_request"],
                },
            }
        out[store] = entry
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    pinning = (
        f"systems under test on CPU {s['sut_cpu']}, mock + load on CPU {s['load_cpu']}"
        if s["sut_cpu"] is not None
        else "nothing pinned (fewer than two CPUs)"
    )
    lines = [
        f"## Admission: {result['started']}"
        + (" (smoke: numbers mean nothing)" if s.get("smoke") else ""),
        "",
        f"wrk -t1 -c{s['connections']}, {s['duration_s']:g} s per measurement; latency at "
        f"{s['rate']} requests/s (open loop, to the last byte; each percentile the median of "
        f"{s['rounds']} rounds that take the targets in turn); {pinning}; Redis {s['redis']} "
        "(not pinned). guard and limits targets write the usage ledger too (the default).",
        "",
        "| target | store | requests/s | x none | CPU µs/req | CPU used | p50 ms | p99 ms "
        "| EVALSHA/req (wrk / open loop) | Redis CPU µs/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    targets = result["targets"]
    for name, m in targets.items():
        kind, _, store = name.partition("-")
        sat, lat = m["saturation"], m["latency"]
        over_none = (
            f"{_ratio(sat['rps'], targets[f'none-{store}']['saturation']['rps']):.2f}"
            if store
            else "-"
        )
        behind = " (behind)" if lat.get("behind") else ""
        lines.append(
            f"| {kind} | {store or '-'} | {sat['rps']:,.0f} | {over_none} "
            f"| {sat['sut_cpu_us_per_request']:.0f} | {sat['sut_cpu_pct']:.0f}% "
            f"| {lat['end_ms']['p50']:.2f} | {lat['end_ms']['p99']:.2f}{behind} "
            f"| {sat['redis']['evalsha_per_request']:.2f} "
            f"/ {lat['redis']['evalsha_per_request']:.2f} "
            f"| {sat['redis']['redis_cpu_us_per_request']:.0f} |"
        )
        if "latency_repeat" in m:
            again = m["latency_repeat"]
            behind = " (behind)" if again.get("behind") else ""
            lines.append(
                f"| none, again | {store} | | | | "
                f"| {again['end_ms']['p50']:.2f} | {again['end_ms']['p99']:.2f}{behind} "
                f"| - / {again['redis']['evalsha_per_request']:.2f} | |"
            )
    lines += [
        "",
        f"| added by admission at {s['rate']}/s (median of the rounds' differences) "
        "| p50 ms | p99 ms | requests/s vs none "
        "| CPU µs/req added | EVALSHA/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, c in result["comparison"].items():
        for kind in ("ledger", "guard", "limits"):
            k = c[kind]
            lines.append(
                f"| {kind}-{store} minus none-{store} | {k['added_ms']['p50']:+.2f} "
                f"| {k['added_ms']['p99']:+.2f} | {k['rps_ratio']:.2f} "
                f"| {k['cpu_us_added']:+.0f} | {k['evalsha_per_request']['openloop']:.2f} |"
            )
        noise = c["baseline_repeat_ms"]
        lines.append(
            f"| (noise: none-{store} again minus none-{store}) | {noise['p50']:+.2f} "
            f"| {noise['p99']:+.2f} | | | |"
        )
    ping = result["redis_ping_ms"]
    script = {
        n: m["latency"]["redis"]["script_usec_per_call"]
        for n, m in targets.items()
        if n.endswith("-redis") and not n.startswith("none")
    }
    lines += [
        "",
        f"Aims: less than 0.5 ms added at p99 on SQLite; on Redis, at most one script call "
        f"in the request's path (admit; a settle follows the answer). Redis PING round trip from a "
        f"Python client: p50 {ping['p50']:.3f} ms, p99 {ping['p99']:.3f} ms. Server time per "
        "EVALSHA (commandstats usec/calls, open loop): "
        + ", ".join(f"{n} {v:.1f} µs" for n, v in script.items())
        + f". CPU busy before the run (other work): {s['cpu_busy_before_pct']} %.",
    ]
    lines += [f"Note: {note}" for note in notes(result)]
    return "\n".join(lines)


def notes(result: dict[str, Any]) -> list[str]:
    """What makes numbers of this run suspect: other work on the machine, a generator behind
    its schedule, a rate the target cannot sustain, a baseline that moved."""
    s, targets = result["settings"], result["targets"]
    out = []
    if max(s["cpu_busy_before_pct"]) > 10:
        out.append(
            f"other work was using the CPUs before the run ({s['cpu_busy_before_pct']} % busy): "
            "every number is noisier than usual."
        )
    for name, m in targets.items():
        for slot in ("latency", "latency_repeat"):
            if m.get(slot, {}).get("behind"):
                late = m[slot]["lateness_ms"]["p99"]
                out.append(
                    f"{name} ({slot}): the open-loop client was behind its schedule (p99 "
                    f"lateness {late:.1f} ms, {m[slot]['sent_rate']:.0f}/s sent); its latency is "
                    "suspect."
                )
        sat = m["saturation"]
        if s["sut_cpu"] is not None:
            foreign = sat["cpu_busy_pct"][s["sut_cpu"]] - sat["sut_cpu_pct"]
            if sat["sut_cpu_pct"] < 85 and foreign > 15:
                out.append(
                    f"{name}: at saturation it used {sat['sut_cpu_pct']:.0f}% of CPU "
                    f"{s['sut_cpu']} while {foreign:.0f}% more went to other processes there "
                    "(Redis, or work not ours): its requests/s is low; its CPU µs/req holds."
                )
        if s["rate"] > 0.9 * m["saturation"]["rps"]:
            out.append(
                f"{name}: {s['rate']}/s is above 90% of its requests/s "
                f"({m['saturation']['rps']:,.0f}): its latency measures queueing."
            )
    for store, c in result["comparison"].items():
        noise = c["baseline_repeat_ms"]["p99"]
        if abs(noise) > 0.5:
            out.append(
                f"none-{store}'s p99 moved by {noise:+.2f} ms between its two measurements: "
                f"the p99 differences of {store} are within noise."
            )
    return out


if __name__ == "__main__":
    sys.exit(main())

"""Stored answers: are cache hits, durable-run replays and idempotent replays at least as fast
as the bare pass-through proxy in front of an instant upstream, and what does the store add to
a miss?

    python loadtests/bench_replay.py [--duration 5] [--rate 500] [--smoke] [--out FILE]

    CPU 1: mock provider (no delay), wrk / the open-loop client    CPU 0: the systems under test
    load ──> pass-through (loadtests/passthrough.py) ──> mock       the floor
    load ──> gateway on SQLite ──> mock (misses only)               hit replay idem miss nocache
    load ──> gateway on Redis  ──> mock (misses only)               hit replay idem miss nocache

Targets (the same body on every request unless it says "unique"):

    passthrough      the pass-through proxy, the mock answering at once
    hit-<store>      a model with `cache: {enabled: true}`: every request after the first is a hit
    replay-<store>   a model without cache, `X-Savepoint-Run: <id>` and no attempt header:
                     every request after the first replays the journaled answer
    idem-<store>     the model without cache, `Idempotency-Key: bench-<nonce>-<store>` on every
                     request: every request after the first replays the key's stored answer
    miss-<store>     the cached model, a unique body per request: every request is a miss
    nocache-<store>  the model without cache, unique bodies: the baseline of the miss

For each: requests/s at saturation (wrk, `replay.lua`) and p50/p99 at a fixed rate (an
open-loop client, `openloop.py`'s method, here with headers and unique bodies). Before
measuring, two sample requests check the answer headers (`x-savepoint-cache: hit`,
`x-savepoint-replayed: true`, `idempotent-replayed: true`, `x-savepoint-cache: miss`); while
measuring, the mock's request counter must not move for hits and both kinds of replay, and
must count every answer for the others, and every answer's headers are counted again by the
open-loop client. Any error or a hit that was not a hit exits 1. Prints a markdown table,
writes JSON under loadtests/results/. Every process it starts is stopped by PID; the Redis
keys it wrote are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
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
LUA = HERE / "replay.lua"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Misses get a cached model of their own: their entries would evict the hits' one.
CACHED, MISSED, PLAIN = "replay-bench-cached", "replay-bench-missed", "replay-bench-plain"
MARKER = "@N@"  # replaced per request in unique bodies
POLICY = """\
version: 1
store: {store}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-bench
runs: {{retention: 15m}}
models:
  {cached}:
    targets: [up/mock-gpt]
    cache: {{enabled: true, ttl: 15m}}
  {missed}:
    targets: [up/mock-gpt]
    cache: {{enabled: true, ttl: 15m}}
  {plain}:
    targets: [up/mock-gpt]
"""
# What a target's answers must say, and whether the mock may see its requests.
EXPECT = {
    "passthrough": (None, None, True),  # (header, value, reaches the mock)
    "hit": ("x-savepoint-cache", "hit", False),
    "replay": ("x-savepoint-replayed", "true", False),
    "idem": ("idempotent-replayed", "true", False),
    "miss": ("x-savepoint-cache", "miss", True),
    "nocache": (None, None, True),
}
_SEEN_HEADERS = ("x-savepoint-cache", "x-savepoint-replayed", "idempotent-replayed")
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float
    warmup: float
    rate: int
    connections: int
    sut_cpu: int | None
    load_cpu: int | None


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # e.g. "hit-sqlite"
    kind: str  # a key of EXPECT
    store: str  # "-", "sqlite" or "redis"
    url: str
    process: Child
    model: str
    run: str | None  # X-Savepoint-Run
    idempotency_key: str | None  # Idempotency-Key
    unique: bool  # a different body on every request
    mock_stats: str  # the mock's request counter (GET /_mock/stats)

    def headers(self) -> dict[str, str]:
        extra = {"X-Savepoint-Run": self.run} if self.run else {}
        if self.idempotency_key:
            extra["Idempotency-Key"] = self.idempotency_key
        return {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", **extra}


class Bodies:
    """Request bodies: fixed per target, or with a fresh prefix for every use of a unique one
    (so no two load runs, nor two benchmark runs against the same Redis, share a body)."""

    def __init__(self) -> None:
        self.nonce = uuid.uuid4().hex[:12]
        self._uses = 0

    def body(self, target: Target, marker: str | None = None) -> dict[str, Any]:
        text = f"Say hello to the benchmark. {self.nonce} {target.name}"
        if target.unique:
            self._uses += 1
            text += f" {self._uses}-{marker or MARKER}"
        return {
            "model": target.model,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": text},
            ],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rate", type=int, default=500, help="open-loop requests per second")
    parser.add_argument("--smoke", action="store_true", help="tiny run: proves it works")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    parser.add_argument("--openloop-child", help=argparse.SUPPRESS)  # internal: the load child
    args = parser.parse_args()
    if args.openloop_child:
        return _openloop_child(json.loads(args.openloop_child))
    settings = _settings(args.duration, args.rate, args.smoke)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the children
    with tempfile.TemporaryDirectory(prefix="savepoint-bench-replay-") as work:
        children = Children(Path(work))
        bodies = Bodies()
        targets: list[Target] = []
        try:
            targets = start_targets(children, settings, Path(work), bodies)
            result = run(children, settings, targets, bodies)
        except ChildFailed as e:
            print(f"bench_replay: FAILED: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench_replay: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            _clean_redis(targets)
            children.stop_all()
    result["settings"]["smoke"] = args.smoke
    print(markdown(result))
    out = args.out or HERE / "results" / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    if result["errors"]:
        print("bench_replay: FAILED:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


def _settings(duration: float, rate: int, smoke: bool) -> Settings:
    cpus = sorted(os.sched_getaffinity(0))
    sut, load = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if smoke:
        return Settings(1.0, 0.2, min(rate, 200), 8, sut, load)
    return Settings(duration, min(1.0, duration / 4), rate, 64, sut, load)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# --- processes ------------------------------------------------------------------------------


def start_targets(
    children: Children, settings: Settings, work: Path, bodies: Bodies
) -> list[Target]:
    python = sys.executable
    mock_port, pass_port = free_port(), free_port()
    mock_argv = [python, "-m", "gateway", "mock", "--port", str(mock_port)]  # no delay
    mock = children.start("mock", pinned(settings.load_cpu, mock_argv))
    upstream = f"http://127.0.0.1:{mock_port}"
    pass_argv = [python, str(HERE / "passthrough.py"), "--port", str(pass_port)]
    passthrough = children.start(
        "passthrough", pinned(settings.sut_cpu, [*pass_argv, "--upstream", upstream])
    )
    listening = [(mock, mock_port), (passthrough, pass_port)]
    gateways: dict[str, tuple[Child, int]] = {}
    for store, spec in (
        ("sqlite", f"{{path: {json.dumps(str(work / 'savepoint.db'))}}}"),
        ("redis", f"{{kind: redis, url: {json.dumps(REDIS_URL)}}}"),
    ):
        policy = work / f"policy-{store}.yaml"
        policy.write_text(
            POLICY.format(
                store=spec, mock_port=mock_port, cached=CACHED, missed=MISSED, plain=PLAIN
            )
        )
        port = free_port()
        argv = [python, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
                "--workers", "1"]  # fmt: skip
        # The gateway's stderr is its access log: a file, never a pipe.
        gateways[store] = (children.start(f"gateway-{store}", pinned(settings.sut_cpu, argv)), port)
        listening.append(gateways[store])
    for child, port in listening:
        child.wait_listening(port)
    for store, (child, port) in gateways.items():
        _check_ready(child, port, store)
    path = "/v1/chat/completions"
    targets = [
        Target("passthrough", "passthrough", "-", f"http://127.0.0.1:{pass_port}{path}",
               passthrough, "mock-gpt", None, None, False, f"{upstream}/_mock/stats"),
    ]  # fmt: skip
    for kind, model, unique in (
        ("hit", CACHED, False),
        ("replay", PLAIN, False),
        ("idem", PLAIN, False),
        ("miss", MISSED, True),
        ("nocache", PLAIN, True),
    ):
        for store, (child, port) in gateways.items():
            run_id = f"bench-{bodies.nonce}-{store}" if kind == "replay" else None
            idem_key = f"bench-{bodies.nonce}-{store}" if kind == "idem" else None
            url = f"http://127.0.0.1:{port}{path}"
            targets.append(
                Target(f"{kind}-{store}", kind, store, url, child, model, run_id, idem_key,
                       unique, f"{upstream}/_mock/stats")
            )  # fmt: skip
    return targets


def _check_ready(child: Child, port: int, store: str) -> None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            ready = json.load(reply)
    except (OSError, ValueError) as e:
        raise ChildFailed(f"gateway-{store}: /readyz failed: {e}\n{child.tail()}") from None
    if ready.get("store") != "ok":
        raise ChildFailed(f"gateway-{store}: store not ready: {ready}\n{child.tail()}")


def _clean_redis(targets: list[Target]) -> None:
    """Drop what the Redis gateway wrote: the runs' journals (admin API), the cache's keys
    and the idempotency records (`sp:{idem:<record key>}` and its `:log`)."""
    for target in targets:
        if target.store == "redis" and target.run:
            admin = target.url.replace("/v1/chat/completions", f"/admin/runs/{target.run}")
            try:
                urllib.request.urlopen(urllib.request.Request(admin, method="DELETE"), timeout=5)
            except OSError as e:
                print(f"bench_replay: could not drop run {target.run}: {e}", file=sys.stderr)
    if not any(t.store == "redis" for t in targets):
        return
    try:
        import redis  # the gateway's own dependency

        client = redis.Redis.from_url(REDIS_URL)
        keys = [
            key
            for model in (CACHED, MISSED)
            for key in client.scan_iter(match=f"sp:{{cache:{model}}}:*", count=1000)
        ]
        keys += [
            name
            for record in _idem_records(targets)
            for name in (f"sp:{{idem:{record}}}", f"sp:{{idem:{record}}}:log")
        ]
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
    except Exception as e:  # cleanup must not hide the result
        print(f"bench_replay: could not delete the Redis keys: {e}", file=sys.stderr)


def _idem_records(targets: list[Target]) -> list[str]:
    """The store keys of the Redis idempotency records: per client, and with auth off (the
    benchmark's policy has no clients) every caller is the same anonymous client."""
    from gateway.decide.auth import authenticate
    from gateway.decide.idempotency import record_key

    client = authenticate({}, "sk-bench").name
    return [
        record_key(client, t.idempotency_key)
        for t in targets
        if t.store == "redis" and t.idempotency_key
    ]


# --- measuring --------------------------------------------------------------------------------


def run(
    children: Children, settings: Settings, targets: list[Target], bodies: Bodies
) -> dict[str, Any]:
    before = cpu_busy()
    time.sleep(1.0)  # how busy the machine is with other work, before we add any
    busy_before = [round(100 * (b - a), 1) for a, b in zip(before, cpu_busy(), strict=True)]
    mock = targets[0].mock_stats
    errors: list[str] = []
    checks = {t.name: check_answers(t, bodies) for t in targets}
    results: dict[str, dict[str, Any]] = {t.name: {"check": checks[t.name]} for t in targets}
    for target in targets:  # connections up; hits and replays primed
        _wrk(children, settings, target, bodies, settings.warmup)
    for target in targets:
        sat = saturation(children, settings, target, bodies, mock)
        results[target.name]["saturation"] = sat
        errors += [f"{target.name}, wrk: {e}" for e in sat["errors"]]
    for target in targets:
        lat = latency(children, settings, target, bodies, mock)
        results[target.name]["latency"] = lat
        errors += [f"{target.name}, {settings.rate}/s: {e}" for e in lat["problems"]]
    for target in targets:
        if target.run:
            results[target.name]["journal_steps"] = _journal_steps(target)
    gateways = {t.store: t.process for t in targets if t.store != "-"}
    store_events = {store: _store_events(child) for store, child in gateways.items()}
    for store, events in store_events.items():
        if events["count"]:
            errors.append(
                f"gateway-{store} logged {events['count']} store events: {events['first']}"
            )
    recorded = {
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "rate": settings.rate,
        "connections": settings.connections,
        "sut_cpu": settings.sut_cpu,
        "load_cpu": settings.load_cpu,
        "cpu_busy_before_pct": busy_before,
        "redis": REDIS_URL,
    }
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": recorded,
        "targets": results,
        "comparison": compare(results),
        "store_events": store_events,
        "errors": errors,
    }


def _journal_steps(target: Target) -> int | None:
    """How many step entries the run's journal holds (one per live answer; replays write
    nothing, so 1 for the benchmark's runs)."""
    url = target.url.replace("/v1/chat/completions", f"/admin/runs/{target.run}")
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return len(json.load(reply)["steps"])
    except (OSError, ValueError, KeyError):
        return None


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


def check_answers(target: Target, bodies: Bodies) -> dict[str, Any]:
    """Two identical requests before measuring; the second must say what the target is about
    (a hit, a replay, an idempotent replay, a miss). Unique targets send a fresh body both times."""
    header, value, _ = EXPECT[target.kind]
    seen = []
    body = bodies.body(target, "check-1")
    for attempt in (1, 2):
        if target.unique:
            body = bodies.body(target, f"check-{attempt}")
        request = urllib.request.Request(
            target.url, data=json.dumps(body).encode(), headers=target.headers()
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
                seen.append({h: reply.headers.get(h) for h in _SEEN_HEADERS})
        except OSError as e:  # HTTPError and URLError are OSErrors
            detail = (
                e.read().decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else ""
            )
            message = f"{target.name} failed a sample request: {e} {detail}"
            raise ChildFailed(f"{message}\n{target.process.tail()}") from None
    if header is not None and seen[1].get(header) != value:
        raise ChildFailed(
            f"{target.name}: the second sample request was not `{header}: {value}`: {seen}"
        )
    if target.kind == "nocache" and any(s["x-savepoint-cache"] for s in seen):
        raise ChildFailed(f"{target.name}: a model without cache answered with {seen}")
    return {"headers": seen}


def _wrk(
    children: Children, settings: Settings, target: Target, bodies: Bodies, seconds: float
) -> wrk.WrkReport:
    env = {"SAVEPOINT_BENCH_BODY": json.dumps(bodies.body(target))}
    if target.run:
        env["SAVEPOINT_BENCH_RUN"] = target.run
    if target.idempotency_key:
        env["SAVEPOINT_BENCH_IDEMPOTENCY_KEY"] = target.idempotency_key
    if target.unique:
        env["SAVEPOINT_BENCH_UNIQUE"] = MARKER
    argv = ["wrk", "-t1", f"-c{settings.connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["-s", str(LUA), target.url]
    output = children.run("wrk", pinned(settings.load_cpu, argv), timeout=seconds + 30, env=env)
    return wrk.parse(output)


def saturation(
    children: Children, settings: Settings, target: Target, bodies: Bodies, mock: str
) -> dict[str, Any]:
    """One wrk run, with the target's CPU use and the mock's request count meanwhile."""
    seen_before = _mock_total(mock)
    own, busy = target.process.cpu_seconds(), cpu_busy()
    started = time.monotonic()
    report = _wrk(children, settings, target, bodies, settings.duration)
    elapsed = time.monotonic() - started
    own = target.process.cpu_seconds() - own
    busy = [b - a for a, b in zip(busy, cpu_busy(), strict=True)]
    sat = {
        **report.to_json(),
        "sut_cpu_pct": round(100 * own / elapsed, 1),
        "sut_cpu_us_per_request": round(1e6 * own / max(1, report.requests), 1),
        "cpu_busy_pct": [round(100 * b / elapsed, 1) for b in busy],
        "mock_requests": _mock_total(mock) - seen_before,
    }
    sat["errors"] = _load_errors(target, report.requests, sat["mock_requests"])
    if report.failed:
        sat["errors"].insert(
            0,
            f"{report.requests} requests, {report.non_2xx} not 2xx, "
            f"{report.socket_errors} socket errors\n{target.process.tail(5)}",
        )
    return sat


def _load_errors(target: Target, answers: int, mock_requests: int) -> list[str]:
    _, _, reaches_mock = EXPECT[target.kind]
    if reaches_mock and mock_requests < answers:
        return [f"{answers} answers but the mock saw only {mock_requests} requests"]
    if not reaches_mock and mock_requests > 0:
        return [f"the mock saw {mock_requests} requests: not every answer was stored"]
    return []


def latency(
    children: Children, settings: Settings, target: Target, bodies: Bodies, mock: str
) -> dict[str, Any]:
    spec = {
        "url": target.url,
        "rate": settings.rate,
        "duration": settings.duration,
        "warmup": settings.warmup,
        "body": json.dumps(bodies.body(target)),
        "headers": target.headers(),
        "marker": MARKER if target.unique else None,
    }
    argv = [sys.executable, str(Path(__file__).resolve()), "--openloop-child", json.dumps(spec)]
    timeout = settings.duration + settings.warmup + 30
    seen_before = _mock_total(mock)
    out = children.run("openloop", pinned(settings.load_cpu, argv), timeout)
    result: dict[str, Any] = json.loads(out)
    result["mock_requests"] = _mock_total(mock) - seen_before
    problems = [f"{n} x {error}" for error, n in result["errors"].items()]
    # The warm-up's requests are sent but not counted: compare the mock with all of them.
    problems += _load_errors(target, result["requests_sent"], result["mock_requests"])
    header, value, _ = EXPECT[target.kind]
    if header is not None:
        wrong = {k: n for k, n in result["answer_headers"].items() if k != f"{header}: {value}"}
        if wrong:
            problems.append(f"answers not `{header}: {value}`: {wrong}")
    result["problems"] = problems
    return result


# --- the open-loop child: openloop.py's method, with headers and unique bodies ----------------


def _openloop_child(spec: dict[str, Any]) -> int:
    import uvloop

    report = uvloop.run(_drive(spec))
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """As `openloop.drive`: request i is due at start + i / rate, latency from the due time;
    request i's body has `marker` replaced by i (when a marker is given)."""
    import aiohttp
    import openloop

    rate, duration, warmup = float(spec["rate"]), float(spec["duration"]), float(spec["warmup"])
    body: str = spec["body"]
    head, _, tail = body.partition(spec["marker"]) if spec["marker"] else (body, "", "")
    unique = bool(spec["marker"])
    headers: dict[str, str] = spec["headers"]
    # bench.py's options: streams must end with [DONE]; a longer per-request timeout
    stream, request_timeout = bool(spec.get("stream")), float(spec.get("timeout", 10.0))
    skipped, counted = round(warmup * rate), max(1, round(duration * rate))
    seen: Counter[str] = Counter()

    async def one(session: aiohttp.ClientSession, payload: bytes, due: float) -> Any:
        sent = time.perf_counter()
        late = sent - due
        first = 0.0
        last = b""
        try:
            async with session.post(spec["url"], data=payload, headers=headers) as reply:
                async for chunk in reply.content.iter_any():
                    if not first:
                        first = time.perf_counter()
                    last = (last + chunk)[-len(_DONE) :]
                status = reply.status
                tags = [f"{h}: {reply.headers[h]}" for h in _SEEN_HEADERS if h in reply.headers]
        except TimeoutError:
            return openloop.Sample(sent, late, 0.0, 0.0, "timeout")
        except aiohttp.ClientError as e:
            return openloop.Sample(sent, late, 0.0, 0.0, type(e).__name__)
        end = time.perf_counter()
        if status != 200:
            return openloop.Sample(sent, late, 0.0, 0.0, f"status {status}")
        if not first:
            return openloop.Sample(sent, late, 0.0, 0.0, "empty body")
        if stream and last != _DONE:
            return openloop.Sample(sent, late, 0.0, 0.0, "stream without [DONE]")
        seen.update(tags or ["(none)"])
        return openloop.Sample(sent, late, first - due, end - due, None)

    connector = aiohttp.TCPConnector(limit=openloop.MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        payloads = [
            (f"{head}{i}{tail}" if unique else body).encode() for i in range(skipped + counted)
        ]
        gc.freeze()
        tasks: list[asyncio.Task[Any]] = []
        start = time.perf_counter() + 0.01
        for i, payload in enumerate(payloads):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, payload, due)))
        done, pending = await asyncio.wait(tasks, timeout=request_timeout + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    samples = [
        t.result() if t in done else openloop.Sample(0.0, 0.0, 0.0, 0.0, "unfinished")
        for t in tasks
    ]
    report = openloop.summarize(samples[skipped:], rate, duration, stream)
    report["requests_sent"] = len(samples)
    report["answer_headers"] = dict(seen)  # warm-up included
    return report


# --- report -------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else 0.0


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    floor = results["passthrough"]["saturation"]
    over_floor = {}
    for name, measured in results.items():
        if name.startswith(("hit-", "replay-", "idem-")):
            sat = measured["saturation"]
            over_floor[name] = {
                "rps_ratio": _ratio(sat["rps"], floor["rps"]),
                # pass-through CPU per answer over the target's: the steadier estimate
                "cpu_ratio": _ratio(floor["sut_cpu_us_per_request"], sat["sut_cpu_us_per_request"]),
            }
    miss_added = {}
    for store in ("sqlite", "redis"):
        miss, base = results[f"miss-{store}"]["latency"], results[f"nocache-{store}"]["latency"]
        miss_added[store] = {
            q: round(miss["end_ms"][q] - base["end_ms"][q], 3) for q in ("p50", "p99")
        }
    return {"over_passthrough": over_floor, "miss_added_ms": miss_added}


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    pinning = (
        f"system under test on CPU {s['sut_cpu']}, mock + load on CPU {s['load_cpu']}"
        if s["sut_cpu"] is not None
        else "nothing pinned (fewer than two CPUs)"
    )
    lines = [
        f"## Stored answers: {result['started']}"
        + (" (smoke: numbers mean nothing)" if s.get("smoke") else ""),
        "",
        f"wrk -t1 -c{s['connections']}, {s['duration_s']:g} s per measurement; latency at "
        f"{s['rate']} requests/s (open loop, to the last byte); {pinning}; Redis {s['redis']}.",
        "",
        "| target | store | requests/s | x pass-through | CPU µs/req | CPU used | p50 ms | p99 ms "
        "| mock calls (wrk / open loop) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor = result["targets"]["passthrough"]["saturation"]["rps"]
    for name, m in result["targets"].items():
        sat, lat = m["saturation"], m["latency"]
        behind = " (behind)" if lat.get("behind") else ""
        lines.append(
            f"| {name.rsplit('-', 1)[0] if '-' in name else name} "
            f"| {name.rsplit('-', 1)[1] if '-' in name else '-'} "
            f"| {sat['rps']:,.0f} | {_ratio(sat['rps'], floor):.2f} "
            f"| {sat['sut_cpu_us_per_request']:.0f} | {sat['sut_cpu_pct']:.0f}% "
            f"| {lat['end_ms']['p50']:.2f} | {lat['end_ms']['p99']:.2f}{behind} "
            f"| {sat['mock_requests']:,} / {lat['mock_requests']:,} |"
        )
    c = result["comparison"]
    lines += [
        "",
        "| ratio | requests/s | CPU per request (pass-through / target) |",
        "| --- | ---: | ---: |",
    ]
    for name, r in c["over_passthrough"].items():
        lines.append(f"| {name} / pass-through | {r['rps_ratio']:.2f} | {r['cpu_ratio']:.2f} |")
    lines += [
        "",
        f"| what the store adds to a miss at {s['rate']}/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
    ]
    for store, added in c["miss_added_ms"].items():
        lines.append(
            f"| miss-{store} minus nocache-{store} | {added['p50']:+.2f} | {added['p99']:+.2f} |"
        )
    journals = {n: m["journal_steps"] for n, m in result["targets"].items() if "journal_steps" in m}
    lines += [
        "",
        f"CPU busy before the run (other work): {s['cpu_busy_before_pct']} %. "
        f"Step entries in each run's journal at the end (one per live answer, so 1: replays "
        f"write nothing): "
        + ", ".join(f"{n} {v:,}" if v is not None else f"{n} ?" for n, v in journals.items())
        + ".",
    ]
    if any(m["latency"].get("behind") for m in result["targets"].values()):
        lines.append(
            "(behind): the open-loop client could not keep its schedule; its latency is suspect."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

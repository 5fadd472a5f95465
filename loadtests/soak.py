"""Soak: does one gateway worker keep flat memory under sustained, mixed load?

    python loadtests/soak.py [--rate 300] [--minutes 10] [--store redis] [--smoke] [--out FILE]

    this process (open-loop client, RSS sampler) ──> gateway --workers 1 ──> mock
                                                     SQLite store in a temp dir, or
                                                     (--store redis) a redis-server of its own

The gateway runs a production-like policy: authentication (one client key, `sk-bench`), the
client's rpm and tpm limits and a daily token budget (set high: they are checked and written
on every request, never refuse), a model with the response cache, the usage ledger (on by
default). Requests are sent open loop at `--rate` per second (request i is due at
start + i/rate, whatever the gateway does), drawn in fixed proportions from these kinds:

    miss         chat, the cached model, a body never sent before           200
    hit          chat, the cached model, one of 20 bodies sent again         200
    stream       streamed chat, uncached model, a new body                  200, ends [DONE]
    idem-new     chat with a new Idempotency-Key (and a new body)            200
    idem-repeat  one of the last 500 keys again, with its body (a replay)    200
    run          X-Savepoint-Run: a new run every 20 requests of the kind,   200
                 5 distinct steps each (5 live calls, then replays)
    embed        embeddings, a new input                                     200
    bad-json     a body that is not JSON                                     400
    bad-model    a model the policy does not have                            404

Any other status (a 5xx, a 4xx that was not deliberate, a connection error, a stream that did
not end with [DONE]) is unexpected. The gateway's RSS (VmRSS in /proc/PID/status) is sampled
every 5 s. Warm-up is the first fifth of the run (2 minutes of 10); growth is the median RSS
of the last tenth of the run (the last minute) over the median of the tenth right after
warm-up (the minute after it), minus one. Exit 1 if growth is 5% or more or any answer was
unexpected. Prints a table (RSS over time, requests by kind, growth), writes JSON under
loadtests/results/. `--smoke`: about 20 s at 100/s with 1 s samples; growth is printed but not
judged (there is no steady state to judge in 20 s). Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from processes import ChildFailed, Children, free_port, measured

HERE = Path(__file__).resolve().parent
KEY = "sk-bench"
CACHED, PLAIN, EMBED = "soak-cached", "soak-plain", "soak-embed"
POLICY = """\
version: 1
store: {store}
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider
clients:
  soak:
    key_sha256: {key_sha256}
    limits: {{rpm: 1000000, tpm: 1000000000}}
    budget: {{tokens: 100000000000, period: day}}
models:
  {cached}:
    targets: [up/mock-gpt]
    cache: {{enabled: true, ttl: 15m}}
  {plain}:
    targets: [up/mock-gpt]
  {embed}:
    targets: [up/mock-embed]
"""
# kind -> requests of it in every 100
MIX = {"miss": 30, "hit": 15, "stream": 15, "idem-new": 7, "idem-repeat": 5, "run": 10,
       "embed": 10, "bad-json": 5, "bad-model": 3}  # fmt: skip
EXPECTED = {"bad-json": 400, "bad-model": 404}  # every other kind: 200
GROWTH_LIMIT = 0.05
_DONE = b"data: [DONE]\n\n"
_STORED = ("x-savepoint-cache", "x-savepoint-replayed", "idempotent-replayed")


@dataclass(frozen=True, slots=True)
class Settings:
    rate: float
    seconds: float
    sample_every: float
    smoke: bool
    store: str  # sqlite, or redis: a redis-server of its own, started and stopped by the run

    @property
    def warmup(self) -> float:
        return self.seconds / 5

    @property
    def window(self) -> float:
        return self.seconds / 10


@dataclass(slots=True)
class Tally:
    """Answers of one kind."""

    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    stored: int = 0  # answered from the store: a cache hit, a run or idempotent replay
    seconds: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # the first few unexpected answers

    def add(self, status: str, ok: bool, took: float, stored: bool) -> None:
        self.statuses[status] += 1
        self.stored += stored
        self.seconds.append(took)
        if not ok:
            self.unexpected += 1


class Load:
    """What each request of the mix sends: kind i of the schedule -> method, headers, body."""

    def __init__(self) -> None:
        self._serial = 0
        self._keys: deque[tuple[str, bytes]] = deque(maxlen=500)
        self._runs = 0
        self._order = [kind for kind, n in MIX.items() for _ in range(n)]
        self._nonce = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:8]

    def kind(self, i: int) -> str:
        # spread each kind over the hundred (a stride coprime with 100), not in blocks
        return self._order[(i * 37) % len(self._order)]

    def request(self, kind: str) -> tuple[str, dict[str, str], bytes]:
        """(path, extra headers, body)."""
        self._serial += 1
        n = f"{self._nonce}-{self._serial}"
        if kind == "miss":
            return "/chat/completions", {}, _chat(CACHED, f"miss {n}")
        if kind == "hit":
            return "/chat/completions", {}, _chat(CACHED, f"hit {self._serial % 20}")
        if kind == "stream":
            return "/chat/completions", {}, _chat(PLAIN, f"stream {n}", stream=True)
        if kind == "idem-new" or (kind == "idem-repeat" and not self._keys):
            key, body = f"soak-{n}", _chat(PLAIN, f"idem {n}")
            self._keys.append((key, body))
            return "/chat/completions", {"Idempotency-Key": key}, body
        if kind == "idem-repeat":
            key, body = self._keys[self._serial % len(self._keys)]
            return "/chat/completions", {"Idempotency-Key": key}, body
        if kind == "run":
            self._runs += 1
            run, step = f"soak-{self._nonce}-{self._runs // 20}", self._runs % 5
            return "/chat/completions", {"X-Savepoint-Run": run}, _chat(PLAIN, f"step {step}")
        if kind == "embed":
            return "/embeddings", {}, orjson.dumps({"model": EMBED, "input": f"embed {n}"})
        if kind == "bad-json":
            return "/chat/completions", {}, b'{"model": "soak-plain", "messages": ['
        assert kind == "bad-model", kind
        return "/chat/completions", {}, _chat("no-such-model", f"nobody {n}")


def _chat(model: str, text: str, stream: bool = False) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--smoke", action="store_true", help="about 20 s: proves it works")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    args = parser.parse_args()
    if args.smoke:
        settings = Settings(100.0, 20.0, 1.0, smoke=True, store=args.store)
    else:
        settings = Settings(args.rate, args.minutes * 60, 5.0, smoke=False, store=args.store)
    out = args.out or HERE / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = measured("soak", lambda children, work: run(children, work, settings), out)
    if result is None:
        return 1
    print(table(result))
    print(f"results: {out}")
    for problem in result["problems"]:
        print(f"soak: {problem}", file=sys.stderr)
    return 1 if result["problems"] else 0


def run(children: Children, work: Path, settings: Settings) -> dict[str, Any]:
    python = sys.executable
    mock_port, port = free_port(), free_port()
    mock = children.start("mock", [python, "-m", "gateway", "mock", "--port", str(mock_port)])
    mock.wait_listening(mock_port)
    store = f'{{path: "{work / "soak.db"}"}}'
    if settings.store == "redis":  # its own server: nothing is left in a shared one
        redis_port = free_port()
        argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]  # fmt: skip
        children.start("redis", argv).wait_listening(redis_port)
        store = f"{{kind: redis, url: 'redis://127.0.0.1:{redis_port}/0'}}"
    policy = work / "policy.yaml"
    policy.write_text(POLICY.format(
        store=store, mock_port=mock_port, cached=CACHED, plain=PLAIN, embed=EMBED,
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
    ))  # fmt: skip
    argv = [python, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
            "--workers", "1"]  # fmt: skip
    # The gateway's stderr is its access log: a file, never a pipe.
    gateway = children.start("gateway", argv)
    gateway.wait_listening(port)
    started_cpu = gateway.cpu_seconds()
    driven = uvloop.run(drive(f"http://127.0.0.1:{port}/v1", gateway.pid, settings))
    cpu = gateway.cpu_seconds() - started_cpu
    samples: list[tuple[float, int]] = driven["samples"]
    tallies: dict[str, Tally] = driven["tallies"]
    growth = rss_growth(samples, settings)
    problems = []
    unexpected = {kind: t.unexpected for kind, t in tallies.items() if t.unexpected}
    if unexpected:
        examples = {kind: t.examples for kind, t in tallies.items() if t.examples}
        problems.append(f"unexpected answers {unexpected}: {examples}")
    if not samples:
        problems.append("no RSS sample")
    if not settings.smoke and growth["growth"] is not None and growth["growth"] >= GROWTH_LIMIT:
        problems.append(f"RSS grew {growth['growth']:.1%} after warm-up (limit {GROWTH_LIMIT:.0%})")
    sent = sum(sum(t.statuses.values()) for t in tallies.values())
    return {
        "settings": {**asdict(settings), "warmup": settings.warmup, "window": settings.window},
        "requests": sent,
        "achieved_rate": round(sent / settings.seconds, 1),
        "max_late_s": round(driven["max_late"], 3),
        "gateway_cpu_s": round(cpu, 1),
        "kinds": {
            kind: {
                "statuses": dict(t.statuses),
                "unexpected": t.unexpected,
                "from_store": t.stored,
                "p50_ms": _ms(t.seconds, 0.5),
                "p99_ms": _ms(t.seconds, 0.99),
                "examples": t.examples,
            }
            for kind, t in tallies.items()
        },
        "rss_kb": samples,
        **growth,
        "problems": problems,
    }


async def drive(base: str, pid: int, settings: Settings) -> dict[str, Any]:
    """Send the mix open loop for `settings.seconds`, sampling the gateway's RSS meanwhile."""
    load = Load()
    tallies = {kind: Tally() for kind in MIX}
    samples: list[tuple[float, int]] = []
    pending: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    max_late = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        sampler = asyncio.create_task(_sample(pid, start, settings, samples))

        async def one(kind: str, due: float) -> None:
            path, extra, body = load.request(kind)
            tally = tallies[kind]
            try:
                async with session.post(base + path, data=body, headers={**headers, **extra}) as r:
                    data = await r.read()
                    status = str(r.status)
                    ok = r.status == EXPECTED.get(kind, 200)
                    stored = any(r.headers.get(name) in ("hit", "true") for name in _STORED)
                    if ok and kind == "stream" and not data.endswith(_DONE):
                        status, ok = "cut stream", False
            except (aiohttp.ClientError, TimeoutError) as e:
                data, status, ok, stored = repr(e).encode(), type(e).__name__, False, False
            tally.add(status, ok, time.monotonic() - due, stored)
            if not ok and len(tally.examples) < 3:
                tally.examples.append(f"{status}: {data[:300]!r}")

        total = int(settings.rate * settings.seconds)
        for i in range(total):
            due = start + i / settings.rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                max_late = max(max_late, -wait)
            task = asyncio.create_task(one(load.kind(i), due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=35)
        sampler.cancel()
    return {"tallies": tallies, "samples": samples, "max_late": max_late}


async def _sample(
    pid: int, start: float, settings: Settings, samples: list[tuple[float, int]]
) -> None:
    while True:
        samples.append((round(time.monotonic() - start, 1), rss_kb(pid)))
        await asyncio.sleep(settings.sample_every)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ChildFailed(f"no VmRSS for {pid}")


def rss_growth(samples: list[tuple[float, int]], settings: Settings) -> dict[str, Any]:
    """Median RSS of the window right after warm-up, of the last window, and the growth."""
    after = [kb for t, kb in samples if settings.warmup <= t < settings.warmup + settings.window]
    last = [kb for t, kb in samples if t >= settings.seconds - settings.window]
    if not after or not last:
        return {"rss_after_warmup_kb": None, "rss_last_kb": None, "growth": None}
    first, final = statistics.median(after), statistics.median(last)
    return {"rss_after_warmup_kb": first, "rss_last_kb": final,
            "growth": round(final / first - 1, 4)}  # fmt: skip


def _ms(seconds: list[float], q: float) -> float | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"soak ({s['store']}): {result['requests']:,} requests in {s['seconds']:g} s "
        f"({result['achieved_rate']}/s asked {s['rate']:g}/s, the client at most "
        f"{result['max_late_s']} s late), gateway CPU {result['gateway_cpu_s']} s",
        "",
        "| kind | statuses | unexpected | from the store | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, k in result["kinds"].items():
        statuses = ", ".join(f"{code}: {n:,}" for code, n in sorted(k["statuses"].items()))
        lines.append(f"| {kind} | {statuses} | {k['unexpected']} | {k['from_store']:,} | "
                     f"{k['p50_ms']} | {k['p99_ms']} |")  # fmt: skip
    lines += ["", "| t (s) | RSS MB |", "| --- | --- |"]
    samples = result["rss_kb"]
    step = max(1, len(samples) // 20)  # about 20 rows, the last sample always
    for t, kb in [*samples[::step], *([samples[-1]] if (len(samples) - 1) % step else [])]:
        lines.append(f"| {t:g} | {kb / 1024:.1f} |")
    if result["growth"] is None:
        lines.append("\ngrowth: not enough samples")
    else:
        verdict = "not judged (smoke)" if s["smoke"] else (
            "ok" if result["growth"] < GROWTH_LIMIT else "FAIL")  # fmt: skip
        lines.append(
            f"\nRSS after warm-up ({s['warmup']:g}-{s['warmup'] + s['window']:g} s, median) "
            f"{result['rss_after_warmup_kb'] / 1024:.1f} MB, last {s['window']:g} s "
            f"{result['rss_last_kb'] / 1024:.1f} MB: growth {result['growth']:+.1%} "
            f"(limit {GROWTH_LIMIT:.0%}): {verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

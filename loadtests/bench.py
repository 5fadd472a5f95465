"""The benchmark, in one command: every target, every scenario, in the same run.

    python loadtests/bench.py [--duration 6] [--rounds 3] [--rate 500] [--litellm PATH]
                              [--smoke] [--out-dir loadtests/results]

    CPU 1: the mock provider, wrk and the Python load clients      CPU 0: the system under test
    load ──> direct: the mock                                      (the limit)
    load ──> pass-through (loadtests/passthrough.py) ──> mock      (the floor of Python)
    load ──> savepoint-sqlite ──> mock                             (production policy)
    load ──> savepoint-redis  ──> mock                             (the same, on Redis)
    load ──> litellm (when installed) ──> mock                     (another gateway)

Scenarios (`SCENARIOS`): chat and streamed chat (40 chunks, usage), unique bodies, at
saturation (wrk, best of `--rounds` interleaved runs) and at a fixed rate (open loop);
streamed chat with the mock pacing its chunks (per-chunk forwarding cost); cache hits and
idempotent replays (Savepoint only); 2,000 streams held open by a 3 s upstream delay (peak
RSS); the chaos run against Savepoint (`chaos.py`, short). Progress goes to stderr, one line
per step; the result to `bench-<time>.md` (also printed), `.json` (every raw value) and `.png`
(the chart). Exits 1 on any error answer of a Savepoint target or a baseline, never on a time.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import bench_chart
import bench_report
import bench_targets as bt
from bench_measure import Bodies, held, open_loop, rss_kb, saturate
from processes import ChildFailed, Children, cpu_busy

HERE = Path(__file__).resolve().parent
CHUNKS = 40


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float  # seconds per measurement
    warmup: float
    rounds: int  # saturation runs per target, interleaved; the best counts
    rate: int  # the open-loop rate of the latency measurements
    paced_rate: int  # the open-loop rate of the paced streams
    chunk_delay: float  # the mock's pause between two chunks of a paced stream
    connections: int  # wrk's
    held: int  # streams held open at once
    held_delay: float  # seconds the mock waits before answering them
    held_chunk_delay: float  # then the seconds between two of their chunks
    sut_cpu: int | None
    load_cpu: int | None
    smoke: bool


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    stream: bool
    unique: bool  # a different body on every request
    savepoint_only: bool
    headers: bool = False  # an Idempotency-Key on every request


SCENARIOS = (
    Scenario("chat", stream=False, unique=True, savepoint_only=False),
    Scenario("stream", stream=True, unique=True, savepoint_only=False),
    Scenario("cache-hit", stream=False, unique=False, savepoint_only=True),
    Scenario("idem-replay", stream=False, unique=False, savepoint_only=True, headers=True),
)


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    seconds: float  # its estimate, for the ETA
    run: Callable[[], None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="saturation runs; the best counts")
    parser.add_argument("--rate", type=int, default=500, help="open-loop requests per second")
    parser.add_argument("--litellm", type=Path, help="LiteLLM's executable (default: on PATH)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: proves it works")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results", help="result files")
    args = parser.parse_args()
    sut, load = bt.cpu_split()
    if args.smoke:
        s = Settings(
            duration=0.5,
            warmup=0.0,
            rounds=1,
            rate=100,
            paced_rate=50,
            chunk_delay=0.005,
            connections=8,
            held=50,
            held_delay=0.5,
            held_chunk_delay=0.01,
            sut_cpu=sut,
            load_cpu=load,
            smoke=True,
        )
    else:
        s = Settings(
            duration=args.duration,
            warmup=1.0,
            rounds=max(1, args.rounds),
            rate=args.rate,
            paced_rate=100,
            chunk_delay=0.01,
            connections=64,
            held=2000,
            held_delay=3.0,
            held_chunk_delay=0.05,
            sut_cpu=sut,
            load_cpu=load,
            smoke=False,
        )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the children
    names = bt.Names(uuid.uuid4().hex[:12])
    started = time.time()
    stem = args.out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="savepoint-bench-") as work:
        children = Children(Path(work))
        bench = Bench(children, s, names, Path(work))
        try:
            bench.run(bt.find_litellm(args.litellm), stem)
        except ChildFailed as e:
            print(f"bench: FAILED: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            children.stop_all()  # first: a late settle or ledger flush would write again
            redis_deleted = bt.clean_redis(names, bench.idempotency_keys, started)
    result = bench.result(started, redis_deleted)
    stem.parent.mkdir(parents=True, exist_ok=True)
    text = bench_report.markdown(result)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    bench_chart.draw(result, stem.with_suffix(".png"))
    print(text)
    print(f"results: {stem}.md, .json, .png")
    if result["errors"]:
        print("bench: FAILED:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class Bench:
    """Plans the steps, runs them with a progress line each, keeps every raw value."""

    def __init__(self, children: Children, settings: Settings, names: bt.Names, work: Path):
        self.children, self.s, self.names, self.work = children, settings, names, work
        self.bodies = Bodies(names.nonce)
        self.idempotency_keys: list[str] = []
        self.measured: dict[str, dict[str, Any]] = {}  # scenario -> target -> values
        self.errors: list[str] = []  # fail the run
        self.optional_errors: list[str] = []  # LiteLLM's: reported, not failing the run
        self.chaos: dict[str, Any] = {}
        self.stack: bt.Stack | None = None
        self.busy_before: list[float] = []
        self.rss_start: dict[str, float] = {}

    # --- running --------------------------------------------------------------------------

    def run(self, litellm: str | None, stem: Path) -> None:
        before = cpu_busy()
        time.sleep(1.0)  # how busy the machine is with other work, before we add any
        self.busy_before = [
            round(100 * (b - a), 1) for a, b in zip(before, cpu_busy(), strict=True)
        ]
        s = self.s
        print(
            f"bench: starting the targets (pinned: {s.sut_cpu}, load: {s.load_cpu})",
            file=sys.stderr,
        )
        self.stack = bt.start(
            self.children,
            self.work,
            self.names,
            s.sut_cpu,
            s.load_cpu,
            CHUNKS,
            s.held + 100,
            litellm,
        )
        # After one request each: what a target holds before any load.
        self.rss_start = {
            t.name: round(rss_kb(t.process.pid) / 1024, 1) for t in self.stack.targets
        }
        for name, why in self.stack.missing.items():
            print(f"bench: {name}: {why}", file=sys.stderr)
        steps = self.plan(stem)
        total, origin = sum(step.seconds for step in steps), time.monotonic()
        done_estimate = 0.0
        for i, step in enumerate(steps, 1):
            elapsed = time.monotonic() - origin
            # The estimates scaled by how long the steps so far took, once there is a sample.
            pace = elapsed / done_estimate if done_estimate > 0.1 * total else 1.0
            left = (total - done_estimate) * pace
            print(
                f"[{i:>2}/{len(steps)} {_clock(elapsed)}] {step.label}   (about {_clock(left)} "
                "left)",
                file=sys.stderr,
                flush=True,
            )
            step.run()
            done_estimate += step.seconds
        print(f"bench: done in {_clock(time.monotonic() - origin)}", file=sys.stderr)

    def plan(self, stem: Path) -> list[Step]:
        s, targets = self.s, self.stack.targets if self.stack else ()
        steps: list[Step] = []
        per_run = 1.0  # starting a load child, reading counters
        for sc in SCENARIOS:
            chosen = [t for t in targets if t.savepoint or not sc.savepoint_only]
            self.measured[sc.name] = {t.name: {"rounds": []} for t in chosen}
            steps.append(
                Step(
                    f"{sc.name} · warm-up, sample answers ({len(chosen)} targets)",
                    len(chosen) * (s.warmup + per_run),
                    lambda sc=sc, c=chosen: self.warm(sc, c),
                )
            )
            for r in range(1, s.rounds + 1):
                for t in chosen:
                    label = f"{sc.name} · {t.name} · saturation {r}/{s.rounds} ({s.duration:g} s)"
                    steps.append(
                        Step(label, s.duration + per_run, lambda sc=sc, t=t: self.saturation(sc, t))
                    )
            for t in chosen:
                label = f"{sc.name} · {t.name} · latency at {s.rate}/s ({s.duration:g} s)"
                steps.append(
                    Step(
                        label,
                        s.duration + s.warmup + per_run,
                        lambda sc=sc, t=t: self.latency(sc, t),
                    )
                )
        self.measured["stream-paced"] = {t.name: {} for t in targets}
        for t in targets:
            pause = f"{s.chunk_delay * 1000:g} ms"
            label = f"stream-paced · {t.name} · {s.paced_rate}/s, unpaced, then {pause} per chunk"
            steps.append(
                Step(
                    label,
                    2 * (s.duration + s.warmup + per_run) + CHUNKS * s.chunk_delay,
                    lambda t=t: self.paced(t),
                )
            )
        self.measured["held"] = {}
        for t in targets:
            label = f"held · {t.name} · {s.held:,} streams, upstream waits {s.held_delay:g} s"
            steps.append(
                Step(
                    label, s.held_delay + CHUNKS * s.held_chunk_delay + 3, lambda t=t: self.held(t)
                )
            )
        chaos_s = 15.0 if s.smoke else 25.0
        steps.append(
            Step("chaos · savepoint (chaos.py, short)", chaos_s, lambda: self.run_chaos(stem))
        )
        return steps

    # --- the steps ---------------------------------------------------------------------------

    def _body(self, sc: Scenario, t: bt.Target) -> str:
        return self.bodies.make(t.model, sc.name, sc.stream, sc.unique)

    def _headers(self, sc: Scenario, t: bt.Target) -> dict[str, str]:
        if not sc.headers:
            return {}
        key = f"bench-{self.names.nonce}-{t.name}"
        if key not in self.idempotency_keys:
            self.idempotency_keys.append(key)
        return {"Idempotency-Key": key}

    def _fail(self, t: bt.Target, message: str) -> None:
        if t.name == "litellm":  # its log says nothing about them: the first line is enough
            self.optional_errors.append(message.partition("\n")[0])
        else:
            self.errors.append(message)

    def warm(self, sc: Scenario, chosen: list[bt.Target]) -> None:
        for t in chosen:
            body, headers = json.loads(self._body(sc, t)), self._headers(sc, t)
            answers = [bt.check_answer(t, body, headers) for _ in range(2)]
            want = {
                "cache-hit": ("x-savepoint-cache", "hit"),
                "idem-replay": ("idempotent-replayed", "true"),
            }.get(sc.name)
            if want and answers[1].get(want[0]) != want[1]:
                raise ChildFailed(
                    f"{sc.name}/{t.name}: the second sample was not "
                    f"`{want[0]}: {want[1]}`: {answers[1]}"
                )
            if self.s.warmup >= 1:
                self._saturate(sc, t, self.s.warmup)

    def _saturate(self, sc: Scenario, t: bt.Target, seconds: float) -> dict[str, Any]:
        assert self.stack is not None
        return saturate(
            self.children,
            t,
            self._body(sc, t),
            seconds,
            self.s.connections,
            self.s.load_cpu,
            self.stack.mock_url,
            self._headers(sc, t),
        )

    def saturation(self, sc: Scenario, t: bt.Target) -> None:
        sat = self._saturate(sc, t, self.s.duration)
        self.measured[sc.name][t.name]["rounds"].append(sat)
        where = f"{sc.name}/{t.name}, saturation"
        if sat["non_2xx"] or sat["socket_errors"] or not sat["requests"]:
            self._fail(
                t,
                f"{where}: {sat['requests']} answers, {sat['non_2xx']} not 2xx, "
                f"{sat['socket_errors']} socket errors\n{t.process.tail(5)}",
            )
        self._check_mock(sc, t, where, sat["requests"], sat["mock_requests"])

    def _check_mock(self, sc: Scenario, t: bt.Target, where: str, answers: int, seen: int) -> None:
        """Unique bodies must all reach the mock (no cache answered); stored ones never."""
        if sc.unique and seen < answers:
            self._fail(t, f"{where}: {answers} answers but the mock saw only {seen}")
        if not sc.unique and seen:
            self._fail(t, f"{where}: the mock saw {seen} requests: not every answer was stored")

    def latency(self, sc: Scenario, t: bt.Target) -> None:
        assert self.stack is not None
        entry = self.measured[sc.name][t.name]
        best = _capacity(entry["rounds"])
        if 0.9 * best < self.s.rate:
            entry["latency"] = {
                "skipped": f"{self.s.rate}/s is above 90% of what it sustains "
                f"({best:,.0f} requests/s, from its best run or its CPU time per request)"
            }
            return
        lat = open_loop(
            self.children,
            t,
            self._body(sc, t),
            self.s.rate,
            self.s.duration,
            max(self.s.warmup, 0.2),
            self.s.load_cpu,
            self.stack.mock_url,
            self._headers(sc, t),
        )
        entry["latency"] = lat
        where = f"{sc.name}/{t.name} at {self.s.rate}/s"
        if lat["errors"]:
            self._fail(t, f"{where}: {lat['errors']}\n{t.process.tail(5)}")
        self._check_mock(sc, t, where, lat["requests_sent"], lat["mock_requests"])
        tag = {"cache-hit": "x-savepoint-cache: hit", "idem-replay": "idempotent-replayed: true"}
        if sc.name in tag and lat["answer_headers"].get(tag[sc.name], 0) != lat["requests_sent"]:
            self._fail(
                t, f"{where}: not every answer was `{tag[sc.name]}`: {lat['answer_headers']}"
            )

    def paced(self, t: bt.Target) -> None:
        """The same streams at the same rate, first as the mock sends them (all at once), then
        one chunk every `chunk_delay`: the difference is what forwarding chunk by chunk costs."""
        assert self.stack is not None
        s, sc, entry = self.s, SCENARIOS[1], self.measured["stream-paced"][t.name]
        best = _capacity(self.measured["stream"][t.name]["rounds"])
        if 0.9 * best < s.paced_rate:
            entry["skipped"] = (
                f"{s.paced_rate}/s is above 90% of what it sustains ({best:,.0f} requests/s)"
            )
            return
        for mode, knobs in (("unpaced", ""), ("paced", f"chunk_delay={s.chunk_delay:g}")):
            bt.set_knobs(self.stack.mock_url, knobs)
            try:
                lat = open_loop(
                    self.children,
                    t,
                    self._body(sc, t),
                    s.paced_rate,
                    s.duration,
                    max(s.warmup, 0.2),
                    s.load_cpu,
                    self.stack.mock_url,
                )
            finally:
                bt.set_knobs(self.stack.mock_url, "")
            entry[mode] = lat
            if lat["errors"]:
                self._fail(
                    t, f"stream-paced/{t.name} ({mode}): {lat['errors']}\n{t.process.tail(5)}"
                )

    def held(self, t: bt.Target) -> None:
        assert self.stack is not None
        s = self.s
        body = self.bodies.make(t.model, "held", stream=True, unique=True)
        bt.set_knobs(
            self.stack.mock_url, f"delay={s.held_delay:g};chunk_delay={s.held_chunk_delay:g}"
        )
        try:
            limit = s.held_delay + CHUNKS * s.held_chunk_delay + 120
            result = held(self.children, t, body, s.held, CHUNKS, limit, s.load_cpu)
        finally:
            bt.set_knobs(self.stack.mock_url, "")
        self.measured["held"][t.name] = {**result, "rss_after_start_mb": self.rss_start[t.name]}
        if result["failures"]:
            self._fail(t, f"held/{t.name}: {result['failures']}\n{t.process.tail(5)}")

    def run_chaos(self, stem: Path) -> None:
        out = self.work / "chaos.json"
        argv = [sys.executable, str(HERE / "chaos.py"), "--out", str(out)]
        argv += (
            ["--smoke", "--phases", "healthy,status-503"]
            if self.s.smoke
            else ["--phase-seconds", "2"]
        )
        run = subprocess.run(argv, cwd=HERE.parent, capture_output=True, text=True, timeout=300)
        if not out.exists():
            self.errors.append(
                f"chaos.py exited with {run.returncode} and no result:\n{run.stderr[-2000:]}"
            )
            return
        result = json.loads(out.read_text())
        phases = [
            {k: p[k] for k in ("name", "requests", "ok", "success_rate", "latency_ms")}
            for p in result["phases"]
        ]
        self.chaos = {
            "returncode": run.returncode,
            "phases": phases,
            "settings": result["settings"],
        }
        if run.returncode != 0:
            failed = sum(p["requests"] - p["ok"] for p in phases)
            self.errors.append(f"chaos: {failed} client requests failed (exit {run.returncode})")

    # --- the result --------------------------------------------------------------------------

    def result(self, started: float, redis_deleted: dict[str, int]) -> dict[str, Any]:
        stack = self.stack
        targets = [t.name for t in stack.targets] if stack else []
        for measured in self.measured.values():
            for entry in measured.values():
                if entry.get("rounds"):
                    entry["saturation"] = max(entry["rounds"], key=lambda r: float(r["rps"]))
        settings = {
            **asdict(self.s),
            "chunks": CHUNKS,
            "cpu_busy_before_pct": self.busy_before,
            "redis": bt.REDIS_URL,
        }
        result: dict[str, Any] = {
            "started": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "settings": settings,
            "targets": targets,
            "missing": stack.missing if stack else {},
            "litellm_version": stack.litellm_version if stack else None,
            "scenarios": self.measured,
            "chaos": self.chaos,
            "redis_keys_deleted": redis_deleted,
            "errors": self.errors,
            "optional_errors": self.optional_errors,
        }
        result["comparison"] = bench_report.compare(result)
        result["aims"] = bench_report.aims(result)
        result["notes"] = bench_report.notes(result)
        return result


def _capacity(rounds: list[dict[str, Any]]) -> float:
    """The requests/s a target sustains: its best saturation run, or what its CPU time per
    request allows on a CPU of its own when other load on the machine held it lower."""
    return max(
        (max(r["rps"], 1e6 / max(1.0, r["cpu_us_per_request"])) for r in rounds), default=0.0
    )


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


if __name__ == "__main__":
    sys.exit(main())

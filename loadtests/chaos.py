"""The chaos run: do clients still get answers while the primary fails and the fallback is up?

The primary provider answers 503s, slows down and drops connections, phase after phase; the
aim is that every client request still succeeds, at a bounded cost upstream.

    python loadtests/chaos.py [--rate 200] [--phase-seconds 4] [--stream-share 0.5]
                              [--phases healthy,status-503,...] [--primary-total S]
                              [--smoke] [--out FILE]

    open-loop load ──> gateway ──> primary   (savepoint mock; its faults switched per phase)
    (chat, streamed          └───> fallback  (savepoint mock; always healthy)
     and not)

`chaos-gpt` is routed to `[primary/mock-gpt]`, then `[fallback/mock-gpt]`, with the default
retries and breakers except a short `breakers.reset_timeout` (so recovery shows within a
phase) and a short `timeouts.first_byte` on the primary. While the load runs, the primary
goes through the phases, switched by `POST /_mock/knobs`. Per phase it reports what the
clients saw (success, p50/p99), what it cost upstream (calls per client request from the
mocks' counters, attempts from `x-savepoint-attempts`, how they ended from the gateway's
access log), how much the fallback served and what the primary's breaker did: a markdown
table, and JSON under loadtests/results/ with the gateway's log next to it.

A healthy phase lasts 1.5 times a fault phase. A failed half-open probe doubles the
breaker's reset timeout; the longer healthy phase lets the breaker close again before the
next fault, so each fault phase starts from a closed breaker (the table shows it) and
measures that fault rather than the one before.

Exits 1 if any client request failed. No absolute time is asserted. Every process it starts
is stopped by PID at the end, also on an error or Ctrl-C; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import aiohttp
import chaos_report
import uvloop
from chaos_load import MESSAGES, MODEL, Phase, drive
from processes import Child, ChildFailed, Children, free_port

HERE = Path(__file__).resolve().parent
REQUEST_TIMEOUT = 30.0  # the clients' own timeout, seconds (sent as x-stainless-read-timeout)
HEALTHY_STRETCH = 1.5  # a healthy phase lasts this many fault phases
SEQUENCE = (  # the default run
    "healthy",
    "status-503",
    "healthy",
    "slow-first-byte",
    "healthy",
    "connection-reset",
    "healthy",
)
SHORT = {
    "status-503": "503",
    "slow-first-byte": "slow",
    "connection-reset": "reset",
    "mid-stream-cut": "cut",
}
POLICY = """\
version: 1
store: {{path: {store}}}
providers:
  primary:
    kind: openai
    base_url: http://127.0.0.1:{primary}/v1
    api_key: sk-chaos
    timeouts: {{first_byte: {first_byte:g}s{total}}}
  fallback:
    kind: openai
    base_url: http://127.0.0.1:{fallback}/v1
    api_key: sk-chaos
breakers: {{reset_timeout: {reset_timeout:g}s}}
models:
  {model}:
    targets:
      - [primary/mock-gpt]
      - [fallback/mock-gpt]
"""


@dataclass(frozen=True, slots=True)
class Settings:
    rate: float  # requests per second
    phase_seconds: float  # a fault phase; a healthy one lasts HEALTHY_STRETCH times longer
    stream_share: float
    first_byte: float  # the primary's timeouts.first_byte, seconds
    reset_timeout: float  # breakers.reset_timeout, seconds
    primary_total: float | None  # the primary's timeouts.total, seconds; None: the default
    smoke: bool


def settings_for(args: argparse.Namespace) -> Settings:
    if args.smoke:  # everything at half the tempo, so the same things happen in less time
        total = args.primary_total / 2 if args.primary_total else None
        return Settings(40.0, 2.0, args.stream_share, 0.5, 1.0, total, True)
    return Settings(
        args.rate, args.phase_seconds, args.stream_share, 1.0, 2.0, args.primary_total, False
    )


def faults(s: Settings) -> dict[str, str]:
    """The primary's states: name -> its knobs, as POSTed to its /_mock/knobs."""
    return {
        "healthy": "",
        "status-503": "status=503",
        # Longer than the first-byte timeout: a stream gives up on the primary and moves on;
        # a whole answer, bounded only by timeouts.total, waits for it.
        "slow-first-byte": f"delay={2 * s.first_byte:g}",
        # The headers and the first half of a body (a stream: its role chunk), then the
        # connection is aborted.
        "connection-reset": "cut_after=0",
        # Not in the default run: a stream breaks after two content chunks, past the commit
        # point, so its client sees the failure; the breaker should open and bound how many.
        "mid-stream-cut": "cut_after=2",
    }


def make_phases(sequence: Sequence[str], s: Settings) -> tuple[Phase, ...]:
    """A healthy phase after a fault is named after it (`healthy-after-503`); a name that
    repeats gets a number (`status-503-2`)."""
    knobs = faults(s)
    out: list[Phase] = []
    for i, fault in enumerate(sequence):
        name = fault
        if fault == "healthy" and i > 0 and sequence[i - 1] != "healthy":
            name = f"healthy-after-{SHORT[sequence[i - 1]]}"
        base, n = name, 1
        while name in {p.name for p in out}:
            n += 1
            name = f"{base}-{n}"
        seconds = s.phase_seconds * (HEALTHY_STRETCH if fault == "healthy" else 1.0)
        out.append(Phase(name, knobs[fault], seconds))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Stack:
    gateway: Child
    gateway_url: str
    primary_url: str
    fallback_url: str


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument(
        "--phase-seconds", type=float, default=4.0, help="seconds per fault phase (healthy: 1.5x)"
    )
    parser.add_argument("--stream-share", type=float, default=0.5, help="share streamed, 0-1")
    parser.add_argument(
        "--phases",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=SEQUENCE,
        help=f"the primary's states in order, from: healthy, {', '.join(SHORT)} "
        f"(default: {','.join(SEQUENCE)})",
    )
    parser.add_argument(
        "--primary-total",
        type=float,
        help="set the primary's timeouts.total to this many seconds (default: not set)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run: 40 requests/s, phases and timeouts at half length; ignores --rate, "
        "--phase-seconds",
    )
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtests/results/)")
    args = parser.parse_args()
    if not (args.rate > 0 and args.phase_seconds > 0 and 0 <= args.stream_share <= 1):
        parser.error("--rate and --phase-seconds must be above 0, --stream-share within 0-1")
    if args.primary_total is not None and not args.primary_total > 0:
        parser.error("--primary-total must be above 0")
    unknown = [name for name in args.phases if name != "healthy" and name not in SHORT]
    if unknown or not args.phases:
        parser.error(f"--phases: unknown {', '.join(unknown) or 'none given'}")
    settings = settings_for(args)
    phases = make_phases(args.phases, settings)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally` stops the children
    out = args.out or HERE / "results" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with tempfile.TemporaryDirectory(prefix="savepoint-chaos-") as work:
        children = Children(Path(work))
        try:
            stack = start(children, Path(work), settings)
            run = uvloop.run(
                drive(
                    stack.gateway_url,
                    stack.primary_url,
                    stack.fallback_url,
                    chaos_report.PRIMARY,
                    phases,
                    settings.rate,
                    settings.stream_share,
                    REQUEST_TIMEOUT,
                )
            )
        except (ChildFailed, RuntimeError, aiohttp.ClientError) as e:
            # The harness itself broke (a process, a knob change), not a client request.
            print(f"chaos: FAILED: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("chaos: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            children.stop_all()  # the gateway writes its last log lines as it stops
        log_text = stack.gateway.stderr.read_text(errors="replace")
    summary = chaos_report.summarize(run, phases, chaos_report.parse_log(log_text))
    result = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {**asdict(settings), "request_timeout": REQUEST_TIMEOUT},
        "phases": summary,
        "notes": chaos_report.notes(summary),
    }
    print(chaos_report.markdown(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log_copy = out.with_suffix(".gateway.log")
    log_copy.write_text(log_text)
    print(f"results: {out}\ngateway log: {log_copy}")
    failed = sum(p["requests"] - p["ok"] for p in summary)
    if failed:
        print(f"chaos: FAILED: {failed} client requests failed", file=sys.stderr)
        return 1
    return 0


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def start(children: Children, work: Path, settings: Settings) -> Stack:
    """Both mocks and the gateway, listening, and one request through the gateway that the
    primary answers."""
    python = sys.executable
    primary_port, fallback_port, gateway_port = free_port(), free_port(), free_port()
    policy = work / "policy.yaml"
    policy.write_text(
        POLICY.format(
            store=work / "savepoint.db",
            primary=primary_port,
            fallback=fallback_port,
            first_byte=settings.first_byte,
            total=f", total: {settings.primary_total:g}s" if settings.primary_total else "",
            reset_timeout=settings.reset_timeout,
            model=MODEL,
        )
    )
    mock = [python, "-m", "gateway", "mock", "--port"]
    primary = children.start("primary", [*mock, str(primary_port)])
    fallback = children.start("fallback", [*mock, str(fallback_port)])
    # The gateway's stderr is its access log (one line per request): a file, never a pipe.
    gateway_argv = [python, "-m", "gateway", "serve", "--policy", str(policy), "--workers", "1"]
    gateway = children.start("gateway", [*gateway_argv, "--port", str(gateway_port)])
    for child, port in ((primary, primary_port), (fallback, fallback_port),
                        (gateway, gateway_port)):  # fmt: skip
        child.wait_listening(port)
    stack = Stack(
        gateway,
        f"http://127.0.0.1:{gateway_port}",
        f"http://127.0.0.1:{primary_port}",
        f"http://127.0.0.1:{fallback_port}",
    )
    _check_route(stack)
    return stack


def _check_route(stack: Stack) -> None:
    """One request before the load, so a broken setup fails at once with its own words."""
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    request = urllib.request.Request(
        f"{stack.gateway_url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            target = reply.headers.get("x-savepoint-target")
    except OSError as e:  # HTTPError and URLError are OSErrors
        detail = e.read().decode(errors="replace") if hasattr(e, "read") else ""
        raise ChildFailed(f"the gateway failed a first request: {e} {detail}\n"
                          f"{stack.gateway.tail()}") from None  # fmt: skip
    if target != chaos_report.PRIMARY:
        raise ChildFailed(f"the first request went to {target!r}, not {chaos_report.PRIMARY}")


if __name__ == "__main__":
    sys.exit(main())

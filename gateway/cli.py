"""`savepoint serve | check | mock | usage`: parses arguments and hands over; nothing else
lives here."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import ipaddress
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import __version__, usage_command
from gateway.app import build_app, counted_models, needs_tokenizer
from gateway.config import Policy, PolicyError, load_policy
from gateway.front import Shared, serve
from gateway.mock import add_knob_arguments, build_mock_app, knobs_from_args
from gateway.server import DRAIN, PIPELINE, RECORDS, STORE
from gateway.tokens import EncodingFileError, Tokenizer
from gateway.workers import Peers, port_taken, supervise, usable_cpus

DEFAULT_POLICY = "policies/default.yaml"
# The same file, shipped inside the package, for `savepoint serve` run outside a checkout.
BUILTIN_POLICY = os.path.join(os.path.dirname(__file__), "default_policy.yaml")
_GC_YOUNG = 20_000  # net container allocations between two young collections (default 700)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="savepoint", description="Savepoint LLM gateway")
    parser.add_argument("--version", action="version", version=f"savepoint {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--policy",
        help=f"policy file (default: {DEFAULT_POLICY} if it exists, else the built-in default)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        help="gateway processes sharing the port (SO_REUSEPORT) and the store (default: the "
        f"CPUs this process may use, {usable_cpus()} here)",
    )
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--worker-dir", help=argparse.SUPPRESS)
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address with no clients (authentication off)",
    )

    check = commands.add_parser("check", help="validate policy files")
    check.add_argument("files", nargs="+", metavar="FILE")

    mock = commands.add_parser("mock", help="run the fake OpenAI-compatible provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    add_knob_arguments(mock)

    usage = commands.add_parser(
        "usage",
        help="the usage report: spent, saved and wasted tokens and cost (read from the store)",
    )
    usage.add_argument("--policy", help="policy file, for its store (default: as for serve)")
    usage.add_argument("--since", help="30m, 12h, or 7d (the last 7 UTC days); default: today")
    usage.add_argument("--from", dest="from_", metavar="FROM", help="a UTC day, ISO time, epoch")
    usage.add_argument("--to", help="a UTC day (inclusive), ISO time or epoch; default: now")
    usage.add_argument(
        "--by",
        default="client,model",
        help="group by any of client,model,target,day,run (default client,model)",
    )
    for name in ("client", "model", "target", "run"):
        usage.add_argument(f"--{name}", help=f"only this {name}")
    usage.add_argument("--format", choices=("table", "csv", "json"), default="table")

    args = parser.parse_args(argv)
    if args.command == "usage":
        return _usage(args)
    if args.command == "check":
        return _check(args.files)
    if args.command == "mock":
        return _mock(args)
    return _serve(args)


def _fail(message: str) -> int:
    print(f"savepoint: {message}", file=sys.stderr)
    return 1


def _check(files: Sequence[str]) -> int:
    failed = False
    for path in files:
        try:
            policy = load_policy(path, os.environ)
        except PolicyError as e:
            print(str(e), file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok ({len(policy.models)} models, {len(policy.clients)} clients"
              f"{_switched_off(policy)})")  # fmt: skip
    return 1 if failed else 0


def _policy_path(path: str | None) -> str:
    if path is None:
        return DEFAULT_POLICY if os.path.exists(DEFAULT_POLICY) else BUILTIN_POLICY
    return path


def _load(path: str | None) -> Policy | None:
    path = _policy_path(path)
    try:
        return load_policy(path, os.environ)
    except PolicyError as e:
        for problem in str(e).splitlines():
            _fail(problem)
        return None


def _usage(args: argparse.Namespace) -> int:
    policy = _load(args.policy)
    if policy is None:
        return 1
    given = {
        "since": args.since,
        "from": args.from_,
        "to": args.to,
        "group_by": args.by,
        "client": args.client,
        "model": args.model,
        "target": args.target,
        "run": args.run,
    }
    status, text = usage_command.run(
        policy, {k: v for k, v in given.items() if v is not None}, args.format
    )  # fmt: skip
    print(text, file=sys.stderr if status else sys.stdout)
    return status


def _serve(args: argparse.Namespace) -> int:
    policy = _load(args.policy)
    if policy is None:
        return 1
    if not policy.auth_enabled and not _is_loopback(args.host) and not args.insecure_no_auth:
        return _fail(
            f"refusing to listen on {args.host}: the policy has no clients, so authentication is "
            "off and anyone could use your providers. Add `clients:` to the policy, or pass "
            "--insecure-no-auth if that is really what you want."
        )
    workers = args.workers
    if workers is None:  # one per usable CPU; one on --port 0 (each would get its own port)
        workers = 1 if args.worker is not None or args.port == 0 else usable_cpus()
    if workers < 1:
        return _fail(f"--workers must be at least 1, got {workers}")
    if args.worker is None and workers > 1:
        if args.port == 0:
            return _fail("--workers needs a fixed --port: with --port 0 each worker would "
                         "listen on a port of its own")  # fmt: skip
        if port_taken(args.host, args.port):
            return _fail(f"cannot listen on {args.host}:{args.port}: the port is already in use "
                         "(use --port)")  # fmt: skip
        child = ["serve", "--policy", _policy_path(args.policy), "--host", args.host,
                 "--port", str(args.port), *(["--insecure-no-auth"] if args.insecure_no_auth
                                            else [])]  # fmt: skip
        return supervise(child, workers, policy.server.drain_timeout)
    peers = Peers(args.worker, args.worker_dir) if args.worker is not None else None
    _use_uvloop()
    try:
        return asyncio.run(_run_gateway(policy, args.host, args.port, peers))
    except KeyboardInterrupt:
        return 0


def _settle_collector() -> None:
    """Keep the cyclic garbage collector off what start-up built (the policy, the app, the
    encodings: it lives as long as the process) and run it less often. A request allocates
    a few hundred container objects and frees nearly all of them by reference counting, so
    the default threshold (a collection every 700 net allocations) ran a young collection
    every request or two, each walking the requests in flight."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


async def _run_gateway(policy: Policy, host: str, port: int, peers: Peers | None) -> int:
    tokenizer = None
    if needs_tokenizer(policy):
        try:
            tokenizer = await asyncio.to_thread(Tokenizer.load, None, counted_models(policy))
        except EncodingFileError as e:
            return _fail(f"cannot count tokens: {e}")
    app = build_app(policy, tokenizer, peers=peers)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,  # a client that goes away stops its upstream spend
        shutdown_timeout=policy.server.drain_timeout + 10,
    )
    await runner.setup()
    assert runner.server is not None, "set up above"
    shared = Shared(app[PIPELINE], app[RECORDS].write, policy.server.max_body_bytes, runner.server)
    try:
        listening = await serve(shared, host, port, reuse_port=peers is not None)
    except OSError as e:
        await runner.cleanup()
        if e.errno == errno.EADDRINUSE:
            return _fail(f"cannot listen on {host}:{port}: the port is already in use (use --port)")
        return _fail(f"cannot listen on {host}:{port}: {e.strerror}")
    stop = _stop_on_signal()  # before the banner: whoever waits for it may signal at once
    _settle_collector()
    off = _switched_off(policy)
    auth = "auth on" if policy.auth_enabled else "auth off"
    print(
        f"savepoint {__version__} listening on http://{_url_host(host)}:{port}/v1 "
        f"(policy {policy.source}, store {app[STORE].describe()}, {auth}{off})",
        flush=True,
    )
    await stop.wait()
    print("savepoint: draining in-flight requests", file=sys.stderr, flush=True)
    listening.close()  # stop accepting; keep serving what is in flight
    await app[DRAIN].run(policy.server.drain_timeout)
    shared.close_all()  # the front's connections; aiohttp's are closed by its cleanup
    await runner.cleanup()
    return 0


def _mock(args: argparse.Namespace) -> int:
    _use_uvloop()
    try:
        return asyncio.run(_run_mock(args))
    except KeyboardInterrupt:
        return 0


async def _run_mock(args: argparse.Namespace) -> int:
    runner = web.AppRunner(build_mock_app(knobs_from_args(args)), access_log=None,
                           handle_signals=False, shutdown_timeout=1.0)  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        return _fail(f"cannot listen on {args.host}:{args.port}: {e.strerror}")
    port = runner.addresses[0][1]
    stop = _stop_on_signal()
    print(f"savepoint mock listening on http://{_url_host(args.host)}:{port}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()
    return 0


def _stop_on_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, from now on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _switched_off(policy: Policy) -> str:
    return "".join(f"; provider {p} off: {why}" for p, why in policy.disabled_providers.items())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

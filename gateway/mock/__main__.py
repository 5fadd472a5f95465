"""`python -m gateway.mock --port P [knobs]`: the mock on its own, for test subprocesses.

Prints `mock listening on http://HOST:PORT` (the real port when `--port 0`) on stdout once it
accepts connections, then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from .knobs import add_knob_arguments, knobs_from_args
from .server import build_mock_app


async def _serve(host: str, port: int, app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"mock listening on http://{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.mock", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    add_knob_arguments(parser)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve(ns.host, ns.port, build_mock_app(knobs_from_args(ns))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

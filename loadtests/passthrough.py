"""The baseline: a bare aiohttp pass-through proxy, the least a Python gateway could do.

Every `POST /v1/*` is forwarded to the upstream over one pooled `aiohttp.ClientSession` and the
answer is streamed back chunk by chunk as it arrives (`iter_any`), status and headers copied,
body never parsed. No auth, no routing, no logging: what the gateway does beyond this is what
the benchmark calls its overhead.

    python loadtests/passthrough.py --port 8081 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDictProxy

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
POOL = web.AppKey("pool", int)

# Hop-by-hop or framing headers: aiohttp sets its own on each side.
_DROPPED = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "host"))


def _copied(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _DROPPED]


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    upstream = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].post(
        upstream, data=body, headers=_copied(request.headers)
    ) as reply:
        response = web.StreamResponse(status=reply.status, headers=_copied(reply.headers))
        if reply.content_length is not None:
            response.content_length = reply.content_length
        await response.prepare(request)
        async for chunk in reply.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    return response


def build_app(upstream: str, pool: int = 256) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[POOL] = pool
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/{tail:.*}", forward)
    return app


async def _session(app: web.Application) -> AsyncIterator[None]:
    # By default the same pool size as the gateway's providers (max_connections: 256); no
    # decompression.
    connector = aiohttp.TCPConnector(limit=app[POOL])
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        app[SESSION] = session
        yield


async def serve(port: int, upstream: str, pool: int) -> None:
    runner = web.AppRunner(build_app(upstream, pool), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"passthrough listening on http://127.0.0.1:{port}/v1 -> {upstream}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp pass-through proxy (baseline)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8090")
    parser.add_argument(
        "--max-connections", type=int, default=256, help="upstream pool size (default 256)"
    )
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.max_connections))


if __name__ == "__main__":
    main()

"""Carries out a fault decision on an aiohttp request: the only module of the mock that
writes answers to sockets.

Commit point: `prepare()` sends the status and headers. Before it, a fault still chooses what
the client sees (`Fail`: an error status; `Hang`: nothing at all). After it, faults act on
the body only: `Cut` aborts the connection mid-body, `Malformed` sends invalid JSON,
`Truncate` leaves the stream's tail out. A client that goes away is not an error: the
handler returns quietly, so hangs and cuts leave no tracebacks in the log.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .faults import (
    Fail,
    Fault,
    Hang,
    Healthy,
    Script,
    Stall,
    Truncate,
    script_body,
    script_events,
)
from .plan import Body, Plan
from .wire import JSON_TYPE, SSE_TYPE, error_body, seconds_header

_POLL = 0.05  # seconds between two checks that a hanging client is still there


def gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait_while_connected(request: web.BaseRequest, seconds: float | None) -> bool:
    """Sleep `seconds` (None: forever) or until the client disconnects; True if still there."""
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    while not gone(request):
        left = _POLL if deadline is None else deadline - loop.time()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, _POLL))
    return False


def json_response(data: bytes, request_id: str, status: int = 200) -> web.Response:
    return web.Response(
        body=data, status=status, headers={"Content-Type": JSON_TYPE, "x-request-id": request_id}
    )


def fail_response(fault: Fail, message: str, request_id: str) -> web.Response:
    body = error_body(fault.status, message, code=fault.code)
    response = json_response(body, request_id, fault.status)
    if fault.retry_after is not None:
        response.headers["retry-after"] = seconds_header(fault.retry_after)
    if fault.retry_after_ms is not None:
        response.headers["retry-after-ms"] = str(fault.retry_after_ms)
    return response


async def deliver_fault(
    request: web.BaseRequest, fault: Fail | Hang, message: str, request_id: str
) -> web.StreamResponse:
    """A fault decided before any answer exists: an error, or silence until the client leaves."""
    if isinstance(fault, Fail):
        return fail_response(fault, message, request_id)
    await wait_while_connected(request, None)
    return web.Response(status=204)  # the client is gone; aiohttp drops this quietly


async def deliver(
    request: web.BaseRequest, plan: Plan, fault: Fault, chunk_delay: float, request_id: str
) -> web.StreamResponse:
    """The planned answer, altered by a body fault (`Cut`, `Malformed`, `Truncate`) if any."""
    if isinstance(plan, Body):
        if isinstance(fault, Healthy | Truncate | Stall):  # the lean path: one write, no copies
            return json_response(plan.data, request_id)
        return await _send(request, script_body(plan, fault), JSON_TYPE, 0.0, request_id)
    return await _send(request, script_events(plan, fault), SSE_TYPE, chunk_delay, request_id)


async def _send(
    request: web.BaseRequest, script: Script, content_type: str, gap: float, request_id: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "x-request-id": request_id}
    )
    if content_type == SSE_TYPE:
        response.headers["Cache-Control"] = "no-cache"
    if script.declared_length is not None:
        response.content_length = script.declared_length
    try:
        await response.prepare(request)
        if gap > 0:
            for i, frame in enumerate(script.frames):
                if i and not await wait_while_connected(request, gap):
                    return response
                await response.write(frame)
        else:
            await response.write(b"".join(script.frames))
        if script.stall:
            await wait_while_connected(request, None)
            return response
        if script.abort:
            # After the headers and part of the body: the client sees the body end early.
            transport = request.transport
            if transport is not None:
                transport.abort()
            return response
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing left to tell it
    return response

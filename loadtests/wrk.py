"""Saturation with wrk: run it (closed loop, a fixed number of connections) and read its report.

`chat.lua` makes every request a POST of the JSON body passed in `SAVEPOINT_BENCH_BODY`. wrk
is fast C; pinned to its own CPU it is not what limits a Python server. Its report gives the
requests/s; answers that were not 2xx and socket errors are read too, because a target that
fails fast would otherwise look fast.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from processes import Children, pinned

LUA = Path(__file__).resolve().parent / "chat.lua"

_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)


@dataclass(frozen=True, slots=True)
class WrkReport:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: int

    @property
    def failed(self) -> bool:
        return self.non_2xx > 0 or self.socket_errors > 0 or self.requests == 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse(output: str) -> WrkReport:
    """wrk's text report -> numbers; ValueError when it has no Requests/sec line."""
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None:
        raise ValueError(f"not a wrk report:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    return WrkReport(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def saturate(
    children: Children,
    url: str,
    body: str,
    connections: int,
    seconds: float,
    cpu: int | None,
) -> WrkReport:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(LUA), url]
    output = children.run(
        "wrk", pinned(cpu, argv), timeout=seconds + 30, env={"SAVEPOINT_BENCH_BODY": body}
    )
    return parse(output)

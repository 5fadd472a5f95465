"""`savepoint serve --workers N`: N gateway processes on one port, and their supervisor.

Each worker is a whole gateway (`python -m gateway serve ... --worker I --worker-dir D`) with
its own event loop, listening with SO_REUSEPORT, so the kernel spreads connections across
them. They share state through the store: limits, budgets, the cache, run journals,
idempotency records, the ledger and breaker ejections hold across workers as they do across
replicas (SQLite serialises writers on its file lock; Redis on its server).

The supervisor starts them, prints one banner once all listen, restarts a worker that dies
(after 1 s, doubling to 30 s while it keeps dying), and on SIGTERM or SIGINT passes the signal
on and waits for every worker to drain. It serves nothing itself.

Metrics are per process, so each worker writes a snapshot of its counters to the shared
directory every second, and a scrape, whichever worker takes it, adds the others' snapshots
to its own live counters (theirs at most a second old). Breaker states are the scraped
worker's own view.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from gateway.metrics import Metrics

PUBLISH_EVERY = 1.0  # seconds between two metrics snapshots of a worker
_RESTART_FIRST, _RESTART_MAX = 1.0, 30.0


class Peers:
    """This worker's place among the others: its index and the directory they share."""

    def __init__(self, index: int, directory: str):
        self.index = index
        self._dir = Path(directory)

    async def publish(self, metrics: Metrics) -> None:
        """Write this worker's metrics snapshot every second, until cancelled."""
        own = self._dir / f"metrics-{self.index}.json"
        while True:
            data = metrics.snapshot()
            await asyncio.to_thread(_replace, own, data)
            await asyncio.sleep(PUBLISH_EVERY)

    async def others(self) -> list[bytes]:
        """The other workers' latest metrics snapshots."""
        return await asyncio.to_thread(self._read_others)

    def _read_others(self) -> list[bytes]:
        found = []
        for path in self._dir.glob("metrics-*.json"):
            if path.name != f"metrics-{self.index}.json":
                with contextlib.suppress(OSError):
                    found.append(path.read_bytes())
        return found


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)  # a reader sees the old snapshot or the new one, never half


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens there (SO_REUSEPORT would let us join it silently)."""
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1",
                                       port), timeout=0.5):  # fmt: skip
            return True
    except OSError:
        return False


def supervise(child_args: list[str], workers: int, drain_timeout: float) -> int:
    """Run `workers` gateways with `child_args` (a `serve` command line) until signalled."""
    return asyncio.run(_Supervisor(child_args, workers, drain_timeout).run())


class _Supervisor:
    def __init__(self, child_args: list[str], workers: int, drain_timeout: float):
        self._args = child_args
        self._n = workers
        self._drain_timeout = drain_timeout
        self._dir = tempfile.mkdtemp(prefix="savepoint-workers-")
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        try:
            banners = await asyncio.gather(*(self._start(i) for i in range(self._n)))
            if any(banner is None for banner in banners):  # a worker said why on stderr
                await self._stop_all()
                return 1
            first = str(banners[0])
            print(f"{first[:-1]}, {self._n} workers)" if first.endswith(")") else first,
                  flush=True)  # fmt: skip
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
            watchers = [loop.create_task(self._watch(i)) for i in range(self._n)]
            await self._stopping.wait()
            print("savepoint: draining in-flight requests", file=sys.stderr, flush=True)
            await self._stop_all()
            for watcher in watchers:
                watcher.cancel()
            return 0
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _start(self, index: int) -> str | None:
        """Start worker `index`; its banner once it listens, None if it could not start."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *self._args, "--worker", str(index),
            "--worker-dir", self._dir, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._procs[index] = proc
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            await proc.wait()
            return None
        return line.decode().strip()

    async def _watch(self, index: int) -> None:
        """Restart worker `index` whenever it dies while the gateway is not stopping."""
        delay = _RESTART_FIRST
        while True:
            status = await self._procs[index].wait()
            if self._stopping.is_set():
                return
            print(f'{{"event":"worker_exited","worker":{index},"status":{status},'
                  f'"restart_in_s":{delay:g}}}', file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(delay)
            if self._stopping.is_set():
                return
            delay = _RESTART_FIRST if await self._start(index) else min(delay * 2, _RESTART_MAX)

    async def _stop_all(self) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        waits = [proc.wait() for proc in self._procs.values()]
        try:
            async with asyncio.timeout(self._drain_timeout + 15):
                await asyncio.gather(*waits)
        except TimeoutError:
            for proc in self._procs.values():
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(proc.wait() for proc in self._procs.values()))

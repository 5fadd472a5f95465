"""`savepoint serve --workers N`: N gateway processes on one port, and their supervisor.

Each worker is a whole gateway (`python -m gateway serve ... --worker I --worker-dir D`) with
its own event loop, listening with SO_REUSEPORT, so the kernel spreads connections across
them. They share state through the store: limits, budgets, the cache, run journals,
idempotency records, the ledger and breaker ejections hold across workers as they do across
replicas (SQLite serialises writers on its file lock; Redis on its server).

The default number of workers is the number of CPUs this process may run on: its CPU
affinity (`taskset`, a container's cpuset), capped by a cgroup CPU quota (`docker run --cpus`,
a Kubernetes CPU limit), which affinity does not show.

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
import math
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


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by the cgroup's CPU quota."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        allowed = os.cpu_count() or 1
    return cpus_within(allowed, _read(_CPU_MAX), _read(_CFS_QUOTA), _read(_CFS_PERIOD))


_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"
_CFS_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"  # cgroup v1: -1 for none
_CFS_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def cpus_within(
    allowed: int, cpu_max: str | None, cfs_quota: str | None, cfs_period: str | None
) -> int:
    """`allowed` CPUs, capped by a cgroup quota given as the files' text (None: no file). A
    quota of 1.5 CPUs gives 2: a worker is idle part of the time anyway."""
    quota, period = None, None
    if cpu_max is not None and len(parts := cpu_max.split()) == 2:
        quota, period = parts
    elif cfs_quota is not None and cfs_period is not None:
        quota, period = cfs_quota.strip(), cfs_period.strip()
    try:
        share = int(quota) / int(period) if quota is not None and period is not None else 0.0
    except ValueError:  # "max": no quota
        share = 0.0
    if share > 0:
        allowed = min(allowed, math.ceil(share))
    return max(allowed, 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before any worker: none is left behind
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            banners = await asyncio.gather(*(self._start(i) for i in range(self._n)))
            if any(banner is None for banner in banners):  # a worker said why on stderr
                await self._stop_all()
                return 1
            if self._stopping.is_set():  # signalled while the workers started
                await self._stop_all()
                return 0
            first = str(banners[0])
            print(f"{first[:-1]}, {self._n} workers)" if first.endswith(")") else first,
                  flush=True)  # fmt: skip
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

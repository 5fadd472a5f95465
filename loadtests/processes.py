"""The benchmark's child processes: started pinned to one CPU, stopped by PID.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the benchmark,
which then stops every child it started (SIGTERM, then SIGKILL after a grace period), newest
first. Output goes to files in a work directory, never to a pipe nobody reads; a child's
stderr is quoted when it fails. Also here: reading CPU time from /proc, to tell which
process was the bottleneck of a measurement.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_TICK = float(os.sysconf("SC_CLK_TCK"))


class ChildFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ChildFailed(f"{self.name} exited with {self.popen.returncode}\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise ChildFailed(
            f"{self.name} did not listen on port {port} in {timeout:g}s\n{self.tail()}"
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, all threads (utime and stime in /proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def tail(self, lines: int = 20) -> str:
        text = self.stderr.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {self.name}| {line}" for line in text)


class Children:
    """Every process the benchmark starts, so that every one of them is stopped."""

    def __init__(self, work: Path):
        self._work = work
        self._started: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        out, err = self._work / f"{name}.out", self._work / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        child = Child(name, popen, out, err)
        self._started.append(child)
        return child

    def run(
        self,
        name: str,
        argv: Sequence[str],
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run a child to completion; its stdout. Fails on a non-zero exit or the timeout."""
        child = self.start(name, argv, env)
        try:
            code = child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildFailed(f"{name} still running after {timeout:g}s\n{child.tail()}") from None
        finally:
            self._stop(child)
        if code != 0:
            raise ChildFailed(f"{name} exited with {code}\n{child.tail()}")
        return child.stdout.read_text()

    def stop_all(self) -> None:
        for child in reversed(self._started):
            self._stop(child)

    def _stop(self, child: Child, grace: float = 10.0) -> None:
        if child.popen.poll() is None:
            child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(grace)
        if child in self._started:
            self._started.remove(child)


def cpu_busy() -> list[float]:
    """Busy seconds of each CPU since boot: user, nice, system, irq and softirq in /proc/stat."""
    busy = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            user, nice, system, _idle, _iowait, irq, softirq = map(int, line.split()[1:8])
            busy.append((user + nice + system + irq + softirq) / _TICK)
    return busy


def measured(
    name: str, run: Callable[[Children, Path], dict[str, Any]], out: Path
) -> dict[str, Any] | None:
    """Run a measurement in a work directory of its own, stop every child it started (also
    on an error or Ctrl-C) and write its result as JSON to `out`; None, after saying why on
    stderr, when a child failed."""
    with tempfile.TemporaryDirectory(prefix=f"savepoint-{name}-") as tmp:
        children = Children(Path(tmp))
        try:
            result = run(children, Path(tmp))
        except ChildFailed as e:
            print(f"{name}: {e}", file=sys.stderr)
            return None
        finally:
            children.stop_all()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result

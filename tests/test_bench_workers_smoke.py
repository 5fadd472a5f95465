"""loadtests/bench_workers.py still runs end to end (`--smoke`: about 10 s).

Only that it works is checked, never how fast: both configurations answered every request
without an error, and with two workers both of them served requests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@pytest.mark.slow
def test_workers_benchmark_smoke_measures_one_and_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "loadtests/bench_workers.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| 2 | " in run.stdout  # the markdown table was printed
    result = json.loads(out.read_text())
    assert result["errors"] == []
    for workers in ("1", "2"):
        best = result["best"][workers]
        assert best["requests"] > 0 and best["non_2xx"] == best["socket_errors"] == 0, workers
        assert best["cpu_s"]["gateway"] > 0, workers
        assert best["gateway_cpu_us_per_request"] > 0, workers
    served = result["served_by_worker_2w"]
    assert set(served) == {"0", "1"} and min(served.values()) > 0
    assert result["ratio_2w_1w"] > 0

"""loadtests/bench_held.py still runs end to end (`--smoke`: 50 streams); never how fast or
how much memory, only that every stream completed and the RSS was read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset")


def test_held_streams_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "held.json"
    run = subprocess.run(
        [sys.executable, "loadtests/bench_held.py", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| streams | completed |" in run.stdout
    result = json.loads(out.read_text())
    assert result["completed"] == result["streams"] == 50 and result["failures"] == {}
    assert 0 < result["rss_at_rest_mb"] <= result["rss_peak_mb"]

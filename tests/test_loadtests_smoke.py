"""The benchmark in loadtests/ still runs end to end (`--smoke`: tiny, about 30 s).

Only that it works is checked, never how fast: every target answers every scenario without
errors, with a positive requests/s and latency.
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
def test_foundation_benchmark_smoke_measures_every_target_and_scenario(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "loadtests/bench_foundation.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| chat-stream |" in run.stdout  # the markdown table was printed
    result = json.loads(out.read_text())
    assert result["errors"] == []
    assert set(result["scenarios"]) == {"chat", "chat-stream"}
    for scenario, targets in result["scenarios"].items():
        assert set(targets) == {"direct", "passthrough", "gateway"}, scenario
        for name, measured in targets.items():
            where = f"{scenario}/{name}"
            assert measured["saturation"]["rps"] > 0, where
            assert measured["saturation"]["mock_requests"] >= measured["saturation"]["requests"]
            assert measured["latency"], where
            for rate, lat in measured["latency"].items():
                assert lat["ok"] == lat["requests"] > 0, f"{where} at {rate}/s"
                assert lat["end_ms"]["p50"] > 0, f"{where} at {rate}/s"
                assert lat["first_byte_ms"]["p50"] > 0, f"{where} at {rate}/s"
        comparison = result["comparison"][scenario]
        assert comparison["gateway_over_passthrough"] > 0, scenario
        assert set(comparison["added_ms"]) == {"passthrough", "gateway"}, scenario

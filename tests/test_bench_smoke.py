"""loadtests/bench.py still runs end to end (`--smoke`: tiny, under a minute).

Only that it works is checked, never how fast: every target answered every scenario without
an error, cache hits and replays never reached the provider, every held stream completed,
every chaos phase succeeded, and the three result files were written.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASELINES = {"direct", "passthrough"}
SAVEPOINT = {"savepoint-sqlite", "savepoint-redis"}


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_benchmark_smoke_measures_every_target_and_scenario(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "loadtests/bench.py", "--smoke", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    (md,) = tmp_path.glob("bench-*.md")
    result = json.loads(md.with_suffix(".json").read_text())
    assert result["errors"] == []
    # litellm is measured too when it is on PATH; its numbers are not checked here
    targets = BASELINES | SAVEPOINT
    assert targets <= set(result["targets"])
    scenarios = result["scenarios"]
    for scenario in ("chat", "stream", "cache-hit", "idem-replay"):
        measured = scenarios[scenario]
        expected = SAVEPOINT if scenario in ("cache-hit", "idem-replay") else targets
        assert expected <= set(measured), scenario
        for name in expected:
            m = measured[name]
            where = f"{scenario}/{name}"
            sat, lat = m["saturation"], m["latency"]
            assert sat["rps"] > 0 and sat["non_2xx"] == sat["socket_errors"] == 0, where
            assert lat["ok"] == lat["requests"] > 0, where
            assert lat["end_ms"]["p50"] > 0, where
            if scenario in ("cache-hit", "idem-replay"):  # stored answers: the mock never saw one
                assert sat["mock_requests"] == lat["mock_requests"] == 0, where
            else:  # unique bodies: every answer came from the mock
                assert sat["mock_requests"] >= sat["requests"], where
    for name in targets:
        m = scenarios["stream-paced"][name]
        assert m["paced"]["ok"] == m["paced"]["requests"] > 0, name
    for name in targets:
        held = scenarios["held"][name]
        assert held["completed"] == held["streams"] == 50 and held["failures"] == {}, name
        assert 0 < held["rss_at_rest_mb"] <= held["rss_peak_mb"], name
    phases = result["chaos"]["phases"]
    assert phases and all(p["requests"] > 0 and p["success_rate"] == 1.0 for p in phases)
    png = md.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    text = md.read_text()
    assert "| chat | " in text and "| savepoint-redis |" in text  # the tables
    assert text in run.stdout  # printed too

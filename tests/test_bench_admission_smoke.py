"""loadtests/bench_admission.py still runs end to end (`--smoke`: tiny, about 40 s).

Only that it works is checked, never how fast: every target answered at saturation and at the
fixed rate, nothing was refused or failed, the limits targets' answers carried the rate-limit
headers, and the JSON has the fields the report is made of.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"passthrough"} | {
    f"{kind}-{store}"
    for kind in ("none", "ledger", "guard", "limits")
    for store in ("sqlite", "redis")
}

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_admission_benchmark_smoke_measures_every_target(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "loadtests/bench_admission.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| limits | redis |" in run.stdout  # the markdown table was printed
    assert "| guard-sqlite minus none-sqlite |" in run.stdout
    result = json.loads(out.read_text())
    assert result["errors"] == []
    assert set(result["targets"]) == TARGETS
    for name, measured in result["targets"].items():
        sat, lat = measured["saturation"], measured["latency"]
        assert sat["rps"] > 0, name
        assert sat["non_2xx"] == sat["socket_errors"] == 0, name  # nothing refused
        assert sat["mock_requests"] >= sat["requests"], name
        assert lat["ok"] == lat["requests"] > 0, name
        assert lat["errors"] == {}, name
        assert lat["end_ms"]["p50"] > 0, name
        assert {"evalsha_per_request", "script_usec_per_call"} <= set(sat["redis"]), name
        assert {"evalsha_per_request", "script_usec_per_call"} <= set(lat["redis"]), name
        headers = lat["answer_headers"]
        assert "x-savepoint-degraded" not in headers, name
        if name.startswith("limits-"):
            assert headers["x-ratelimit-limit-requests"] == lat["answers"], name
        else:
            assert "x-ratelimit-limit-requests" not in headers, name
    for store in ("sqlite", "redis"):
        assert result["targets"][f"none-{store}"]["latency_repeat"]["ok"] > 0
        comparison = result["comparison"][store]
        assert set(comparison) == {"ledger", "guard", "limits", "baseline_repeat_ms"}
        for kind in ("ledger", "guard", "limits"):
            added = comparison[kind]
            assert {"p50", "p99", "per_round"} <= set(added["added_ms"])
            assert added["rps_ratio"] > 0
            assert set(added["evalsha_per_request"]) == {"wrk", "openloop"}
            assert "cpu_us_added" in added
    # Admission reaches Redis where it must: an admit and a settle per request for the limits'
    # concurrency slots (a lower bound: anything else using this Redis only adds calls). The
    # guard counts the same request past its threshold (20) in the worker: no call each.
    redis = result["comparison"]["redis"]
    assert redis["limits"]["evalsha_per_request"]["openloop"] >= 1.5
    assert redis["guard"]["evalsha_per_request"]["openloop"] < 0.5
    assert result["redis_ping_ms"]["p50"] > 0
    assert result["redis_keys_deleted"] >= 0  # the run's Redis keys were cleaned up

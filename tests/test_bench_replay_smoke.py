"""loadtests/bench_replay.py still runs end to end (`--smoke`: tiny, about 40 s).

Only that it works is checked, never how fast: every target answered without errors at
saturation and at the fixed rate, hits, run replays and idempotent replays were really served
from the store (the mock saw none of their requests), misses really reached the provider.
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
    for kind in ("hit", "replay", "idem", "miss", "nocache")
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
def test_replay_benchmark_smoke_measures_every_target(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [sys.executable, "loadtests/bench_replay.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| hit | redis |" in run.stdout  # the markdown table was printed
    assert "| idem | sqlite |" in run.stdout
    result = json.loads(out.read_text())
    assert result["errors"] == []
    assert set(result["targets"]) == TARGETS
    for name, measured in result["targets"].items():
        sat, lat = measured["saturation"], measured["latency"]
        assert sat["rps"] > 0, name
        assert lat["ok"] == lat["requests"] > 0, name
        assert lat["end_ms"]["p50"] > 0, name
        if name.startswith(("hit-", "replay-", "idem-")):
            assert sat["mock_requests"] == lat["mock_requests"] == 0, name
        else:
            assert sat["mock_requests"] >= sat["requests"], name
    seen = result["targets"]
    assert set(seen["hit-redis"]["latency"]["answer_headers"]) == {"x-savepoint-cache: hit"}
    assert set(seen["replay-sqlite"]["latency"]["answer_headers"]) == {"x-savepoint-replayed: true"}
    for name in ("idem-sqlite", "idem-redis"):
        assert set(seen[name]["latency"]["answer_headers"]) == {"idempotent-replayed: true"}, name
    comparison = result["comparison"]
    assert set(comparison["over_passthrough"]) == {
        "hit-sqlite", "hit-redis", "replay-sqlite", "replay-redis", "idem-sqlite", "idem-redis"
    }  # fmt: skip
    assert set(comparison["miss_added_ms"]) == {"sqlite", "redis"}

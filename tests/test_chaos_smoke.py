"""The chaos run in loadtests/ (`--smoke`: about 20 s) keeps every client whole while the
primary provider fails in each way the mock can, as long as the fallback is healthy.

Only what the clients saw and where their answers came from is checked, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_chaos_smoke_every_client_request_succeeds_in_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "loadtests/chaos.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), run.stdout + run.stderr
    phases = {p["name"]: p for p in json.loads(out.read_text())["phases"]}
    assert {"status-503", "slow-first-byte", "connection-reset"} <= set(phases)
    for name, phase in phases.items():
        assert phase["requests"] > 0, name
        assert phase["success_rate"] == 1.0, f"{name}: {phase['errors']}\n{run.stdout}"
    assert phases["status-503"]["served_by"].get("fallback/mock-gpt", 0) > 0
    assert phases["status-503"]["via_fallback"] > 0
    assert run.returncode == 0, run.stdout + run.stderr

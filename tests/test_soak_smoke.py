"""loadtests/soak.py still runs end to end (`--smoke`: about 20 s at 100 requests/s).

Only that it works is checked: every kind of the mix was sent and answered as expected (no
5xx, no 4xx but the deliberate ones), the stored kinds really came from the store, and the
gateway's RSS was sampled. Memory growth is not judged: 20 s has no steady state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_soak_smoke_answers_every_kind_as_expected_and_samples_rss(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "loadtests/soak.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["problems"] == []
    kinds = result["kinds"]
    assert set(kinds) == {"miss", "hit", "stream", "idem-new", "idem-repeat", "run", "embed",
                          "bad-json", "bad-model"}  # fmt: skip
    for kind, k in kinds.items():
        expected = {"bad-json": "400", "bad-model": "404"}.get(kind, "200")
        assert k["unexpected"] == 0 and set(k["statuses"]) == {expected}, (kind, k)
    for kind in ("hit", "idem-repeat", "run"):  # most of these were answered from the store
        assert kinds[kind]["from_store"] > sum(kinds[kind]["statuses"].values()) // 2, kind
    assert kinds["miss"]["from_store"] == 0
    assert len(result["rss_kb"]) >= 15 and all(kb > 10_000 for _, kb in result["rss_kb"])
    assert result["growth"] is not None

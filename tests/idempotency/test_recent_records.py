"""The memory of finished idempotency records: bounded, and never past its TTL."""

from __future__ import annotations

import time

from gateway.stages.lead import Recent, View


def _view(data: bytes) -> View:
    return View("fp", "owner", "done", {"status": 200, "headers": {}, "stream": False}, data, 0.0)


def test_the_byte_bound_counts_every_entry_not_just_its_body() -> None:
    recent = Recent(ttl=60, max_bytes=1024 * 1024)
    for i in range(10_000):  # tiny answers: their count is what fills memory
        recent.put(f"k{i}", _view(b"x" * 10))
    kept = sum(recent.get(f"k{i}") is not None for i in range(10_000))
    assert 0 < kept <= 1024 * 1024 // 2048  # about 2 KiB an entry, whatever its body
    assert recent.get("k9999") is not None  # the newest stay, the oldest went
    assert recent.get("k0") is None


def test_an_answer_too_big_for_a_quarter_of_the_memory_is_not_kept() -> None:
    recent = Recent(ttl=60, max_bytes=64 * 1024)
    recent.put("big", _view(b"x" * 20_000))
    assert recent.get("big") is None
    recent.put("small", _view(b"x" * 1000))
    assert recent.get("small") is not None


def test_entries_expire_and_free_their_room() -> None:
    recent = Recent(ttl=0.05, max_bytes=4 * 3048)  # room for four 1000-byte answers
    for i in range(4):
        recent.put(f"old{i}", _view(b"x" * 1000))
    assert recent.get("old0") is not None
    time.sleep(0.08)
    assert recent.get("old0") is None  # expired
    for i in range(4):
        recent.put(f"new{i}", _view(b"x" * 1000))
    assert all(recent.get(f"new{i}") is not None for i in range(4))  # the expired made room

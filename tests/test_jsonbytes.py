"""JSON the gateway keeps (queued ledger entries and log lines, in-flight upstream bodies,
answers held in memory) costs its size, not orjson's 4 KiB buffer."""

from __future__ import annotations

import tracemalloc

import orjson

from gateway import jsonbytes

ENTRY = {"ts": 1764000000.123, "client": "alice", "model": "gpt-4o", "prompt_tokens": 12}


def _kept_bytes(make: object) -> int:
    tracemalloc.start()
    try:
        kept = [make() for _ in range(1000)]  # type: ignore[operator]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1000
    return int(size)


def test_kept_json_costs_its_size_not_a_4_kib_buffer() -> None:
    assert jsonbytes.dumps(ENTRY) == orjson.dumps(ENTRY)
    assert jsonbytes.dumps(ENTRY, option=orjson.OPT_APPEND_NEWLINE).endswith(b"}\n")
    right_sized = _kept_bytes(lambda: jsonbytes.dumps(ENTRY))
    assert right_sized < 1000 * 200  # about 100 bytes of JSON and a bytes header each

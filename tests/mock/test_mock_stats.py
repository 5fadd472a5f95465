"""The ledger behind `/_mock/stats` and `/_mock/requests`: numbers per scope, reset, log."""

from __future__ import annotations

from gateway.mock.stats import LOG_SIZE, Ledger

HEADERS = {"Authorization": "Bearer k"}


def test_request_numbers_count_per_scope_from_one() -> None:
    ledger = Ledger("p")
    numbers = [ledger.number("/v1/embeddings", "m", scope, HEADERS, {}) for scope in "aabab"]
    assert numbers == [1, 2, 1, 3, 2]
    ledger.note("/v1/models", "a", HEADERS)
    assert ledger.stats() == {
        "total": 6,
        "by_path": {"/v1/embeddings": 5, "/v1/models": 1},
        "by_model": {"m": 5},
        "by_scope": {"a": 3, "b": 2},
    }


def test_reset_restarts_numbers_but_ids_stay_unique() -> None:
    ledger = Ledger("p")
    before = ledger.next_ident()
    ledger.number("/v1/chat/completions", "m", "", HEADERS, {})
    ledger.reset()
    assert ledger.stats() == {"total": 0, "by_path": {}, "by_model": {}, "by_scope": {}}
    assert ledger.recent(10) == []
    assert ledger.number("/v1/chat/completions", "m", "", HEADERS, {}) == 1
    assert ledger.next_ident() != before


def test_log_keeps_the_last_requests_oldest_first_with_lowercase_headers() -> None:
    ledger = Ledger("p")
    for i in range(LOG_SIZE + 5):
        ledger.number("/v1/chat/completions", "m", "s", HEADERS, {"i": i})
    assert [r["body"]["i"] for r in ledger.recent(3)] == [LOG_SIZE + 2, LOG_SIZE + 3, LOG_SIZE + 4]
    assert len(ledger.recent(10_000)) == LOG_SIZE
    assert ledger.recent(1)[0]["headers"] == {"authorization": "Bearer k"}
    assert ledger.recent(0) == []

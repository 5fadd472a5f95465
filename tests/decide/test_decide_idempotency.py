"""Which keys are keys, how they are scoped, and which answers a key keeps."""

from __future__ import annotations

import pytest

from gateway.decide.idempotency import kept, parse_key, record_key


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5"', "8e03978e-40d5"),  # the IETF draft's sf-string form
        ("  padded  ", "padded"),
        ("a", "a"),
        ("x" * 255, "x" * 255),
        ("x" * 256, None),  # too long
        ("", None),
        ('""', None),  # an empty sf-string
        ("two words", None),  # a space is not visible ASCII
        ("clé", None),  # not ASCII
        ('a"b', None),
        ('"unbalanced', None),
        ("tab\tkey", None),
    ],
)
def test_parse_key(header: str, key: str | None) -> None:
    assert parse_key(header) == key


def test_record_keys_are_per_client_and_never_the_key_itself() -> None:
    alice, bob = record_key("alice", "k-1"), record_key("bob", "k-1")
    assert alice != bob
    assert alice == record_key("alice", "k-1")
    assert alice != record_key("alice", "k-2")
    assert "k-1" not in alice and len(alice) == 64
    # length-prefixed parts: moving a character between client and key changes the record
    assert record_key("ab", "c") != record_key("a", "bc")


@pytest.mark.parametrize(
    ("status", "complete", "keep"),
    [
        (200, True, True),
        (200, False, False),  # a stream cut or ended by an error event
        (201, True, True),
        (400, True, True),  # the same request gets the same answer: deterministic
        (404, True, True),
        (413, True, True),
        (422, True, True),
        (400, False, False),  # over the size limit
        (401, True, False),  # a key may be fixed or rotated: retry may succeed
        (403, True, False),
        (408, True, False),
        (409, True, False),
        (429, True, False),
        (500, True, False),
        (502, True, False),
        (503, True, False),
        (504, True, False),
        (529, True, False),
    ],
)
def test_kept(status: int, complete: bool, keep: bool) -> None:
    assert kept(status, complete) is keep

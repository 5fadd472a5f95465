import hashlib

import pytest

from gateway.decide.auth import authenticate, key_from_headers, redact
from gateway.errors import AuthenticationFailed, shape_of
from gateway.model import ANONYMOUS, Principal

ALICE = Principal("alice", frozenset({"m"}))
CLIENTS = {hashlib.sha256(b"sk-alice-key-1234").hexdigest(): ALICE}


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "key"),
    [
        ("Bearer sk-1", None, "sk-1"),
        ("bearer  sk-1 ", None, "sk-1"),
        ("Basic dXNlcjpwYXNz", None, None),
        ("Bearer ", None, None),
        (None, "sk-2", "sk-2"),
        (None, None, None),
    ],
)
def test_key_is_read_from_bearer_or_x_api_key(
    authorization: str | None, x_api_key: str | None, key: str | None
) -> None:
    assert key_from_headers(authorization, x_api_key) == key


def test_with_no_clients_everyone_is_anonymous() -> None:
    assert authenticate({}, None) is ANONYMOUS
    assert authenticate({}, "anything") is ANONYMOUS


def test_known_key_is_its_client() -> None:
    assert authenticate(CLIENTS, "sk-alice-key-1234") == ALICE


def test_missing_key_is_401_missing_api_key() -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(CLIENTS, None)
    assert (shape_of(caught.value).status, shape_of(caught.value).code) == (401, "missing_api_key")


def test_unknown_key_is_401_and_the_message_shows_only_a_redacted_key() -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(CLIENTS, "sk-wrong-secret-value")
    assert shape_of(caught.value).code == "invalid_api_key"
    assert "sk-wrong-secret-value" not in caught.value.message
    assert redact("sk-wrong-secret-value") in caught.value.message
    assert redact("short") == "***"

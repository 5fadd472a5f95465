"""Client API keys: who may call, which models they see and may use."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest
from harness import Gateway, Gateways

ALICE_KEY = "sk-alice-0000000001"
BOB_KEY = "sk-bob-00000000002"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def secured(gateways: Gateways) -> Gateway:
    alice_hash = hashlib.sha256(ALICE_KEY.encode()).hexdigest()
    extra = f"""
clients:
  alice:
    key_sha256: {alice_hash}
    models: [gpt-test]
  bob:
    key_env: TEST_BOB_KEY
"""
    from harness import basic_policy

    policy = basic_policy("{mock}", gateways.policy_file("x").parent / "auth.db", extra)
    return gateways.start(policy, env={"TEST_BOB_KEY": BOB_KEY})


def test_missing_key_is_401_missing_api_key(secured: Gateway) -> None:
    r = httpx.post(
        f"{secured.base_url}/chat/completions", json={"model": "gpt-test", "messages": USER}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"


def test_wrong_key_is_an_authentication_error_that_does_not_echo_the_key(secured: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        secured.client(api_key="sk-wrong-key-0000000000").chat.completions.create(
            model="gpt-test",
            messages=USER,  # type: ignore[arg-type]
        )
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key-0000000000" not in caught.value.message


def test_client_uses_its_allowed_model(secured: Gateway) -> None:
    raw = secured.client(api_key=ALICE_KEY).chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=USER,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].message.content
    line = secured.log_for(raw.headers["x-savepoint-request-id"])
    assert (line["client"], line["status"]) == ("alice", 200)


def test_model_outside_the_clients_list_is_403(secured: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        secured.client(api_key=ALICE_KEY).embeddings.create(model="embed-test", input="x")
    assert caught.value.code == "model_not_allowed"
    assert "alice" in caught.value.message


def test_each_client_lists_only_its_models(secured: Gateway) -> None:
    assert [m.id for m in secured.client(api_key=ALICE_KEY).models.list()] == ["gpt-test"]
    bob_models = sorted(m.id for m in secured.client(api_key=BOB_KEY).models.list())
    assert bob_models == ["embed-test", "gpt-test"]
    with pytest.raises(openai.NotFoundError):
        secured.client(api_key=ALICE_KEY).models.retrieve("embed-test")


def test_models_list_needs_a_key_too(secured: Gateway) -> None:
    assert httpx.get(f"{secured.base_url}/models").status_code == 401


def test_key_from_env_var_and_x_api_key_header_work(secured: Gateway) -> None:
    r = httpx.post(
        f"{secured.base_url}/embeddings",
        json={"model": "embed-test", "input": "x", "encoding_format": "float"},
        headers={"x-api-key": BOB_KEY},
    )
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == 16


def test_with_auth_off_any_key_works(gateway: Gateway) -> None:
    reply = gateway.client(api_key="anything").chat.completions.create(
        model="gpt-test", messages=USER
    )  # type: ignore[arg-type]
    assert reply.choices[0].message.content

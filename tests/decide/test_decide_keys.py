"""Which differences between two requests change the cache key (and the fingerprint)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.decide.caching import CacheMode, cache_mode
from gateway.decide.keys import cache_key, fingerprint
from gateway.model import Endpoint

BASE: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ],
    "temperature": 0.2,
}  # fmt: skip


def _key(body: dict[str, Any], tenant: str = "alice", route: str = "gpt-test") -> str:
    return cache_key(tenant, route, Endpoint.CHAT, body)


def _changed(**fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body.update(fields)
    return body


@pytest.mark.parametrize(
    ("body", "same"),
    [
        (_changed(stream=True), True),
        (_changed(stream=True, stream_options={"include_usage": True}), True),
        (_changed(user="u-42", metadata={"trace": "x"}, store=False), True),
        (_changed(seed=None), True),  # null is the same as absent
        (_changed(temperature=0.3), False),
        (_changed(seed=7), False),
        (_changed(max_tokens=100), False),
        (_changed(max_completion_tokens=100), False),
        (_changed(top_p=0.5), False),
        (_changed(n=2), False),
        (_changed(tools=[{"type": "function", "function": {"name": "weather"}}]), False),
        (_changed(tool_choice="required"), False),
        (_changed(response_format={"type": "json_object"}), False),
        (_changed(messages=BASE["messages"][:2]), False),
    ],
)
def test_what_changes_the_cache_key(body: dict[str, Any], same: bool) -> None:
    assert (_key(body) == _key(BASE)) is same


def test_key_order_and_sdk_serialisation_of_tool_arguments_do_not_matter() -> None:
    other = copy.deepcopy(BASE)
    other["messages"][2]["function_call"] = None
    other["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"unit":"c","city":"Paris"}'
    reordered = dict(reversed(list(other.items())))
    assert _key(reordered) == _key(BASE)


def test_one_text_part_is_the_same_as_the_string() -> None:
    other = copy.deepcopy(BASE)
    other["messages"][1]["content"] = [{"type": "text", "text": "Weather in Paris?"}]
    assert _key(other) == _key(BASE)
    other["messages"][1]["content"].append({"type": "text", "text": " Now."})
    assert _key(other) != _key(BASE)


def test_cache_is_scoped_by_tenant_route_and_endpoint() -> None:
    assert _key(BASE, tenant="bob") != _key(BASE)
    assert _key(BASE, route="gpt-other") != _key(BASE)
    assert cache_key("alice", "gpt-test", Endpoint.RESPONSES, BASE) != _key(BASE)


def test_embeddings_encoding_format_changes_the_key() -> None:
    body = {"model": "e", "input": "x"}
    assert cache_key("a", "e", Endpoint.EMBEDDINGS, body) != cache_key(
        "a", "e", Endpoint.EMBEDDINGS, {**body, "encoding_format": "base64"}
    )


def test_fingerprint_includes_stream_and_the_path() -> None:
    path = "/v1/chat/completions"
    assert fingerprint("POST", path, BASE) == fingerprint("POST", path, copy.deepcopy(BASE))
    assert fingerprint("POST", path, _changed(stream=True)) != fingerprint("POST", path, BASE)
    assert fingerprint("POST", "/v1/responses", BASE) != fingerprint("POST", path, BASE)


@pytest.mark.parametrize(
    ("header", "lookup", "store", "label"),
    [
        (None, True, True, "miss"),
        ("no-cache", False, True, "refresh"),
        ("No-Store", True, False, "miss"),
        ("no-cache, no-store", False, False, "bypass"),
        ("max-age=0, no-cache", False, True, "refresh"),
    ],
)
def test_cache_control_directives(
    header: str | None, lookup: bool, store: bool, label: str
) -> None:
    assert cache_mode(header) == CacheMode(lookup, store, label)

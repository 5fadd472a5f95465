"""Endpoint builders reject what OpenAI rejects with 400, naming the field. No sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.mock.chat import plan_chat
from gateway.mock.completions import plan_completion
from gateway.mock.embeddings import plan_embeddings
from gateway.mock.plan import Call, InvalidRequest, Plan
from gateway.mock.responses_api import plan_response


def call(body: dict[str, Any]) -> Call:
    return Call(body, "mock-gpt", chunks=8, dimensions=16, ident="mockx000001", created=1)


@pytest.mark.parametrize(
    ("build", "body", "param"),
    [
        (plan_chat, {}, "messages"),
        (plan_chat, {"messages": []}, "messages"),
        (plan_chat, {"messages": "hi"}, "messages"),
        (plan_completion, {}, "prompt"),
        (plan_completion, {"prompt": 3}, "prompt"),
        (plan_response, {"input": 3}, "input"),
        (plan_embeddings, {}, "input"),
        (plan_embeddings, {"input": []}, "input"),
        (plan_embeddings, {"input": [1, "a"]}, "input"),
        (plan_embeddings, {"input": "a", "dimensions": 0}, "dimensions"),
        (plan_embeddings, {"input": "a", "dimensions": True}, "dimensions"),
        (plan_embeddings, {"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_builder_rejects_a_bad_request_naming_the_field(
    build: Callable[[Call], Plan], body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as rejected:
        build(call(body))
    assert rejected.value.param == param

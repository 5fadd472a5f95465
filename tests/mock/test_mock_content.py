"""The mock's content decisions: words, JSON placeholders, tool choice. No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.mock.synth import placeholder, split_evenly, word_pieces
from gateway.mock.tools import FunctionCall, choose_function


def test_same_seed_gives_same_words_and_another_seed_other_words() -> None:
    first = word_pieces(b'[{"role":"user","content":"hi"}]', 8)
    assert first == word_pieces(b'[{"role":"user","content":"hi"}]', 8)
    assert first != word_pieces(b'[{"role":"user","content":"ho"}]', 8)
    assert len(first) == 8
    assert all(piece.startswith(" ") for piece in first[1:]) and not first[0].startswith(" ")


@pytest.mark.parametrize(
    ("text", "parts", "expected"),
    [
        ("abcdefg", 3, ("abc", "de", "fg")),
        ("ab", 5, ("a", "b")),
        ("abc", 1, ("abc",)),
        ("abc", 0, ("abc",)),
        ("", 3, ("",)),
    ],
)
def test_split_evenly_keeps_every_character_in_order(
    text: str, parts: int, expected: tuple[str, ...]
) -> None:
    assert split_evenly(text, parts) == expected


DEFS = {
    "$defs": {
        "City": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    },
    "type": "object",
    "properties": {"city": {"$ref": "#/$defs/City"}, "note": {"type": "string"}},
    "required": ["city"],
}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "mock"),
        ({"type": "integer"}, 1),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "number"]}, 1),
        ({"enum": ["celsius", "fahrenheit"]}, "celsius"),
        ({"const": 7}, 7),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, 1),
        ({"type": "array", "items": {"type": "string"}}, []),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                "required": ["a"],
            },
            {"a": "mock"},
        ),
        (DEFS, {"city": {"name": "mock"}}),
        ({}, "mock"),
    ],
)
def test_placeholder_satisfies_the_schema(schema: dict[str, Any], expected: object) -> None:
    assert placeholder(schema) == expected


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
RESPONSES_TOOLS = [
    {"type": "web_search"},
    {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True},
]


@pytest.mark.parametrize(
    ("tools", "tool_choice", "expected"),
    [
        (CHAT_TOOLS, None, FunctionCall("get_weather", '{"city":"mock","days":1}')),
        (CHAT_TOOLS, "auto", FunctionCall("get_weather", '{"city":"mock","days":1}')),
        (CHAT_TOOLS, "required", FunctionCall("get_weather", '{"city":"mock","days":1}')),
        (
            CHAT_TOOLS,
            {"type": "function", "function": {"name": "get_time"}},
            FunctionCall("get_time", "{}"),
        ),
        (CHAT_TOOLS, "none", None),
        (RESPONSES_TOOLS, None, FunctionCall("get_weather", '{"city":"mock","days":1}')),
        (
            RESPONSES_TOOLS,
            {"type": "function", "name": "nope"},
            FunctionCall("get_weather", '{"city":"mock","days":1}'),
        ),
        ([{"type": "web_search"}], None, None),
        (None, None, None),
    ],
)
def test_choose_function_follows_tools_and_tool_choice(
    tools: object, tool_choice: object, expected: FunctionCall | None
) -> None:
    assert choose_function(tools, tool_choice) == expected

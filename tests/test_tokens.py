"""Token counts with the encodings shipped in the package (gateway/tokens.py)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import json
import random
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import tiktoken

import gateway.tokens
from gateway.tokens import (
    ENCODINGS,
    EXACT_CHARS,
    IMAGE_TOKENS,
    EncodingFileError,
    Tokenizer,
)

CHAT = "/v1/chat/completions"
SHIPPED = Path(__file__).resolve().parent.parent / "gateway" / "encodings"


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[Tokenizer]:
    tokenizer = Tokenizer.load()
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tiktoken.Encoding]:
    """tiktoken's own encodings, loaded its usual way: from a cache directory holding the
    files under the sha1 of their download address (SEMANTICS.md §6.1)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        (cache / hashlib.sha1(url.encode()).hexdigest()).symlink_to(SHIPPED / f"{name}.tiktoken")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return {name: tiktoken.get_encoding(name) for name in ENCODINGS}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# The shipped files ----------------------------------------------------------------------------

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. Savepoint counts tokens: naïve café 東京 🚀 "
    "1234567!"
)


def test_known_counts_prove_the_shipped_files_are_the_real_encodings(tokenizer: Tokenizer) -> None:
    # Computed once with tiktoken 0.14.0's own get_encoding (the `reference` fixture) and
    # kept as literals: a wrong or truncated rank file gives other numbers.
    assert tokenizer.count_text("gpt-4o", "hello world") == 2
    assert tokenizer.count_text("gpt-4o", SAMPLE) == 26
    assert tokenizer.count_text("gpt-4", SAMPLE) == 29


def test_counts_equal_tiktokens_own_encodings(
    tokenizer: Tokenizer, reference: dict[str, tiktoken.Encoding]
) -> None:
    texts = [SAMPLE, "<|endoftext|> is text here", "def f(x):\n\treturn x  # ok\n\n\n", "  \n \t"]
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        for text in texts:
            assert tokenizer.count_text(model, text) == len(reference[name].encode_ordinary(text))


def test_a_long_text_is_counted_exactly_although_encoded_in_pieces(
    tokenizer: Tokenizer, reference: dict[str, tiktoken.Encoding]
) -> None:
    rng = random.Random(1)
    words = ["alpha", "Beta", "gamma,", "δέλτα", "42", "x=1;", "(note)", "naïve", "\n", "  "]
    text = " ".join(rng.choices(words, k=60_000))  # ~350,000 characters: four pieces
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        assert tokenizer.count_text(model, text) == len(reference[name].encode_ordinary(text))


def test_a_million_spaces_are_counted_without_tiktoken_panicking(tokenizer: Tokenizer) -> None:
    # tiktoken 0.14.0 itself raises PanicException on 999,999 spaces with o200k_base.
    piece = tokenizer.count_text("gpt-4o", " " * 100_000)
    assert tokenizer.count_text("gpt-4o", " " * 1_200_000) == 12 * piece


def test_a_text_tiktoken_panics_on_is_estimated_instead(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whole texts, as if the cut into pieces did not exist: tiktoken's PanicException (a
    # BaseException) must turn into the 4-characters-a-token estimate, not end the request.
    monkeypatch.setattr(gateway.tokens, "_PIECE_CHARS", 10_000_000)
    assert tokenizer.count_text("gpt-4o", " " * 1_200_000) == 1_200_000 // 4


def test_a_corrupted_encoding_file_fails_naming_the_file_and_expected_hash(tmp_path: Path) -> None:
    data = bytearray((SHIPPED / "o200k_base.tiktoken").read_bytes())
    data[1000] = ord("A") if data[1000] != ord("A") else ord("B")
    (tmp_path / "o200k_base.tiktoken").write_bytes(bytes(data))
    with pytest.raises(EncodingFileError) as raised:
        Tokenizer.load(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "o200k_base.tiktoken") in message
    assert ENCODINGS["o200k_base"] in message
    assert "corrupted" in message


def test_a_missing_encoding_file_fails_naming_the_file_and_expected_hash(tmp_path: Path) -> None:
    with pytest.raises(EncodingFileError) as raised:
        Tokenizer.load(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "o200k_base.tiktoken") in message
    assert ENCODINGS["o200k_base"] in message


def test_only_the_encodings_the_policys_models_use_are_loaded(tmp_path: Path) -> None:
    """Each encoding holds about 40 MB: a gateway whose models all use o200k (or are
    unknown to tiktoken) never loads cl100k, and counts an unknown model with o200k."""
    (tmp_path / "o200k_base.tiktoken").write_bytes((SHIPPED / "o200k_base.tiktoken").read_bytes())
    loaded = Tokenizer.load(tmp_path, ["gpt-4o", "my-alias", "mock-gpt"])  # no cl100k file here
    try:
        assert loaded.encoding_for("gpt-4") == "o200k_base"  # not loaded: the default counts
        assert loaded.count_text("gpt-4o", "hello world") == 2
    finally:
        loaded.close()
    with pytest.raises(EncodingFileError, match="cl100k_base"):
        Tokenizer.load(tmp_path, ["gpt-4"])  # a cl100k model: its file is needed


def test_the_encodings_are_package_data() -> None:
    shipped = importlib.resources.files("gateway").joinpath("encodings")
    for name, sha256 in ENCODINGS.items():
        data = shipped.joinpath(f"{name}.tiktoken").read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256


# Models -------------------------------------------------------------------------------------

O200K = [
    "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "chatgpt-4o-latest", "gpt-4.1", "gpt-4.1-mini",
    "gpt-4.5-preview", "gpt-5", "gpt-5-mini", "gpt-5.1", "o1", "o1-mini", "o3", "o3-mini",
    "o4-mini", "ft:gpt-4o-mini:acme::abc123",
]  # fmt: skip
CL100K = [
    "gpt-4", "gpt-4-turbo", "gpt-4-32k", "gpt-4-0613", "gpt-3.5-turbo", "gpt-3.5-turbo-0125",
    "gpt-35-turbo", "gpt-35-turbo-16k", "text-embedding-ada-002", "text-embedding-3-small",
    "text-embedding-3-large", "davinci-002", "babbage-002", "ft:gpt-3.5-turbo:acme::x1",
]  # fmt: skip
UNKNOWN = ["claude-3-5-sonnet-latest", "mock-gpt", "my-alias", "gpt-oss-120b", "text-davinci-003"]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [(m, "o200k_base") for m in O200K + UNKNOWN] + [(m, "cl100k_base") for m in CL100K],
)
def test_encoding_for_follows_tiktokens_model_table(
    tokenizer: Tokenizer, model: str, encoding: str
) -> None:
    assert tokenizer.encoding_for(model) == encoding


def test_cl100k_and_o200k_count_differently(tokenizer: Tokenizer) -> None:
    assert tokenizer.count_text("gpt-4", "naïve café 東京 🚀") == 10
    assert tokenizer.count_text("gpt-4o", "naïve café 東京 🚀") == 7


def test_an_unknown_model_is_counted_with_o200k(tokenizer: Tokenizer) -> None:
    assert tokenizer.count_text("claude-3-5-sonnet-latest", SAMPLE) == 26
    assert tokenizer.count_text("my-alias", SAMPLE) == tokenizer.count_text("gpt-4o", SAMPLE)


# Requests -----------------------------------------------------------------------------------

# openai-cookbook examples/How_to_count_tokens_with_tiktoken.ipynb: the API reported 129 prompt
# tokens for these messages with gpt-3.5-turbo-0613 and gpt-4 (cl100k_base), 124 with gpt-4o.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo-0613", 129), ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124)],
)
def test_the_cookbook_example_gives_the_prompt_tokens_the_api_reported(
    tokenizer: Tokenizer, model: str, expected: int
) -> None:
    assert tokenizer.count_request(CHAT, model, {"messages": COOKBOOK_MESSAGES}) == expected


def test_a_chat_message_costs_three_tokens_plus_its_strings_plus_three_for_the_reply(
    tokenizer: Tokenizer,
) -> None:
    t = partial(tokenizer.count_text, "gpt-4o")
    one = {"messages": [{"role": "user", "content": "hello world"}]}
    assert tokenizer.count_request(CHAT, "gpt-4o", one) == 3 + t("user") + t("hello world") + 3
    named = {"messages": [{"role": "user", "name": "bob", "content": "hi"}]}
    assert (
        tokenizer.count_request(CHAT, "gpt-4o", named) == 3 + t("user") + t("bob") + 1 + t("hi") + 3
    )


def test_list_content_with_one_text_part_counts_as_the_string(tokenizer: Tokenizer) -> None:
    text = "Describe the weather in Paris."
    as_string = {"messages": [{"role": "user", "content": text}]}
    as_parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert tokenizer.count_request(CHAT, "gpt-4o", as_parts) == tokenizer.count_request(
        CHAT, "gpt-4o", as_string
    )


def test_image_parts_cost_a_fixed_estimate_each(tokenizer: Tokenizer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}
    text = {"type": "text", "text": "What is this?"}
    plain = {"messages": [{"role": "user", "content": [text]}]}
    pictured = {"messages": [{"role": "user", "content": [text, image, image]}]}
    assert tokenizer.count_request(CHAT, "gpt-4o", pictured) == (
        tokenizer.count_request(CHAT, "gpt-4o", plain) + 2 * IMAGE_TOKENS
    )


def test_tool_calls_tools_and_json_schema_are_counted_as_their_text(tokenizer: Tokenizer) -> None:
    t = partial(tokenizer.count_text, "gpt-4o")
    arguments = '{"city": "Paris"}'
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    schema = {
        "name": "answer",
        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    body = {
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": tools,
        "response_format": {"type": "json_schema", "json_schema": schema},
    }
    expected = (
        (3 + t("assistant") + t("weather") + t(arguments))
        + (3 + t("tool") + t("call_1") + t("sunny"))
        + 3
        + t(_json(tools))
        + t(_json(schema))
    )
    assert tokenizer.count_request(CHAT, "gpt-4o", body) == expected
    plain_json = {**body, "response_format": {"type": "json_object"}}
    assert tokenizer.count_request(CHAT, "gpt-4o", plain_json) == expected - t(_json(schema))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/embeddings"])
def test_prompts_and_inputs_count_strings_and_token_ids(tokenizer: Tokenizer, path: str) -> None:
    t = partial(tokenizer.count_text, "gpt-4")
    field = "prompt" if path == "/v1/completions" else "input"
    cases: list[tuple[object, int]] = [
        ("hello world", t("hello world")),
        (["hello", "world peace"], t("hello") + t("world peace")),
        ([15339, 1917, 0], 3),
        ([[15339, 1917], [0]], 3),
    ]
    for value, expected in cases:
        assert tokenizer.count_request(path, "gpt-4", {field: value}) == expected


def test_responses_count_instructions_and_input_items_as_messages(tokenizer: Tokenizer) -> None:
    t = partial(tokenizer.count_text, "gpt-4o")
    path = "/v1/responses"
    simple = {"instructions": "Be brief.", "input": "hello world"}
    assert tokenizer.count_request(path, "gpt-4o", simple) == (
        (3 + t("developer") + t("Be brief.")) + (3 + t("user") + t("hello world")) + 3
    )
    items = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hello world"}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ]
    }
    assert tokenizer.count_request(path, "gpt-4o", items) == (
        (3 + t("user") + t("hello world")) + t("weather") + t("{}") + t("sunny") + 3
    )


def test_an_endpoint_without_a_count_is_refused(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="/v1/models"):
        tokenizer.count_request("/v1/models", "gpt-4o", {})


@pytest.mark.parametrize(
    ("path", "body", "cap"),
    [
        (CHAT, {"max_completion_tokens": 50, "max_tokens": 10}, 50),
        (CHAT, {"max_tokens": 10}, 10),
        ("/chat/completions", {"max_tokens": 10}, 10),
        (CHAT, {}, None),
        ("/v1/completions", {"max_tokens": 16}, 16),
        ("/v1/completions", {}, None),
        ("/v1/responses", {"max_output_tokens": 300, "max_tokens": 5}, 300),
        ("/v1/responses", {"max_tokens": 5}, None),
        ("/v1/embeddings", {"input": "x"}, 0),
    ],
)
def test_output_cap(tokenizer: Tokenizer, path: str, body: dict[str, Any], cap: int | None) -> None:
    assert tokenizer.output_cap(path, body) == cap


# Estimates ----------------------------------------------------------------------------------


def test_estimate_adds_the_output_cap_or_the_default_to_the_prompt(tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "hello world"}]
    prompt = tokenizer.count_request(CHAT, "gpt-4o", {"messages": messages})

    def estimate(path: str, body: dict[str, Any]) -> int:
        return asyncio.run(tokenizer.estimate(path, "gpt-4o", body, default_output=1024))

    assert estimate(CHAT, {"messages": messages, "max_tokens": 100}) == prompt + 100
    assert estimate(CHAT, {"messages": messages}) == prompt + 1024
    assert estimate(CHAT, {"messages": messages, "max_tokens": 100, "n": 3}) == prompt + 300
    assert estimate("/v1/embeddings", {"input": "hello world"}) == tokenizer.count_text(
        "gpt-4o", "hello world"
    )
    batch = {"prompt": ["a", "b"], "max_tokens": 10, "n": 2}
    assert estimate("/v1/completions", batch) == 2 + 2 * 2 * 10


def test_a_large_prompt_is_counted_off_the_event_loop(tokenizer: Tokenizer) -> None:
    # Mostly CJK, the slowest text to encode: counting its first million characters takes
    # ~0.25 s on this machine, so done on the loop it would stall the ticker far beyond 50 ms.
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + list("abcdefghij é,.")
    text = "".join(rng.choices(alphabet, k=3_000_000))
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 10}

    async def run() -> tuple[int, float, int]:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        try:
            estimate = await tokenizer.estimate(CHAT, "gpt-4o", body, default_output=0)
            await asyncio.sleep(0.01)  # a stall ends in the ticker's next tick: let it record it
        finally:
            ticker.cancel()
        return estimate, max(gaps), len(gaps)

    estimate, worst_gap, ticks = asyncio.run(run())
    assert worst_gap < 0.05, f"the event loop stalled for {worst_gap * 1000:.0f} ms"
    assert ticks > 20  # the count took a while and the ticker ran all along
    assert estimate == tokenizer.count_request(CHAT, "gpt-4o", body) + 10


def test_beyond_the_cap_a_prompt_is_estimated_in_the_right_range(tokenizer: Tokenizer) -> None:
    prose = (
        "Rate limits are enforced per tenant. Each request reserves an estimate of its tokens, "
        "and the reservation is corrected once the provider reports what was used. A client "
        "that sends a very long prompt should not slow down everyone else.\n"
    )
    text = prose * (3_000_000 // len(prose))
    exact = 7 + tokenizer.count_text("gpt-4o", text)  # 3 + "user" + the text + 3
    body = {"messages": [{"role": "user", "content": text}]}
    estimate = tokenizer.count_request(CHAT, "gpt-4o", body)
    assert len(text) > 2 * EXACT_CHARS  # two thirds of it are not encoded
    # This prose has ~5.2 characters a token: CHARS_PER_TOKEN overestimates the rest by ~30%.
    assert exact * 1.1 < estimate < exact * 1.3

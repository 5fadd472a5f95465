import pytest

from gateway.providers.sse import (
    Framer,
    first_malformed,
    is_malformed,
    is_preamble,
    is_terminal,
    split,
    terminal_end,
)


def test_events_split_across_reads_come_out_as_runs_of_whole_events() -> None:
    framer = Framer()
    assert framer.feed(b'data: {"a":') == b""
    assert framer.feed(b'1}\n\ndata: {"b":2}\n') == b'data: {"a":1}\n\n'
    assert framer.feed(b"\ndata: [DONE]\n\n") == b'data: {"b":2}\n\ndata: [DONE]\n\n'
    assert framer.pending == b""


def test_crlf_line_endings_are_normalised() -> None:
    assert Framer().feed(b"event: x\r\ndata: 1\r\n\r\n") == b"event: x\ndata: 1\n\n"


def test_partial_event_stays_pending() -> None:
    framer = Framer()
    assert framer.feed(b"data: 1\n\ndata: 2") == b"data: 1\n\n"
    assert framer.pending == b"data: 2"


def test_split_gives_each_event_with_its_separator() -> None:
    assert split(b"data: 1\n\n: ping\n\ndata: 2\n\n") == [
        b"data: 1\n\n",
        b": ping\n\n",
        b"data: 2\n\n",
    ]


@pytest.mark.parametrize(
    ("run", "typed", "end"),
    [
        (b'data: {"a":1}\n\n', False, -1),
        (b'data: {"a":1}\n\ndata: [DONE]\n\n', False, 29),
        (b"data: [DONE]\n\n", False, 14),
        (b'data: {"t":"say data: [DONE]"}\n\n', False, -1),  # inside a text: not an event
        (b'event: response.output_text.delta\ndata: {"delta":"error"}\n\n', True, -1),
        (b"event: response.completed\ndata: {}\n\n", True, 36),
        (b"event: x\ndata: {}\n\nevent: response.failed\ndata: {}\n\nmore\n\n", True, 52),
        (b'data: {"type":"response.incomplete"}\n\n', True, 38),
        (b"data: [DONE]\n\n", True, -1),
    ],
)
def test_terminal_end_is_just_past_the_final_event(run: bytes, typed: bool, end: int) -> None:
    assert terminal_end(run, typed) == end


def test_a_broken_event_in_the_middle_of_a_clean_burst_is_not_looked_for() -> None:
    assert first_malformed(b'data: {"b":\n\ndata: {}\n\n') == -1  # the documented trade-off


@pytest.mark.parametrize(
    ("run", "offset"),
    [
        (b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n', -1),
        (b": keep-alive\n\ndata: {}\n\n", -1),
        (b'data: {"a":1}\n\ndata: {"b":\n\ndata: {}\n\n:\n\n', 15),  # checked: ends oddly
        (b'data: {"a":1}\n\ndata: {"b":\n\n', 15),
        (b"data: <html>\n\n", 0),
    ],
)
def test_first_malformed_event_is_found(run: bytes, offset: int) -> None:
    assert first_malformed(run) == offset


@pytest.mark.parametrize(
    ("event", "terminal"),
    [
        (b"data: [DONE]\n\n", True),
        (b"event: response.completed\ndata: {}\n\n", False),
    ],
)
def test_untyped_terminal_event_is_done(event: bytes, terminal: bool) -> None:
    assert is_terminal(event, typed=False) is terminal


@pytest.mark.parametrize(
    ("event", "malformed"),
    [
        (b'data: {"a":1}\n\n', False),
        (b"data: [DONE]\n\n", False),
        (b": keep-alive\n\n", False),
        (b'event: response.created\ndata: {"type":"response.created"}\n\n', False),
        (b'data: {"a":\n\n', True),
        (b"data: <html>\n\n", True),
    ],
)
def test_malformed_events(event: bytes, malformed: bool) -> None:
    assert is_malformed(event) is malformed


@pytest.mark.parametrize(
    ("run", "typed", "preamble"),
    [
        (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
         b'"finish_reason":null}]}\n\n', False, True),
        (b'data: {"choices":[],"prompt_filter_results":[]}\n\n', False, True),  # Azure's first
        (b": keep-alive\n\n", False, True),
        (b'data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}\n\n', False, False),
        (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]}\n\n',
         False, False),
        (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n', False, False),
        (b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n', False, False),
        (b"data: [DONE]\n\n", False, False),
        (b'event: response.created\ndata: {"type":"response.created"}\n\n'
         b'event: response.in_progress\ndata: {"type":"response.in_progress"}\n\n', True, True),
        (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n',
         True, False),
        (b'event: response.completed\ndata: {"type":"response.completed"}\n\n', True, False),
    ],
)  # fmt: skip
def test_preamble_is_what_carries_no_output_yet(run: bytes, typed: bool, preamble: bool) -> None:
    assert is_preamble(run, typed) is preamble

import pytest

from gateway.providers.sse import Framer, is_malformed, is_terminal


def test_events_split_across_reads_are_reassembled_verbatim() -> None:
    framer = Framer()
    assert framer.feed(b'data: {"a":') == []
    assert framer.feed(b'1}\n\ndata: {"b":2}\n') == [b'data: {"a":1}\n\n']
    assert framer.feed(b"\ndata: [DONE]\n\n") == [b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]
    assert framer.pending == b""


def test_crlf_line_endings_are_normalised() -> None:
    assert Framer().feed(b"event: x\r\ndata: 1\r\n\r\n") == [b"event: x\ndata: 1\n\n"]


def test_partial_event_stays_pending() -> None:
    framer = Framer()
    framer.feed(b"data: 1\n\ndata: 2")
    assert framer.pending == b"data: 2"


@pytest.mark.parametrize(
    ("event", "typed", "terminal"),
    [
        (b"data: [DONE]\n\n", False, True),
        (b'data: {"choices":[]}\n\n', False, False),
        (b"event: response.completed\ndata: {}\n\n", True, True),
        (b"event: response.failed\ndata: {}\n\n", True, True),
        (b"event: response.incomplete\ndata: {}\n\n", True, True),
        (b"event: error\ndata: {}\n\n", True, True),
        (b"event: response.output_text.delta\ndata: {}\n\n", True, False),
        (b'data: {"type":"response.completed"}\n\n', True, True),
        (b"data: [DONE]\n\n", True, False),
    ],
)
def test_terminal_events(event: bytes, typed: bool, terminal: bool) -> None:
    assert is_terminal(event, typed) is terminal


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

import pytest

from gateway.decide.calls import parse_call
from gateway.errors import InvalidRequest, shape_of
from gateway.model import Endpoint

CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def test_chat_call_reads_model_stream_and_client_timeout() -> None:
    call = parse_call(Endpoint.CHAT, CHAT, "600.0")
    assert (call.model, call.stream, call.read_timeout) == ("m", False, 600.0)


@pytest.mark.parametrize(
    ("endpoint", "raw", "param", "code"),
    [
        (Endpoint.CHAT, b"", None, "invalid_json"),
        (Endpoint.CHAT, b"{not json", None, "invalid_json"),
        (Endpoint.CHAT, b"[1, 2]", None, "invalid_json"),
        (Endpoint.CHAT, b'{"messages":[{"role":"user"}]}', "model", "invalid_field"),
        (Endpoint.CHAT, b'{"model":"","messages":[{"role":"user"}]}', "model", "invalid_field"),
        (Endpoint.CHAT, b'{"model":"m"}', "messages", "invalid_field"),
        (Endpoint.CHAT, b'{"model":"m","messages":[]}', "messages", "invalid_field"),
        (Endpoint.CHAT, b'{"model":"m","messages":["hi"]}', "messages[0]", "invalid_field"),
        (Endpoint.CHAT, CHAT[:-1] + b',"stream":"yes"}', "stream", "invalid_field"),
        (
            Endpoint.CHAT,
            CHAT[:-1] + b',"stream_options":{"include_usage":true}}',
            "stream_options",
            "invalid_field",
        ),
        (Endpoint.CHAT, CHAT[:-1] + b',"max_tokens":0}', "max_tokens", "invalid_field"),
        (Endpoint.CHAT, CHAT[:-1] + b',"n":true}', "n", "invalid_field"),
        (Endpoint.EMBEDDINGS, b'{"model":"e"}', "input", "invalid_field"),
        (
            Endpoint.EMBEDDINGS,
            b'{"model":"e","input":"x","stream":true}',
            "stream",
            "invalid_field",
        ),
        (
            Endpoint.EMBEDDINGS,
            b'{"model":"e","input":"x","encoding_format":"hex"}',
            "encoding_format",
            "invalid_field",
        ),
        (Endpoint.COMPLETIONS, b'{"model":"m"}', "prompt", "invalid_field"),
    ],
)
def test_bad_body_is_a_400_naming_the_field(
    endpoint: Endpoint, raw: bytes, param: str | None, code: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_call(endpoint, raw, None)
    assert shape_of(caught.value).status == 400
    assert caught.value.param == param
    assert shape_of(caught.value).code == code
    if param:
        assert f"`{param}`" in caught.value.message


def test_responses_call_needs_only_a_model() -> None:
    call = parse_call(Endpoint.RESPONSES, b'{"model":"m","input":"hi","stream":true}', None)
    assert call.stream is True


@pytest.mark.parametrize("header", [None, "", "abc", "-3", "0"])
def test_unusable_client_timeout_header_is_ignored(header: str | None) -> None:
    assert parse_call(Endpoint.CHAT, CHAT, header).read_timeout is None

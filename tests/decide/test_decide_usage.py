from gateway.decide.usage import usage_from_body, usage_from_run
from gateway.model import Endpoint, Usage


def test_chat_body_usage_with_details() -> None:
    body = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    }
    assert usage_from_body(body) == Usage(10, 5, 15, 4, 2)


def test_responses_body_usage_uses_input_and_output_names() -> None:
    body = {"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}}
    assert usage_from_body(body) == Usage(7, 3, 10)


def test_embeddings_usage_has_no_completion() -> None:
    assert usage_from_body({"usage": {"prompt_tokens": 4, "total_tokens": 4}}) == Usage(4, 0, 4)


def test_body_without_usage_has_none() -> None:
    assert usage_from_body({"id": "x"}) is None
    assert usage_from_body({"usage": None}) is None
    assert usage_from_body([1]) is None


def test_chat_usage_chunk_is_read_and_null_usage_is_skipped() -> None:
    chunk = (
        b'data: {"choices":[],"usage":'
        b'{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}\n\n'
    )
    assert usage_from_run(Endpoint.CHAT, chunk) == Usage(2, 1, 3)
    assert usage_from_run(Endpoint.CHAT, b'data: {"choices":[{}],"usage":null}\n\n') is None


def test_usage_is_found_in_a_run_of_several_events() -> None:
    run = (
        b'data: {"choices":[{}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
        b"\n\ndata: [DONE]\n\n"
    )
    assert usage_from_run(Endpoint.CHAT, run) == Usage(5, 2, 7)


def test_responses_usage_comes_from_the_terminal_event() -> None:
    event = (
        b'event: response.completed\ndata: {"type":"response.completed","response":'
        b'{"usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}}\n\n'
    )
    assert usage_from_run(Endpoint.RESPONSES, event) == Usage(4, 6, 10)

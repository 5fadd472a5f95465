import orjson
import pytest

from gateway import errors


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidRequest("x"), 400, "invalid_request"),
        (errors.AuthenticationFailed("x"), 401, "invalid_api_key"),
        (errors.ModelNotAllowed("x"), 403, "model_not_allowed"),
        (errors.ModelNotFound("x"), 404, "model_not_found"),
        (errors.MethodNotAllowed("x"), 405, "method_not_allowed"),
        (errors.PayloadTooLarge("x"), 413, "payload_too_large"),
        (errors.UnsupportedMediaType("x"), 415, "unsupported_media_type"),
        (errors.UpstreamUnreachable("x"), 502, "upstream_unreachable"),
        (errors.UpstreamTimeout("x", code="idle_timeout"), 504, "idle_timeout"),
        (errors.GatewayUnavailable("x"), 503, "shutting_down"),
    ],
)
def test_each_error_has_one_status_and_code(
    error: errors.SavepointError, status: int, code: str
) -> None:
    shape = errors.shape_of(error)
    assert (shape.status, shape.code) == (status, code)


def test_error_body_always_has_the_four_openai_keys() -> None:
    body = orjson.loads(errors.error_body(errors.ModelNotFound("no such model", param="model")))
    assert body == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_stream_error_event_is_what_openai_python_raises_on() -> None:
    event = errors.stream_error_event(errors.UpstreamTimeout("slow", code="idle_timeout"), False)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:])["error"]["code"] == "idle_timeout"


def test_typed_stream_error_event_is_a_responses_error_event() -> None:
    event = errors.stream_error_event(errors.UpstreamTimeout("slow"), True)
    head, data = event.split(b"\n", 1)
    assert head == b"event: error"
    payload = orjson.loads(data[6:])
    assert payload["type"] == "error" and payload["code"] == "upstream_timeout"
    assert payload["error"]["message"] == "slow"

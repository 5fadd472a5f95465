import pytest

from gateway.decide.failures import classify_error, classify_reply, retry_after
from gateway.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnreachable
from gateway.model import Failure


def _err(code: str | None, kind: str = "invalid_request_error", message: str = "x") -> bytes:
    code_json = "null" if code is None else f'"{code}"'
    return (f'{{"error":{{"message":"{message}","type":"{kind}","param":null,'
            f'"code":{code_json}}}}}').encode()  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "failure"),
    [
        (200, b"{}", None),
        (429, _err("rate_limit_exceeded", "requests"), Failure.RATE_LIMITED),
        (429, b"slow down", Failure.RATE_LIMITED),
        (429, _err("insufficient_quota", "insufficient_quota"), Failure.QUOTA),
        (500, _err(None, "server_error"), Failure.SERVER_ERROR),
        (502, b"<html>bad gateway</html>", Failure.SERVER_ERROR),
        (503, b"", Failure.SERVER_ERROR),
        (529, _err("overloaded", "overloaded_error"), Failure.SERVER_ERROR),
        (408, b"", Failure.SERVER_ERROR),
        (400, _err("context_length_exceeded"), Failure.CONTEXT_WINDOW),
        (400, _err(None, message="This model's maximum context length is 8192 tokens"),
         Failure.CONTEXT_WINDOW),
        (413, _err(None, message="prompt is too long: 250000 tokens"), Failure.CONTEXT_WINDOW),
        (400, _err("content_filter"), Failure.CONTENT_FILTER),
        (400, _err("content_policy_violation"), Failure.CONTENT_FILTER),
        (400, _err("invalid_value"), Failure.CLIENT_ERROR),
        (401, _err("invalid_api_key"), Failure.CLIENT_ERROR),
        (404, _err("model_not_found"), Failure.CLIENT_ERROR),
        (409, b"", Failure.CLIENT_ERROR),
    ],
)  # fmt: skip
def test_reply_failure_classes(status: int, body: bytes, failure: Failure | None) -> None:
    assert classify_reply(status, body) is failure


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (UpstreamUnreachable("x"), Failure.CONNECT),
        (UpstreamTimeout("x", code="connect_timeout"), Failure.CONNECT),
        (UpstreamTimeout("x", code="first_byte_timeout"), Failure.FIRST_BYTE_TIMEOUT),
        (UpstreamTimeout("x", code="idle_timeout"), Failure.IDLE_TIMEOUT),
        (UpstreamTimeout("x", code="deadline_exceeded"), Failure.DEADLINE),
        (UpstreamBadResponse("x", code="upstream_disconnected"), Failure.SERVER_ERROR),
        (UpstreamBadResponse("x", code="upstream_stream_cut"), Failure.SERVER_ERROR),
    ],
)
def test_error_failure_classes(error: UpstreamTimeout, failure: Failure) -> None:
    assert classify_error(error) is failure


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),  # -ms first, as the SDKs do
        ({"retry-after": "Thu, 26 Nov 2026 07:00:10 GMT"}, 10.0),
        ({"retry-after": "Thu, 26 Nov 2026 06:59:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_reads_ms_seconds_and_dates(headers: dict[str, str], seconds: float) -> None:
    now = 1795676400.0  # 2026-11-26 07:00:00 UTC
    assert retry_after(headers, now) == seconds


@pytest.mark.parametrize(
    ("failure", "counts"),
    [
        (Failure.CONNECT, True),
        (Failure.FIRST_BYTE_TIMEOUT, True),
        (Failure.IDLE_TIMEOUT, True),
        (Failure.SERVER_ERROR, True),
        (Failure.RATE_LIMITED, False),  # a cooldown, not a breaker failure
        (Failure.QUOTA, False),
        (Failure.CLIENT_ERROR, False),
        (Failure.CONTEXT_WINDOW, False),
        (Failure.CONTENT_FILTER, False),
        (Failure.DEADLINE, False),
    ],
)
def test_only_provider_failures_count_against_its_health(failure: Failure, counts: bool) -> None:
    assert failure.provider_health is counts

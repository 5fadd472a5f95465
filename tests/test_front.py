"""The HTTP/1.1 front (`gateway/front.py`) on raw sockets: what an HTTP client sees that the
SDK tests do not show. Generation requests are answered by the front, anything else on the
same connection by aiohttp after the hand-over; HTTP/1.0, `Expect: 100-continue`, chunked
request bodies, pipelining, oversized and malformed heads."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any

import pytest
from harness import Gateway, Gateways, mock_provider

CHAT = b"/v1/chat/completions"


@pytest.fixture(scope="module")
def front(gateways: Gateways) -> Gateway:
    return gateways.basic()


def _request(
    path: bytes, body: dict[str, Any] | None = None, *, method: bytes = b"POST",
    version: bytes = b"1.1", headers: bytes = b""
) -> bytes:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else b""
    head = b"%b %b HTTP/%b\r\nHost: gateway\r\nContent-Type: application/json\r\n" % (
        method, path, version)  # fmt: skip
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(data)
    return head + headers + b"\r\n" + data


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


class _Conn:
    """One client connection, reading whole responses (Content-Length, chunked, or to EOF)."""

    def __init__(self, gw: Gateway):
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self._exactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._exactly(size)
                self._exactly(2)
            self._exactly(2)
            return status, headers, body
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server has closed the connection (and sent nothing more)."""
        try:
            return not self._fill() and not self.buf
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _answer(body: bytes) -> str:
    return str(json.loads(body)["choices"][0]["message"]["content"])


def test_one_connection_serves_generation_and_other_routes_in_any_order(front: Gateway) -> None:
    conn = _Conn(front)
    try:
        conn.send(_request(CHAT, _chat("first")))
        status, headers, body = conn.response()
        assert status == 200 and _answer(body)
        assert headers["connection"] == "keep-alive"
        conn.send(_request(b"/v1/models", method=b"GET"))  # aiohttp's, on the same socket
        status, _, body = conn.response()
        assert status == 200
        assert "gpt-test" in [m["id"] for m in json.loads(body)["data"]]
        conn.send(_request(CHAT, _chat("third")))
        status, _, body = conn.response()
        assert status == 200 and _answer(body)
    finally:
        conn.close()


def test_after_a_hand_over_aiohttps_generation_route_answers_the_same(
    gateways: Gateways,
) -> None:
    gw = gateways.start(f"""
version: 1
store: {{path: "{{tmp}}/front-auth.db"}}
providers:{mock_provider("up")}
models:
  gpt-test: {{targets: [up/mock-gpt]}}
clients:
  alice: {{key_sha256: {hashlib.sha256(b"sk-alice-front").hexdigest()}}}
""")
    auth = b"Authorization: Bearer sk-alice-front\r\n"
    conn = _Conn(gw)
    try:
        conn.send(_request(b"/v1/models", method=b"GET", headers=auth))  # hands over
        assert conn.response()[0] == 200
        for n in range(2):  # kept alive by aiohttp too
            conn.send(_request(CHAT, _chat(f"stream {n}", stream=True), headers=auth))
            status, headers, body = conn.response()
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert body.rstrip().endswith(b"data: [DONE]")
        conn.send(_request(CHAT, _chat("no key")))
        status, _, body = conn.response()
        assert status == 401
        assert json.loads(body)["error"]["code"] == "missing_api_key"
    finally:
        conn.close()
    fresh = _Conn(gw)  # the front, for comparison: the same headers a client relies on
    try:
        fresh.send(_request(CHAT, _chat("stream front", stream=True), headers=auth))
        status, headers, body = fresh.response()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.rstrip().endswith(b"data: [DONE]")
        assert "x-savepoint-request-id" in headers and "x-request-id" in headers
    finally:
        fresh.close()


def test_an_http_1_0_stream_is_sent_whole_and_the_connection_closed(front: Gateway) -> None:
    conn = _Conn(front)
    try:
        conn.send(_request(CHAT, _chat("old client", stream=True), version=b"1.0"))
        status, headers, body = conn.response()  # read to EOF: no chunked framing
        assert status == 200
        assert "transfer-encoding" not in headers
        assert headers["connection"] == "close"
        events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        assert len(events) > 3
    finally:
        conn.close()


def test_expect_100_continue_and_a_chunked_body_are_answered(front: Gateway) -> None:
    conn = _Conn(front)
    try:
        data = json.dumps(_chat("chunked")).encode()
        ask = b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n"
        conn.send(_request(CHAT, None, headers=ask))
        assert conn.response()[0] == 100  # before the body is sent
        half = len(data) // 2
        for part in (data[:half], data[half:]):
            conn.send(b"%x\r\n%b\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        status, _, body = conn.response()
        assert status == 200 and _answer(body)
    finally:
        conn.close()


def test_a_request_sent_before_the_last_answer_is_answered_after_it(gateways: Gateways) -> None:
    slow = gateways.start(f"""
version: 1
store: {{path: "{{tmp}}/front-slow.db"}}
providers:{mock_provider("slow", "delay=0.3")}
models:
  gpt-test: {{targets: [slow/mock-gpt]}}
""")
    conn = _Conn(slow)
    try:
        conn.send(_request(CHAT, _chat("one")))
        time.sleep(0.1)  # the first is being answered (its upstream takes 0.3 s)
        conn.send(_request(CHAT, _chat("two")))
        for _ in range(2):
            status, _, body = conn.response()
            assert status == 200 and _answer(body)
    finally:
        conn.close()
    conn = _Conn(slow)
    try:  # both in one write: the first is answered, then the connection closes
        conn.send(_request(CHAT, _chat("three")) + _request(CHAT, _chat("four")))
        status, _, body = conn.response()
        assert status == 200 and _answer(body)
        assert conn.closed()
    finally:
        conn.close()


def test_a_head_too_large_is_431_and_a_malformed_one_400(front: Gateway) -> None:
    conn = _Conn(front)
    try:
        huge = b"X-Padding: " + b"a" * 70_000 + b"\r\n"
        conn.send(_request(CHAT, _chat("big head"), headers=huge))
        status, headers, body = conn.response()
        assert status == 431
        error = json.loads(body)["error"]
        assert error["code"] == "request_header_fields_too_large"
        assert "headers" in error["message"]
        assert headers["connection"] == "close" and conn.closed()
    finally:
        conn.close()
    conn = _Conn(front)
    try:
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n")
        status, _, body = conn.response()
        assert status == 400
        assert json.loads(body)["error"]["code"] == "malformed_request"
        assert conn.closed()
    finally:
        conn.close()


def test_a_request_line_the_front_does_not_serve_gets_aiohttps_answer(front: Gateway) -> None:
    conn = _Conn(front)
    try:
        conn.send(_request(b"/v1/chat/completions/", _chat("trailing slash")))
        status, _, body = conn.response()
        assert status == 404
        assert json.loads(body)["error"]["code"] == "unknown_url"
    finally:
        conn.close()

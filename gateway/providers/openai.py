"""Any OpenAI-compatible HTTP API, over one pool of keep-alive connections per provider.

Owns: the upstream URL and credentials (never sent anywhere else, never logged), the four
timeouts, SSE framing of streams, and the translation of HTTP/OS errors into ours. The
connections themselves are `providers.http`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from gateway.config.schema import ProviderSpec
from gateway.errors import (
    SavepointError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.providers import http
from gateway.providers.base import UpstreamReply, UpstreamRequest
from gateway.providers.sse import Framer, first_malformed, is_preamble, terminal_end

# Upstream response headers a client may care about. Provider rate-limit headers describe the
# provider account, not the client's limits, so they are not passed on.
_PASSED_HEADERS = ("x-request-id", "retry-after", "retry-after-ms", "openai-processing-ms")


class OpenAIProvider:
    def __init__(self, spec: ProviderSpec):
        self.name = spec.name
        self._spec = spec
        self._base_url = spec.base_url
        headers = {"Content-Type": "application/json", **spec.headers}
        if spec.api_key is not None:
            headers["Authorization"] = f"Bearer {spec.api_key.reveal()}"
        self._headers = http.header_block(headers)
        # Everything we send that could be a credential: the key, and the configured headers
        # (an Azure `api-key`, an `x-api-key`...). Short values are not secrets worth hiding.
        secrets = [spec.api_key.reveal()] if spec.api_key is not None else []
        secrets += [value for value in spec.headers.values() if len(value) >= 12]
        self._secrets = [s.encode() for s in secrets if s]
        self._pool: http.HttpPool | None = None
        self._path = b""  # the base URL's path, which every endpoint's path follows

    async def start(self, base_url: str | None = None) -> None:
        """Open the connection pool; `base_url` overrides the policy's (the in-process mock
        learns its port only once it listens)."""
        if base_url is not None:
            self._base_url = base_url
        self._pool = http.HttpPool(self._base_url, self._spec.max_connections)
        url = urlsplit(self._base_url)
        self._path = (url.path.rstrip("/") + (f"?{url.query}" if url.query else "")).encode()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def scrub(self, body: bytes) -> bytes:
        """An upstream error body with our credentials blanked out, should it echo them."""
        for secret in self._secrets:
            if secret in body:
                body = body.replace(secret, b"***")
        return body

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        assert self._pool is not None, "provider used before start()"
        t = request.timeouts
        loop = asyncio.get_running_loop()
        started = loop.time()  # deadlines are in the loop's clock: no conversions per read
        deadline = started + t.total
        first_byte_by = min(deadline, started + t.first_byte) if request.stream else deadline
        headers = b"%sX-Client-Request-Id: %s\r\n%s" % (
            self._headers,
            request.request_id.encode(),
            b"Accept: text/event-stream\r\n" if request.stream else b"",
        )
        target = self._path + request.endpoint.path.encode()
        response: http.HttpResponse | None = None
        stream: _Stream | None = None
        try:
            async with asyncio.timeout_at(first_byte_by):
                response = await self._pool.post(target, headers, request.body, t.connect)
                passed = _passed_headers(response.headers)
                if not request.stream or response.status != 200:
                    body = await response.read()
                    response.release()
                    return UpstreamReply(response.status, passed, body)
                stream = _Stream(
                    self.name, response, request.endpoint.typed_events, t.idle, deadline
                )
                first = await stream.next_run()
                # Hold back events that carry no output yet (the role chunk, response.created):
                # until output arrives the stream is not committed, so a break is retryable.
                try:
                    while first and is_preamble(first, request.endpoint.typed_events):
                        more = await stream.next_run()
                        if not more:
                            break
                        first += more
                except UpstreamTimeout as e:
                    if e.code != "idle_timeout":
                        raise
                    raise UpstreamTimeout(  # nothing reached the client: a first-byte failure
                        f"provider `{self.name}` started the stream but sent no output for "
                        f"{t.idle:g}s (timeouts.idle)",
                        code="first_byte_timeout",
                    ) from None
                if not first:
                    raise UpstreamBadResponse(
                        f"provider `{self.name}` ended the stream with no event"
                    )
                return UpstreamReply(200, passed, first_run=first, events=stream)
        except http.HttpError as e:
            _close(response, stream)
            raise _translate(self.name, e, t.connect) from None
        except TimeoutError:
            _close(response, stream)
            if request.stream and first_byte_by < deadline:
                raise UpstreamTimeout(
                    f"provider `{self.name}` sent no first token within {t.first_byte:g}s "
                    "(timeouts.first_byte)",
                    code="first_byte_timeout",
                ) from None
            raise UpstreamTimeout(
                f"provider `{self.name}` did not answer within {t.total:g}s (timeouts.total)",
                code="deadline_exceeded",
            ) from None
        except BaseException:
            _close(response, stream)
            raise


class _Stream:
    """The rest of one upstream stream (implements `EventStream`).

    Idle gaps and the total deadline are watched by one timer per stream that re-arms itself,
    rather than a timeout context per read: a read costs no timer at all. When the timer
    finds the stream late, it aborts it with the timeout error, exactly as a drain does."""

    __slots__ = ("_abort", "_deadline", "_done", "_framer", "_idle", "_last", "_loop",
                 "_provider", "_response", "_typed", "_watchdog")  # fmt: skip

    def __init__(
        self,
        provider: str,
        response: http.HttpResponse,
        typed: bool,
        idle: float,
        deadline: float,
    ):
        self._provider = provider
        self._response = response
        self._typed = typed
        self._idle = idle
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline  # in loop time
        self._last = self._loop.time()
        self._framer = Framer()
        self._done = False
        self._abort: SavepointError | None = None
        self._watchdog = self._loop.call_at(min(self._last + idle, self._deadline), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self.abort(UpstreamTimeout(
                f"provider `{self._provider}` did not finish the stream in time (timeouts.total)",
                code="deadline_exceeded",
            ))  # fmt: skip
        elif now >= self._last + self._idle:
            self.abort(UpstreamTimeout(
                f"provider `{self._provider}` sent nothing for {self._idle:g}s in the middle "
                "of a stream (timeouts.idle)",
                code="idle_timeout",
            ))  # fmt: skip
        else:
            due = min(self._last + self._idle, self._deadline)
            self._watchdog = self._loop.call_at(due, self._check)

    async def next_run(self) -> bytes:
        while not self._done:
            if self._abort is not None:
                raise self._abort
            try:
                data = await self._response.readany()
            except http.HttpError as e:
                self.close()
                if self._abort is not None:
                    raise self._abort from None
                raise UpstreamBadResponse(
                    f"provider `{self._provider}` broke the stream off: {type(e).__name__}",
                    code="upstream_stream_cut",
                ) from None
            self._last = self._loop.time()
            if not data:
                self.close()
                if self._abort is not None:
                    raise self._abort
                raise UpstreamBadResponse(
                    f"provider `{self._provider}` ended the stream without its final event",
                    code="upstream_stream_truncated",
                )
            run = self._framer.feed(data)
            if not run:
                continue
            end = terminal_end(run, self._typed)
            if end >= 0:
                run = run[:end]
            bad = first_malformed(run)
            if bad >= 0:
                # Hand out the good events first; the next call reports the bad one.
                self._abort = UpstreamBadResponse(
                    f"provider `{self._provider}` sent a stream event that is not JSON",
                    code="upstream_bad_response",
                )
                self.close()
                if bad:
                    return run[:bad]
                raise self._abort
            if end >= 0:
                self._done = True
                self.close()
            return run
        return b""

    def abort(self, reason: SavepointError) -> None:
        if self._abort is None:
            self._abort = reason
        self.close()

    def close(self) -> None:
        self._watchdog.cancel()
        if self._done:
            self._response.release()
        else:
            self._response.close()


def _passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name in _PASSED_HEADERS if (value := headers.get(name)) is not None}


def _close(response: http.HttpResponse | None, stream: _Stream | None) -> None:
    if stream is not None:
        stream.close()  # its watchdog too
    elif response is not None:
        response.close()


def _translate(provider: str, error: http.HttpError, connect_timeout: float) -> UpstreamError:
    if isinstance(error, http.ConnectTimedOut):
        return UpstreamTimeout(
            f"could not connect to provider `{provider}` within {connect_timeout:g}s "
            "(timeouts.connect)",
            code="connect_timeout",
        )
    if isinstance(error, http.ConnectFailed):
        return UpstreamUnreachable(
            f"cannot connect to provider `{provider}` at {error.host}:{error.port}: "
            f"{error.error.strerror or type(error.error).__name__}"
        )
    if isinstance(error, http.Disconnected):
        return UpstreamBadResponse(
            f"provider `{provider}` closed the connection before the answer was complete",
            code="upstream_disconnected",
        )
    return UpstreamBadResponse(
        f"provider `{provider}` sent an answer that is not valid HTTP: {error}",
        code="upstream_bad_response",
    )

"""Value types that flow through the request pipeline.

Everything here is plain data. `Trace` is the one mutable record: each stage fills in what it
learnt (client, target, status, usage) and the access log writes it once at the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from gateway.values import value


class Endpoint(enum.Enum):
    """A generation endpoint: its path under /v1 and how its streams end."""

    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"
    RESPONSES = "/responses"

    @property
    def path(self) -> str:
        return self.value

    @property
    def can_stream(self) -> bool:
        return self is not Endpoint.EMBEDDINGS

    @property
    def typed_events(self) -> bool:
        """Responses API streams are typed events that end on a terminal event, not [DONE]."""
        return self is Endpoint.RESPONSES


class Failure(enum.Enum):
    """Why an upstream attempt failed, as far as routing cares (`decide/failures.py` decides)."""

    CONNECT = "connect_error"  # refused, reset, DNS, connect timeout
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"  # a stream went silent (after the commit point)
    DEADLINE = "deadline_exceeded"  # the route's (or the client's) deadline ran out
    SERVER_ERROR = "server_error"  # 5xx, 529, 408; a broken or malformed answer
    RATE_LIMITED = "rate_limited"  # 429 that waiting can fix
    QUOTA = "quota_exceeded"  # 429 insufficient_quota: waiting cannot fix it
    CONTEXT_WINDOW = "context_window_exceeded"
    CONTENT_FILTER = "content_filter"
    CLIENT_ERROR = "client_error"  # any other 4xx: the request's fault, returned as it is

    @property
    def provider_health(self) -> bool:
        """Whether it says something is wrong with the provider (counts for its breaker)."""
        return self in _UNHEALTHY


_UNHEALTHY = frozenset(
    {Failure.CONNECT, Failure.FIRST_BYTE_TIMEOUT, Failure.IDLE_TIMEOUT, Failure.SERVER_ERROR}
)


@value
class Principal:
    """Who is calling: a client from the policy, or `anonymous` when auth is off."""

    name: str
    models: frozenset[str] | None  # None: every model


ANONYMOUS = Principal("anonymous", None)


@value
class Call:
    """One parsed client request to a generation endpoint."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    read_timeout: float | None  # the client's own read timeout (x-stainless-read-timeout)
    # A stream whose client did not ask for usage: the gateway asks the provider for it (its
    # reports need it) and takes the usage chunk out of what the client gets.
    usage_hidden: bool = False


@value
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@value
class Attempt:
    """One upstream call: where it went, how it ended ("ok" or a `Failure` value), how long."""

    target: str
    outcome: str
    ms: float


@dataclass(slots=True)
class Trace:
    """What happened to one request, filled in by the stages, written by the access log."""

    request_id: str
    method: str
    path: str
    started: float
    client: str | None = None
    model: str | None = None
    stream: bool = False
    target: str | None = None
    upstream_request_id: str | None = None
    status: int = 0
    error_code: str | None = None
    first_byte: float | None = None
    usage: Usage | None = None
    attempts: list[Attempt] = field(default_factory=list)
    fallback: bool = False  # served (or failed) beyond the route's first group
    cache: str | None = None  # hit, miss, refresh, bypass (models with a cache); replay
    run: str | None = None  # "<client>/<run id>" for a step of a durable run
    idempotency: str | None = None  # with an Idempotency-Key: executed, replayed, attached
    saved: Usage | None = None  # the usage of a stored answer served instead of a live one
    estimated: bool = False  # `usage` was counted by the gateway: the provider reported none
    streamed_chars: int = 0  # generated text relayed in a stream, for such an estimate
    detached: bool = False  # the client left; the call goes on and is recorded when it ends
    flags: list[str] = field(default_factory=list)  # e.g. "loop": the loop guard flagged it
    extra_headers: dict[str, str] = field(default_factory=dict)  # set by stages, on the reply

"""Value types that flow through the request pipeline.

Everything here is plain data. `Trace` is the one mutable record: each stage fills in what it
learnt (client, target, status, usage) and the accounting stage reads it once at the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a client from the policy, or `anonymous` when auth is off."""

    name: str
    models: frozenset[str] | None  # None: every model


ANONYMOUS = Principal("anonymous", None)


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed client request to a generation endpoint."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    read_timeout: float | None  # the client's own read timeout (x-stainless-read-timeout)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Trace:
    """What happened to one request, filled in by the stages, logged by accounting."""

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
    extra: dict[str, Any] = field(default_factory=dict)

"""The validated policy: frozen dataclasses, and the one place where defaults are defined.

`load.py` turns YAML into these; nothing else constructs them from user input. Every field has
exactly one default, here. Secrets are wrapped in `Secret` so that no repr, log line or error
message can print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ProviderKind = Literal["openai", "mock"]
StoreKind = Literal["sqlite", "redis"]


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential. Its repr never shows the value; `reveal()` is the only way to read it."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `first_byte` bounds the wait for the first stream event (time to first token);
    a non-streamed answer arrives whole, so it is bounded by `total` alone."""

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: ProviderKind
    base_url: str  # ends without a slash, e.g. https://api.openai.com/v1; empty for `mock`
    api_key: Secret | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = 256
    mock: str = ""  # knobs of the in-process mock, in the mock's `x-mock` header syntax


@dataclass(frozen=True, slots=True)
class TargetSpec:
    provider: str
    model: str  # the upstream model name
    timeouts: Timeouts  # the provider's, with this target's overrides applied

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    targets: tuple[TargetSpec, ...]
    owned_by: str = "savepoint"


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    key_hashes: frozenset[str]  # sha256 hex of each API key
    models: frozenset[str] | None = None  # None: every model


@dataclass(frozen=True, slots=True)
class ServerSpec:
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class StoreSpec:
    kind: StoreKind = "sqlite"
    path: str = ".savepoint/savepoint.db"
    url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class Policy:
    source: str
    server: ServerSpec
    store: StoreSpec
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, ModelSpec]
    clients: Mapping[str, ClientSpec]
    # Models dropped because every provider they route to is switched off, with the reason:
    # requests for them get a 404 that says how to switch the provider on.
    unavailable: Mapping[str, str] = field(default_factory=dict)
    disabled_providers: Mapping[str, str] = field(default_factory=dict)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.clients)

"""The validated policy: frozen dataclasses, and the one place where defaults are defined.

`load.py` turns YAML into these; nothing else constructs them from user input. Every field has
exactly one default, here. Secrets are wrapped in `Secret` so that no repr, log line or error
message can print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.model import Failure

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
    # Limits of a deployment (by upstream model name), to stay under the provider's own quota:
    # a request over one skips that deployment as it would a cooling-down one.
    limits: Mapping[str, LimitSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A deployment: one model at one provider. Its health (breaker, cooldown) is shared by
    every route that uses it."""

    provider: str
    model: str  # the upstream model name
    timeouts: Timeouts  # the provider's, with this target's overrides applied
    weight: float = 1.0  # share of the group's traffic under weighted balancing
    context_window: int | None = None  # tokens; lets a context overflow move to a bigger one

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """Deployments that stand in for each other, balanced; a route tries groups in order."""

    targets: tuple[TargetSpec, ...]


Balance = Literal["weighted", "least_in_flight"]
DEFAULT_DEADLINE = 600.0

# What moves a request on to the route's next group when its group cannot serve it.
DEFAULT_FALLBACK_ON = frozenset(
    {
        Failure.CONNECT,
        Failure.FIRST_BYTE_TIMEOUT,
        Failure.SERVER_ERROR,
        Failure.RATE_LIMITED,
        Failure.QUOTA,
        Failure.CONTEXT_WINDOW,
    }
)


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Retries of the same deployment within one request (switching to another deployment
    or group is not a retry). Backoff is full jitter: uniform(0, min(cap, base * 2**n))."""

    attempts_per_target: int = 2
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    budget_ratio: float = 0.2  # retrying requests <= ratio x active requests, per deployment
    budget_min: int = 3  # ... but always at least this many


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The response cache of one model. Off unless the policy turns it on: a cache makes
    identical requests get identical answers, which is not what a sampling temperature above
    zero asks for; turn it on where repeated requests should not be paid twice."""

    enabled: bool = False
    ttl: float = 3600.0
    max_entries: int = 10_000  # per model; the oldest are evicted first
    max_entry_bytes: int = 1024 * 1024  # larger answers are not stored
    shared: bool = False  # one cache for all clients (default: one per client)


@dataclass(frozen=True, slots=True)
class RunsSpec:
    """Durable agent runs (`X-Savepoint-Run`): how long a run's journal is kept after its
    last step."""

    retention: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class IdempotencySpec:
    """`Idempotency-Key`: how long a finished answer is kept (`retention`); the lease of the
    gateway executing a request (renewed every third of it; once it lapses, say because that
    gateway died, a retry takes over); how long a duplicate waits for the request in flight
    before it gets a 409 (`wait`, cut to the client's own deadline)."""

    retention: float = 24 * 3600.0
    lease: float = 30.0
    wait: float = 120.0
    memory: int = 32 * 1024 * 1024  # bytes of recently finished answers kept per worker


@dataclass(frozen=True, slots=True)
class UsageSpec:
    """The usage ledger (`enabled: false`: none, and no reports): written every `flush`
    seconds (a gateway killed outright loses at most that last interval); entries kept
    `retention`, daily aggregates `daily_retention`."""

    enabled: bool = True
    flush: float = 0.5
    retention: float = 90 * 86400.0
    daily_retention: float = 400 * 86400.0
    max_queued: int = 200_000  # entries held per worker while the store is away


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Requests per minute, tokens per minute (prompt and completion), requests at once; None:
    no such limit. Token limits reserve an estimate when a request is admitted and settle to
    the usage the provider reports."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.concurrency is not None


NO_LIMITS = LimitSpec()
BudgetPeriod = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """What a client may spend per calendar day or month (UTC): tokens, US dollars, or both.
    Past `soft` of it, answers carry a warning header and the gateway logs it once per period;
    at the limit, requests are refused (429 `insufficient_quota`) until the period ends."""

    period: BudgetPeriod = "day"
    tokens: int | None = None
    usd: float | None = None
    soft: float = 0.8


@dataclass(frozen=True, slots=True)
class GuardSpec:
    """The runaway-agent guard. A client sending the same request (same fingerprint) more
    than `repeats` times within `window` seconds is looping; so is a durable run with more
    than `run_steps` steps or costing more than `run_usd`. Flagged (log line, header, metric)
    always; refused (429 `loop_detected`) only with `block`. `enabled`: None (the default)
    counts the requests that pass through limits or a budget anyway (the counters ride on
    the same store call, at no extra round trip); True counts every request; False none."""

    enabled: bool | None = None
    repeats: int = 20
    window: float = 60.0
    run_steps: int | None = 1000
    run_usd: float | None = None
    block: bool = False


@dataclass(frozen=True, slots=True)
class PriceSpec:
    """US dollars per million tokens: prompt tokens not cached, prompt tokens served from the
    provider's prompt cache, completion tokens (reasoning included)."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """One circuit breaker per deployment (pybreaker): `fail_max` consecutive provider
    failures open it; after `reset_timeout` one probe at a time may pass; each consecutive
    re-open doubles the timeout up to `max_reset_timeout`."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    max_reset_timeout: float = 300.0
    success_threshold: int = 2
    rate_limit_cooldown: float = 5.0  # a 429 without Retry-After benches a deployment this long
    max_cooldown: float = 60.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    groups: tuple[GroupSpec, ...]  # the fallback chain, fallback models already expanded
    owned_by: str = "savepoint"
    deadline: float = DEFAULT_DEADLINE  # the whole chain, retries and backoff included
    fallback_on: frozenset[Failure] = DEFAULT_FALLBACK_ON
    balance: Balance = "weighted"
    retries: RetrySpec = RetrySpec()
    cache: CacheSpec = CacheSpec()
    limits: LimitSpec = NO_LIMITS  # every client together

    @property
    def targets(self) -> tuple[TargetSpec, ...]:
        return tuple(t for group in self.groups for t in group.targets)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    key_hashes: frozenset[str]  # sha256 hex of each API key
    models: frozenset[str] | None = None  # None: every model
    limits: LimitSpec = NO_LIMITS  # this client, all models together
    model_limits: Mapping[str, LimitSpec] = field(default_factory=dict)  # this client, per model
    budget: BudgetSpec | None = None


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What one worker holds at most: requests in flight (past it, a 503 `overloaded`),
    store writes waiting to run after their answers, per feature (past it, dropped and
    logged), and access-log lines waiting for stderr (past it, dropped and counted)."""

    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 30.0
    max_in_flight: int = 10_000
    max_pending_writes: int = 10_000
    max_log_backlog: int = 100_000


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
    breakers: BreakerSpec = BreakerSpec()
    runs: RunsSpec = RunsSpec()
    idempotency: IdempotencySpec = IdempotencySpec()
    prices: Mapping[str, PriceSpec] = field(default_factory=dict)  # by upstream model name
    guard: GuardSpec = GuardSpec()
    usage: UsageSpec = UsageSpec()
    admin_key_hashes: frozenset[str] = frozenset()  # empty: admin API open only with auth off

    @property
    def auth_enabled(self) -> bool:
        return bool(self.clients)

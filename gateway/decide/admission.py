"""Which limits and budgets apply to a request, and what a verdict looks like on the wire.

Pure: the policy, the request's reservation and the time in; the limits to check (see
`decide.limits`), the response headers and the refusal out.

Limit keys use `/`, which names cannot hold, so no two scopes ever share a key:

    c/<client>/rpm|tpm|conc          the client, every model together
    cm/<client>/<model>/rpm|tpm|conc the client on one model
    m/<model>/rpm|tpm|conc           the model, every client together
    d/<provider>/<model>/rpm|tpm|conc  a deployment (checked by dispatch, per attempt)
    b/<client>/<period>/tokens|usd   the client's budget for a calendar day or month (UTC)
    g/<client>/<fingerprint>/<n>     the loop guard: one request's repeats in window n
    r/<client>/<run>/steps|usd       the loop guard: a durable run's steps and cost

The loop guard's counters are quotas too. Flagging only (the default), their limit is so high
that they never refuse, and the verdict's `remaining` tells how far the count went.

A budget in dollars is counted in micro-dollars, so its counter stays an exact integer.
"""

from __future__ import annotations

import calendar
import functools
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from gateway.config.schema import (
    BudgetSpec,
    ClientSpec,
    GuardSpec,
    LimitSpec,
    ModelSpec,
    ProviderSpec,
)
from gateway.decide.limits import Kind, Quota, Rate, Slots, Status, Verdict
from gateway.errors import (
    BudgetExhausted,
    LoopDetected,
    RequestsLimited,
    SavepointError,
    TokensLimited,
)
from gateway.values import value

MICRO = 1_000_000  # micro-dollars per dollar
UNBOUNDED = 1e15  # the limit of a counter that only counts (exact in doubles)
RUN_COUNTERS_MS = 24 * 3600 * 1000.0  # a run's guard counters live a day past its last step


@value
class Looping:
    """What the loop guard saw: the counter past its threshold, and how far."""

    key: str
    count: float
    threshold: float


@value
class Reservation:
    """What a request is expected to take: tokens (prompt estimate + output cap) and, when
    its model is priced, micro-dollars."""

    tokens: int
    micro_usd: int | None


@value
class Limits:
    rates: tuple[Rate, ...]
    slots: tuple[Slots, ...]
    quotas: tuple[Quota, ...]

    def __bool__(self) -> bool:
        return bool(self.rates or self.slots or self.quotas)


def needs_tokens(
    client: ClientSpec | None,
    model: ModelSpec,
    guard: GuardSpec,
    deployments: Mapping[str, LimitSpec] = {},
) -> bool:
    """Whether a token estimate is needed (a token limit, a budget or a run cost cap)."""
    scopes = _scopes(client, model)
    return (
        any(spec.tpm is not None for _, spec in scopes)
        or any(
            (lim := deployments.get(t.label)) is not None and lim.tpm is not None
            for t in model.targets
        )
        or (client is not None and client.budget is not None)
        or (guard.enabled is not False and guard.run_usd is not None)
    )


def guard_limits(
    guard: GuardSpec,
    who: str,
    fingerprint: str,
    run: str | None,
    reservation: Reservation,
    now: float,
) -> tuple[Quota, ...]:
    """The loop guard's counters for a request: its repeats in the current window (fixed
    windows of `guard.window`: a loop straddling two windows may repeat up to twice the
    threshold before it is seen), and its run's steps and cost."""
    if guard.enabled is False:
        return ()

    def cap(threshold: float) -> float:
        return threshold if guard.block else UNBOUNDED

    window_ms = guard.window * 1000
    n = int(now * 1000 // window_ms)
    quotas = [Quota(f"g/{who}/{fingerprint[:32]}/{n}", cap(guard.repeats), 1, (n + 1) * window_ms)]
    if run is not None:
        ends = now * 1000 + RUN_COUNTERS_MS
        if guard.run_steps is not None:
            quotas.append(Quota(f"r/{who}/{run}/steps", cap(guard.run_steps), 1, ends))
        if guard.run_usd is not None:
            cost = reservation.micro_usd or 0
            quotas.append(
                Quota(f"r/{who}/{run}/usd", cap(round(guard.run_usd * MICRO)), cost, ends)
            )
    return tuple(quotas)


def repeat_status(quota: Quota, count: float, now: float) -> Status:
    """The loop guard's repeat counter (`guard_limits`' first) at `count`, this request's
    included, as `looping` reads it (`limit - remaining`)."""
    left = max(quota.limit - count, 0.0)
    reset = max(quota.expires_ms / 1000 - now, 0.0)
    return Status(quota.key, Kind.QUOTA, quota.limit, left, reset)


def looping(guard: GuardSpec, verdict: Verdict) -> Looping | None:
    """The guard counter past its threshold after an admitted request, if any."""
    for status in verdict.limits:
        if status.kind is not Kind.QUOTA or status.key[0] not in "gr":
            continue
        threshold = _threshold(guard, status.key)
        count = status.limit - status.remaining
        if threshold is not None and count > threshold:
            return Looping(status.key, count, threshold)
    return None


def limits_for(
    client: ClientSpec | None, model: ModelSpec, reservation: Reservation, now: float
) -> Limits:
    """The limits a request must pass (`now`: epoch seconds, for the budget's period)."""
    rates: list[Rate] = []
    slots: list[Slots] = []
    for prefix, spec in _scopes(client, model):
        if spec.rpm is not None:
            rates.append(Rate(f"{prefix}/rpm", spec.rpm, 1))
        if spec.tpm is not None:
            rates.append(Rate(f"{prefix}/tpm", spec.tpm, reservation.tokens))
        if spec.concurrency is not None:
            slots.append(Slots(f"{prefix}/conc", spec.concurrency))
    quotas: list[Quota] = []
    if client is not None and client.budget is not None:
        budget = client.budget
        period, ends = budget_period(budget, now)
        prefix = f"b/{client.name}/{period}"
        if budget.tokens is not None:
            quotas.append(Quota(f"{prefix}/tokens", budget.tokens, reservation.tokens, ends))
        if budget.usd is not None:
            cost = reservation.micro_usd or 0
            quotas.append(Quota(f"{prefix}/usd", round(budget.usd * MICRO), cost, ends))
    return Limits(tuple(rates), tuple(slots), tuple(quotas))


def deployment_limits(label: str, spec: LimitSpec, tokens: int) -> Limits:
    """The limits of one attempt at a deployment (`label`: provider/model)."""
    prefix = f"d/{label}"
    rates = []
    if spec.rpm is not None:
        rates.append(Rate(f"{prefix}/rpm", spec.rpm, 1))
    if spec.tpm is not None:
        rates.append(Rate(f"{prefix}/tpm", spec.tpm, tokens))
    slots = (Slots(f"{prefix}/conc", spec.concurrency),) if spec.concurrency is not None else ()
    return Limits(tuple(rates), slots, ())


def settlement(limits: Limits, actual: Reservation) -> Limits:
    """The corrections once the request is over: actual - reserved for every token rate and
    budget counter (request rates and slots need none: a request is one request)."""
    rates = tuple(
        Rate(r.key, r.per_minute, actual.tokens - r.cost)
        for r in limits.rates
        if r.key.endswith("/tpm") and actual.tokens != r.cost
    )
    quotas = tuple(
        Quota(q.key, q.limit, _actual_of(q, actual) - q.cost, q.expires_ms)
        for q in limits.quotas
        # counts of requests and steps stand; an exact reservation needs no correction
        if q.key.endswith(("/tokens", "/usd")) and _actual_of(q, actual) != q.cost
    )
    return Limits(rates, limits.slots, quotas)


def budget_period(budget: BudgetSpec, now: float) -> tuple[str, float]:
    """The calendar period (UTC) `now` falls in: its name and when it ends (epoch ms)."""
    return _period(budget.period, int(now // 86400))


@functools.lru_cache(maxsize=64)
def _period(period: str, day: int) -> tuple[str, float]:
    t = datetime.fromtimestamp(day * 86400, UTC)
    if period == "month":
        days = calendar.monthrange(t.year, t.month)[1]
        end = datetime(t.year, t.month, days, tzinfo=UTC).timestamp() + 86_400
        return f"{t.year:04d}-{t.month:02d}", end * 1000
    start = datetime(t.year, t.month, t.day, tzinfo=UTC).timestamp()
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}", (start + 86_400) * 1000


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers: for requests and for tokens, the tightest of the
    rate limits that apply (the one with the fewest left)."""
    tightest: dict[str, Status] = {}
    for status in verdict.limits:
        if status.kind is Kind.RATE:
            kind = _RATE_KINDS.get(status.key[-4:])
            if kind is not None:
                tight = tightest.get(kind)
                if tight is None or status.remaining < tight.remaining:
                    tightest[kind] = status
    headers: dict[str, str] = {}
    for kind, tight in tightest.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(int(tight.limit))
        headers[f"x-ratelimit-remaining-{kind}"] = str(int(tight.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(tight.reset)
    return headers


_RATE_KINDS = {"/rpm": "requests", "/tpm": "tokens"}


def budget_used(verdict: Verdict) -> Status | None:
    """The budget counter closest to its limit, if any."""
    quotas = [s for s in verdict.limits if s.kind is Kind.QUOTA and s.limit > 0]
    return min(quotas, key=lambda s: s.remaining / s.limit) if quotas else None


def refusal(verdict: Verdict, model: str) -> SavepointError:
    """The 429 a refused request gets: which limit, how long to wait, whether to retry."""
    blocked = verdict.blocked
    assert blocked is not None
    if blocked.key[0] in "gr":
        return _loop_refusal(blocked)
    headers = ratelimit_headers(verdict)
    wait = verdict.retry_after
    retry = not verdict.exceeds and wait <= 60
    if not verdict.exceeds:
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    headers["x-should-retry"] = "true" if retry else "false"
    scope = _describe(blocked.key, model)
    if blocked.kind is Kind.QUOTA:
        unit = "US dollars" if blocked.key.endswith("/usd") else "tokens"
        amount = blocked.limit / MICRO if unit == "US dollars" else blocked.limit
        period = blocked.key.split("/")[2]
        message = (
            f"{scope} has used its budget of {amount:g} {unit} for {period} (UTC); "
            + ("this request alone exceeds it" if verdict.exceeds
               else f"it renews in {go_duration(wait)}")
        )  # fmt: skip
        return BudgetExhausted(message, headers=headers)
    if blocked.kind is Kind.SLOTS:
        return RequestsLimited(
            f"{scope} already has {int(blocked.limit)} requests in flight, its limit; retry "
            "when one has finished",
            headers=headers,
        )
    tokens = blocked.key.endswith("/tpm")
    what = "tokens" if tokens else "requests"
    if verdict.exceeds:
        message = (
            f"this request needs more {what} than {scope}'s whole limit of {int(blocked.limit)} "
            f"{what} per minute (prompt and the output cap `max_tokens` / "
            "`max_completion_tokens` count); lower the cap or ask for a higher limit"
        )
    else:
        message = (
            f"{scope} is over its limit of {int(blocked.limit)} {what} per minute; retry in "
            f"{go_duration(wait)}"
        )
    return (TokensLimited if tokens else RequestsLimited)(message, headers=headers)


def _loop_refusal(blocked: Status) -> SavepointError:
    headers = {"x-should-retry": "false"}
    parts = blocked.key.split("/")
    limit = blocked.limit
    if parts[0] == "g":
        message = (
            f"loop detected: client `{parts[1]}` sent this same request more than {limit:g} "
            "times in the guard's window; the agent is probably stuck repeating a step. Change "
            "the request, or wait for the window to pass"
        )
    elif parts[3] == "steps":
        message = f"loop detected: run `{parts[2]}` has taken more than {limit:g} steps"
    else:
        message = f"loop detected: run `{parts[2]}` has cost more than ${limit / MICRO:g}"
    return LoopDetected(message, headers=headers)


def _threshold(guard: GuardSpec, key: str) -> float | None:
    if key.startswith("g/"):
        return guard.repeats
    if key.endswith("/steps"):
        return guard.run_steps
    return round(guard.run_usd * MICRO) if guard.run_usd is not None else None


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: `850ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds) if seconds < 60 else int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _scopes(client: ClientSpec | None, model: ModelSpec) -> list[tuple[str, LimitSpec]]:
    scopes: list[tuple[str, LimitSpec]] = []
    if client is not None:
        if client.limits:
            scopes.append((f"c/{client.name}", client.limits))
        own = client.model_limits.get(model.name)
        if own:
            scopes.append((f"cm/{client.name}/{model.name}", own))
    if model.limits:
        scopes.append((f"m/{model.name}", model.limits))
    return scopes


def _actual_of(quota: Quota, actual: Reservation) -> float:
    if quota.key.endswith("/usd"):
        return float(actual.micro_usd or 0)
    return float(actual.tokens)


def _describe(key: str, model: str) -> str:
    if key.startswith("d/"):
        return f"deployment `{key[2:].rpartition('/')[0]}`"
    parts = key.split("/")
    if parts[0] in ("c", "b"):
        return f"client `{parts[1]}`"
    if parts[0] == "cm":
        return f"client `{parts[1]}` on model `{parts[2]}`"
    return f"model `{model}` (all clients together)"


def deployment_specs(
    providers: Mapping[str, ProviderSpec], models: Iterable[ModelSpec]
) -> dict[str, LimitSpec]:
    """The limits of each deployment that has some, by label (provider/model)."""
    found = {}
    for model in models:
        for target in model.targets:
            provider = providers.get(target.provider)
            spec = provider.limits.get(target.model) if provider is not None else None
            if spec:
                found[target.label] = spec
    return found

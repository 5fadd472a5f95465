"""Prometheus metrics: counters and histograms fed from each request's `Trace`, served as the
text exposition format (version 0.0.4) at `GET /metrics`.

`observe` runs once per request, in the server's middleware next to the access log: a
handful of dict lookups and increments, nothing else. `render` formats everything at scrape
time, with the breaker states read then.

Every label value comes from a bounded set, fixed when the policy is loaded: a client sends
any model name it likes, so a name is used as a label only if the policy knows it
(`other` otherwise). Clients: the policy's, `anonymous`, `admin` (the admin API), `none`
(unauthenticated). Models: the policy's (unavailable ones too), `other`, `none` (the request
named none). Targets: the policy's deployments, `cache`, `journal`, `idempotency`, `other`.
`code` is the HTTP status as sent, which HTTP bounds. The metric set is in docs/behaviour.md.
"""

from __future__ import annotations

import copy
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import orjson

from gateway.config.schema import Policy
from gateway.decide.cost import cost_usd, deployment_prices
from gateway.errors import (
    BudgetExhausted,
    Refused,
    RequestsLimited,
    SavepointError,
    TokensLimited,
    shape_of,
)
from gateway.model import Failure, Trace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, for LLM calls: a cache hit takes milliseconds, a long generation minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_LE = (*(repr(b) for b in BUCKETS), "+Inf")

_SOURCES = {"cache_hit": "cache", "run_replay": "replay",
            "idempotent_replay": "idempotency", "idempotent_attached": "idempotency"}  # fmt: skip
_CACHE_RESULTS = frozenset(("hit", "miss", "refresh", "bypass"))
_ATTEMPT_OUTCOMES = frozenset(("ok", *(f.value for f in Failure)))
_STORED_TARGETS = ("cache", "journal", "idempotency")
_BREAKER_STATES = ("closed", "open", "half-open")
_TOKEN_KINDS = ("prompt", "cached", "completion", "reasoning")
_CODES = {status: str(status) for status in range(100, 600)}
_Key = TypeVar("_Key", bound=tuple[str, ...])


def refused_limit(error: SavepointError) -> str | None:
    """Which kind of limit refused a request (None: it was not a refusal). `requests` is a
    requests-per-minute or a requests-at-once limit: the refusal does not say which. Any
    other refusal is named by its error code (say, `loop_detected`)."""
    if isinstance(error, BudgetExhausted):
        return "budget"
    if isinstance(error, TokensLimited):
        return "tokens"
    if isinstance(error, RequestsLimited):
        return "requests"
    return shape_of(error).code if isinstance(error, Refused) else None


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum = 0.0


class Metrics:
    def __init__(self, policy: Policy):
        self._clients = _labels((*policy.clients, "anonymous", "admin"))
        self._models = _labels((*policy.models, *policy.unavailable))
        targets = {t.label: t.model for m in policy.models.values() for t in m.targets}
        self._targets = _labels((*targets, *_STORED_TARGETS))
        self._target_names = sorted(targets)
        self._prices = deployment_prices(policy.prices, policy.models.values())
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._usage: dict[tuple[str, str], list[float]] = {}  # 4 token kinds, then dollars
        self._saved: dict[tuple[str, str, str], int] = {}
        self._wasted: dict[tuple[str, str], int] = {}
        self._refused: dict[tuple[str, str, str], int] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._cache: dict[tuple[str, str], int] = {}
        self._loops: dict[tuple[str, str], int] = {}
        self._duration: dict[tuple[str, str], _Histogram] = {}
        self._ttfb: dict[str, _Histogram] = {}

    def snapshot(self) -> bytes:
        """Every series as it stands, for the other workers of the same gateway to add up."""
        state: dict[str, Any] = {name: list(getattr(self, name).items()) for name in _COUNTED}
        for name in _HISTOGRAMS:
            state[name] = [(k, (h.counts, h.sum)) for k, h in getattr(self, name).items()]
        return orjson.dumps(state)

    def merged(self, snapshots: Iterable[bytes]) -> Metrics:
        """A copy of these metrics with the other workers' snapshots added, to render."""
        total = copy.copy(self)
        for name in _COUNTED:
            setattr(total, name, {k: copy.copy(v) for k, v in getattr(self, name).items()})
        for name in _HISTOGRAMS:
            setattr(total, name, {k: _copy(h) for k, h in getattr(self, name).items()})
        for raw in snapshots:
            try:
                state = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a snapshot caught mid-write: the next scrape has it
            for name in _COUNTED:
                _add_counts(getattr(total, name), state.get(name, []))
            for name in _HISTOGRAMS:
                into = getattr(total, name)
                for k, (counts, seconds) in state.get(name, []):
                    h = into.setdefault(_key(k), _Histogram())
                    h.counts = [a + b for a, b in zip(h.counts, counts, strict=True)]
                    h.sum += seconds
        return total

    def observe(self, trace: Trace, ended: float, refused: str | None = None) -> None:
        """Count one finished request. `refused`: the limit that refused it (`refused_limit`)."""
        client = self._clients.get(trace.client, "other")
        model = self._models.get(trace.model, "other")
        outcome = _outcome(trace, refused)
        key = (client, model, outcome, _CODES.get(trace.status, "other"))
        self._requests[key] = self._requests.get(key, 0) + 1
        _observe(self._duration, (model, outcome), ended - trace.started)
        if trace.first_byte is not None and trace.attempts:  # a stream relayed from upstream
            _observe(self._ttfb, model, trace.first_byte - trace.started)
        usage = trace.usage
        if usage is not None:
            pair = (client, model)
            row = self._usage.get(pair)
            if row is None:
                row = self._usage[pair] = [0, 0, 0, 0, 0.0]
            row[0] += usage.prompt_tokens
            row[1] += usage.cached_tokens
            row[2] += usage.completion_tokens
            row[3] += usage.reasoning_tokens
            price = self._prices.get(trace.target)
            if price is not None:
                row[4] += cost_usd(usage, price)
            if outcome == "failed" or "loop" in trace.flags:  # as the ledger counts waste
                self._wasted[pair] = self._wasted.get(pair, 0) + usage.total_tokens
        source = _SOURCES.get(outcome)
        if source is not None and trace.saved is not None:
            saved = (client, model, source)
            self._saved[saved] = self._saved.get(saved, 0) + trace.saved.total_tokens
        if refused is not None:
            limit = (client, model, refused)
            self._refused[limit] = self._refused.get(limit, 0) + 1
        for attempt in trace.attempts:
            a = (
                self._targets.get(attempt.target, "other"),
                attempt.outcome if attempt.outcome in _ATTEMPT_OUTCOMES else "other",
            )
            self._attempts[a] = self._attempts.get(a, 0) + 1
        if trace.cache in _CACHE_RESULTS:
            lookup = (model, trace.cache)
            self._cache[lookup] = self._cache.get(lookup, 0) + 1
        if "loop" in trace.flags:
            self._loops[(client, model)] = self._loops.get((client, model), 0) + 1

    def render(self, breakers: Iterable[Mapping[str, Any]]) -> bytes:
        """The exposition text; `breakers`: `Health.snapshot()` (deployments it has not seen
        yet are closed)."""
        out: list[str] = []
        _counter(
            out,
            "savepoint_requests_total",
            "Requests answered, by how.",
            ("client", "model", "outcome", "code"),
            self._requests,
        )
        _histogram(
            out,
            "savepoint_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            ("model", "outcome"),
            self._duration,
        )
        _histogram(
            out,
            "savepoint_time_to_first_byte_seconds",
            "Time from the request's arrival to the first byte of a stream relayed from a "
            "provider.",
            ("model",),
            {(model,): h for model, h in self._ttfb.items()},
        )
        _counter(
            out,
            "savepoint_tokens_total",
            "Tokens the providers reported (cached is part of prompt, reasoning of completion).",
            ("client", "model", "kind"),
            {
                (*pair, kind): row[i]
                for pair, row in self._usage.items()
                for i, kind in enumerate(_TOKEN_KINDS)
            },
        )
        _counter(
            out,
            "savepoint_cost_usd_total",
            "US dollars of the tokens the providers reported, at the price table's rates.",
            ("client", "model"),
            {pair: row[4] for pair, row in self._usage.items()},
        )
        _counter(
            out,
            "savepoint_saved_tokens_total",
            "Tokens of stored answers served instead of calling a provider.",
            ("client", "model", "source"),
            self._saved,
        )
        _counter(
            out,
            "savepoint_wasted_tokens_total",
            "Tokens the providers billed for nothing: failed requests (a stream cut after "
            "tokens came) and requests repeated in a loop the guard flagged.",
            ("client", "model"),
            self._wasted,
        )
        _counter(
            out,
            "savepoint_limit_rejections_total",
            "Requests refused by the gateway's limits and budgets (429).",
            ("client", "model", "limit"),
            self._refused,
        )
        _counter(
            out,
            "savepoint_loops_flagged_total",
            "Requests the runaway-agent guard flagged as part of a loop (not blocked).",
            ("client", "model"),
            self._loops,
        )
        _counter(
            out,
            "savepoint_cache_requests_total",
            "Requests to a model with a response cache, by what the cache did.",
            ("model", "result"),
            self._cache,
        )
        _counter(
            out,
            "savepoint_upstream_attempts_total",
            "Calls to a deployment, by how they ended (ok, or why they failed).",
            ("target", "outcome"),
            self._attempts,
        )
        self._render_breakers(out, breakers)
        return "".join(out).encode()

    def _render_breakers(self, out: list[str], breakers: Iterable[Mapping[str, Any]]) -> None:
        rows = {row["target"]: row for row in breakers}
        known = [(self._targets[t], rows.get(t, {})) for t in self._target_names]
        _family(
            out,
            "savepoint_breaker_state",
            "gauge",
            "1 for the state a deployment's circuit breaker is in, 0 for the others.",
        )
        for target, row in known:
            current = row.get("state", "closed")
            for state in _BREAKER_STATES:
                value = 1 if state == current else 0
                out.append(f'savepoint_breaker_state{{target="{target}",state="{state}"}} '
                           f"{value}\n")  # fmt: skip
        gauges = (
            ("savepoint_breaker_failures", "failures", "Consecutive failures its breaker counts."),
            ("savepoint_target_cooldown_seconds", "cooldown_s",
             "Seconds a deployment stays benched after a 429."),
            ("savepoint_target_active_requests", "active",
             "Requests working on a deployment (backoff waits included)."),
        )  # fmt: skip
        for name, field, text in gauges:
            _family(out, name, "gauge", text)
            for target, row in known:
                out.append(f'{name}{{target="{target}"}} {_number(row.get(field, 0))}\n')


def _outcome(trace: Trace, refused: str | None) -> str:
    """Where the answer came from; `failed` for any error, a stream broken after its 200
    included. Stored answers first: a replayed failure is still a replay."""
    if trace.idempotency == "replayed":
        return "idempotent_replay"
    if trace.idempotency == "attached":
        return "idempotent_attached"
    if trace.cache == "replay":
        return "run_replay"
    if trace.cache == "hit":
        return "cache_hit"
    if refused is not None:
        return "refused"
    if trace.status >= 400 or trace.error_code is not None:
        return "failed"
    return "live"


_COUNTED = ("_requests", "_usage", "_saved", "_wasted", "_refused", "_attempts", "_cache",
            "_loops")  # fmt: skip
_HISTOGRAMS = ("_duration", "_ttfb")


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k  # JSON made the tuples lists


def _add_counts(into: dict[Any, Any], items: list[Any]) -> None:
    for k, v in items:
        key = _key(k)
        if isinstance(v, list):  # token kinds and dollars
            row = into.setdefault(key, [0] * len(v))
            for i, x in enumerate(v):
                row[i] += x
        else:
            into[key] = into.get(key, 0) + v


def _copy(h: _Histogram) -> _Histogram:
    c = _Histogram()
    c.counts, c.sum = list(h.counts), h.sum
    return c


def _observe(series: dict[Any, _Histogram], key: Any, seconds: float) -> None:
    h = series.get(key)
    if h is None:
        h = series[key] = _Histogram()
    h.counts[bisect_left(BUCKETS, seconds)] += 1
    h.sum += seconds


def _labels(names: Iterable[str]) -> dict[str | None, str]:
    """Known names -> their label value (escaped once, here); None -> `none`."""
    labels: dict[str | None, str] = {name: _escape(name) for name in names}
    labels[None] = "none"
    return labels


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _family(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")


def _counter(
    out: list[str],
    name: str,
    text: str,
    labels: tuple[str, ...],
    series: Mapping[_Key, float],
) -> None:
    _family(out, name, "counter", text)
    for key, value in sorted(series.items()):
        pairs = ",".join(f'{label}="{v}"' for label, v in zip(labels, key, strict=True))
        out.append(f"{name}{{{pairs}}} {_number(value)}\n")


def _histogram(
    out: list[str],
    name: str,
    text: str,
    labels: tuple[str, ...],
    series: Mapping[_Key, _Histogram],
) -> None:
    _family(out, name, "histogram", text)
    for key, h in sorted(series.items()):
        pairs = "".join(f'{label}="{v}",' for label, v in zip(labels, key, strict=True))
        total = 0
        for le, count in zip(_LE, h.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{pairs}le="{le}"}} {total}\n')
        out.append(f"{name}_sum{{{pairs[:-1]}}} {_number(h.sum)}\n")
        out.append(f"{name}_count{{{pairs[:-1]}}} {total}\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))

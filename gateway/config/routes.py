"""Loading the `models:` section into routes: fallback chains of balanced groups.

    models:
      gpt-4o:
        targets:                       # the chain, tried in order; an entry is a group
          - [openai/gpt-4o, {provider: azure, model: gpt-4o, weight: 2}]   # balanced group
          - together/llama-3.1-70b     # a group of one
        fallbacks: [gpt-4o-mini]       # then these models' own chains, recursively
        deadline: 2m                   # the whole chain, retries and backoff included
        fallback_on: [server_error, rate_limited, ...]
        balance: weighted | least_in_flight
        retries: {attempts_per_target: 2, ...}   # overrides the top-level `retries:`

Fallback models are expanded here, once, into one flat chain per model; a loop is an error.
"""

from __future__ import annotations

import re
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Any

from gateway.config import fields, governance
from gateway.config.fields import Path
from gateway.config.schema import (
    DEFAULT_DEADLINE,
    DEFAULT_FALLBACK_ON,
    CacheSpec,
    GroupSpec,
    ModelSpec,
    ProviderSpec,
    RetrySpec,
    TargetSpec,
)
from gateway.model import Failure

_MODEL_KEYS = (
    "targets", "fallbacks", "owned_by", "deadline", "fallback_on", "balance", "retries", "cache",
    "limits",
)  # fmt: skip
_CACHE_KEYS = tuple(f.name for f in dataclass_fields(CacheSpec))
_TARGET_KEYS = ("provider", "model", "timeouts", "weight", "context_window")
_RETRY_KEYS = tuple(f.name for f in dataclass_fields(RetrySpec))
# Failures that can move a request on: not a client error (the request's own fault), not a
# stream gone silent (after the commit point), not the deadline (no time left).
_MOVABLE = tuple(
    f for f in Failure if f not in (Failure.CLIENT_ERROR, Failure.IDLE_TIMEOUT, Failure.DEADLINE)
)
_TOKENS = re.compile(r"\s*(\d+)\s*([kK])?\s*")


def retries(ctx: fields.Problems, value: Any, path: Path, base: RetrySpec) -> RetrySpec:
    m = fields.mapping(ctx, value, path, _RETRY_KEYS)
    spec = RetrySpec(
        attempts_per_target=fields.integer(
            ctx, m, "attempts_per_target", path, base.attempts_per_target, 1, maximum=10
        ),
        backoff_base=_seconds_or_zero(ctx, m, "backoff_base", path, base.backoff_base),
        backoff_cap=_seconds_or_zero(ctx, m, "backoff_cap", path, base.backoff_cap),
        budget_ratio=_ratio(ctx, m, "budget_ratio", path, base.budget_ratio),
        budget_min=fields.integer(ctx, m, "budget_min", path, base.budget_min, 0),
    )
    if spec.backoff_cap < spec.backoff_base and ("backoff_cap" in m or "backoff_base" in m):
        ctx.problem((*path, "backoff_cap"), "must be at least backoff_base")
    return spec


def cache(ctx: fields.Problems, value: Any, path: Path, base: CacheSpec) -> CacheSpec:
    m = fields.mapping(ctx, value, path, _CACHE_KEYS)
    return CacheSpec(
        enabled=fields.boolean(ctx, m, "enabled", path, base.enabled),
        ttl=fields.seconds(ctx, m, "ttl", path, base.ttl),
        max_entries=fields.integer(ctx, m, "max_entries", path, base.max_entries, 1),
        max_entry_bytes=fields.size(ctx, m, "max_entry_bytes", path, base.max_entry_bytes),
        shared=fields.boolean(ctx, m, "shared", path, base.shared),
    )


def models(
    ctx: fields.Problems,
    value: Any,
    providers: dict[str, ProviderSpec],
    disabled: dict[str, str],
    default_retries: RetrySpec,
    has_top_retries: bool,
    default_cache: CacheSpec,
) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    own: dict[str, ModelSpec] = {}
    fallbacks: dict[str, list[str]] = {}
    unavailable: dict[str, str] = {}
    raw_models = fields.mapping(ctx, value, ("models",))
    for name, spec in raw_models.items():
        path: Path = ("models", name)
        if not fields.name(ctx, name, path, "model"):
            continue
        m = fields.mapping(ctx, spec, path, _MODEL_KEYS)
        if m.get("targets") is None and not m.get("fallbacks"):
            ctx.problem((*path, "targets"), "expected a non-empty list of targets")
        groups, reasons = _groups(ctx, m.get("targets"), (*path, "targets"), name, providers,
                                  disabled)  # fmt: skip
        fallbacks[name] = _fallbacks(ctx, m.get("fallbacks"), (*path, "fallbacks"), raw_models)
        if reasons and not groups:
            unavailable[name] = "; ".join(reasons)
        model = ModelSpec(
            name=name,
            groups=tuple(groups),
            owned_by=fields.string(ctx, m, "owned_by", path, "savepoint") or "savepoint",
            deadline=fields.seconds(ctx, m, "deadline", path, DEFAULT_DEADLINE),
            fallback_on=_fallback_on(ctx, m, path),
            balance=_balance(ctx, m, path),
            retries=retries(ctx, m.get("retries"), (*path, "retries"), default_retries),
            cache=cache(ctx, m.get("cache"), (*path, "cache"), default_cache),
            limits=governance.limits(ctx, m.get("limits"), (*path, "limits")),
        )
        where: Path = (*path, "retries") if "retries" in m else ("retries",)
        if "retries" not in m and not has_top_retries:
            where = (*path, "deadline")  # the defaults do not fit this model's deadline
        _check_retries_fit(ctx, model, where)
        own[name] = model
    loops: set[frozenset[str]] = set()
    chains = {name: _chain(ctx, name, own, fallbacks, (), loops) for name in own}
    routes = {}
    for name, model in own.items():
        chain = chains[name]
        if chain:
            routes[name] = replace(model, groups=chain)
            unavailable.pop(name, None)
        elif name not in unavailable and fallbacks[name]:
            reasons = [unavailable[f] for f in fallbacks[name] if f in unavailable]
            unavailable[name] = "; ".join(reasons) or "none of its fallbacks is available"
    return routes, unavailable


def _groups(
    ctx: fields.Problems,
    raw: Any,
    path: Path,
    model: str,
    providers: dict[str, ProviderSpec],
    disabled: dict[str, str],
) -> tuple[list[GroupSpec], list[str]]:
    if raw is None:
        return [], []
    if not isinstance(raw, list) or not raw:
        ctx.problem(path, "expected a non-empty list of targets")
        return [], []
    groups: list[GroupSpec] = []
    reasons: list[str] = []
    for i, entry in enumerate(raw):
        members = entry if isinstance(entry, list) else [entry]
        if not members:
            ctx.problem((*path, i), "a group needs at least one target")
        group: list[TargetSpec] = []
        for j, item in enumerate(members):
            where = (*path, i, j) if isinstance(entry, list) else (*path, i)
            target = _target(ctx, item, where, model, providers, disabled)
            if isinstance(target, TargetSpec):
                group.append(target)
            elif target:
                reasons.append(target)
        if group:
            groups.append(GroupSpec(tuple(group)))
    return groups, reasons


def _target(
    ctx: fields.Problems,
    raw: Any,
    path: Path,
    model: str,
    providers: dict[str, ProviderSpec],
    disabled: dict[str, str],
) -> TargetSpec | str | None:
    """A target, or the reason it is switched off, or None after reporting a problem."""
    if isinstance(raw, str):
        name, _, upstream_name = raw.partition("/")
        raw = {"provider": name, "model": upstream_name or model}
    m = fields.mapping(ctx, raw, path, _TARGET_KEYS)
    provider = fields.string(ctx, m, "provider", path, None)
    upstream = fields.string(ctx, m, "model", path, model) or model
    spec = providers.get(provider or "")
    if spec is None:
        known = ", ".join(sorted(providers)) or "none defined"
        ctx.problem(
            (*path, "provider"), f"unknown provider {fields.show(provider)} (known: {known})"
        )
        return None
    weight = m.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < 1e9:
        ctx.problem((*path, "weight"), f"expected a number above 0, got {fields.show(weight)}")
        weight = 1
    target = TargetSpec(
        provider=spec.name,
        model=upstream,
        timeouts=fields.timeouts(ctx, m.get("timeouts"), (*path, "timeouts"), spec.timeouts),
        weight=float(weight),
        context_window=_tokens(ctx, m, "context_window", path),
    )
    if spec.name in disabled:
        return f"provider {spec.name!r} is switched off: {disabled[spec.name]}"
    return target


def _fallbacks(ctx: fields.Problems, raw: Any, path: Path, known: dict[str, Any]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list | str):
        ctx.problem(path, f"expected a list of model names, got {fields.show(raw)}")
        return []
    names = raw if isinstance(raw, list) else [raw]
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in known:
            ctx.problem((*path, i), f"unknown model {fields.show(name)}")
    return [n for n in names if isinstance(n, str) and n in known]


def _chain(
    ctx: fields.Problems,
    name: str,
    own: dict[str, ModelSpec],
    fallbacks: dict[str, list[str]],
    visiting: tuple[str, ...],
    loops: set[frozenset[str]],
) -> tuple[GroupSpec, ...]:
    """The model's groups, then each fallback model's chain; a group already in the chain
    is not repeated. Each loop is reported once, however many models lead into it."""
    if name in visiting:
        cycle = visiting[visiting.index(name) :]
        if frozenset(cycle) not in loops:
            loops.add(frozenset(cycle))
            loop = " -> ".join((*cycle, name))
            ctx.problem(("models", visiting[-1], "fallbacks"), f"fallback loop: {loop}")
        return ()
    if name not in own:
        return ()
    chain: list[GroupSpec] = list(own[name].groups)
    for fallback in fallbacks.get(name, []):
        for group in _chain(ctx, fallback, own, fallbacks, (*visiting, name), loops):
            if group not in chain:
                chain.append(group)
    return tuple(chain)


def _fallback_on(ctx: fields.Problems, m: dict[str, Any], path: Path) -> frozenset[Failure]:
    raw = m.get("fallback_on")
    if raw is None:
        return DEFAULT_FALLBACK_ON
    if not isinstance(raw, list):
        ctx.problem((*path, "fallback_on"), f"expected a list, got {fields.show(raw)}")
        return DEFAULT_FALLBACK_ON
    found = set()
    by_name = {f.value: f for f in _MOVABLE}
    for i, item in enumerate(raw):
        if isinstance(item, str) and item in by_name:
            found.add(by_name[item])
        else:
            names = ", ".join(by_name)
            shown = fields.show(item)
            ctx.problem((*path, "fallback_on", i), f"expected one of {names}, got {shown}")
    return frozenset(found)


def _balance(ctx: fields.Problems, m: dict[str, Any], path: Path) -> Any:
    balance = m.get("balance", "weighted")
    if balance not in ("weighted", "least_in_flight"):
        ctx.problem(
            (*path, "balance"), f"expected weighted or least_in_flight, got {fields.show(balance)}"
        )
        return "weighted"
    return balance


def _check_retries_fit(ctx: fields.Problems, model: ModelSpec, path: Path) -> None:
    """Refuse retry settings whose backoff alone could outlast the route's deadline."""
    r = model.retries
    worst = sum(min(r.backoff_cap, r.backoff_base * 2**n) for n in range(r.attempts_per_target - 1))
    if worst >= model.deadline:
        ctx.problem(
            path,
            f"model {model.name}: {r.attempts_per_target} attempts per target can back off for "
            f"{worst:g}s, which does not fit in its {model.deadline:g}s deadline",
        )


def _seconds_or_zero(
    ctx: fields.Problems, m: dict[str, Any], key: str, path: Path, default: float
) -> float:
    value = m.get(key, default)
    if not isinstance(value, bool) and value in (0, "0", "0s", "0ms"):
        return 0.0  # no backoff: for tests, and for providers that want an instant retry
    return fields.seconds(ctx, m, key, path, default)


def _ratio(ctx: fields.Problems, m: dict[str, Any], key: str, path: Path, default: float) -> float:
    value = m.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    ctx.problem((*path, key), f"expected a number from 0 to 1, got {fields.show(value)}")
    return default


def _tokens(ctx: fields.Problems, m: dict[str, Any], key: str, path: Path) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (match := _TOKENS.fullmatch(value)) and int(match.group(1)):
        return int(match.group(1)) * (1000 if match.group(2) else 1)
    ctx.problem((*path, key), f"expected a number of tokens (e.g. 128000 or 128k), got "
                              f"{fields.show(value)}")  # fmt: skip
    return None

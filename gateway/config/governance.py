"""The policy's limits and budgets: `limits:` (of a model, a client, a client on one model)
and a client's `budget:`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.config import fields
from gateway.config.fields import Path
from gateway.config.schema import NO_LIMITS, BudgetPeriod, BudgetSpec, GuardSpec, LimitSpec

_LIMIT_KEYS = ("rpm", "tpm", "concurrency")
_BUDGET_KEYS = ("period", "tokens", "usd", "soft")
_GUARD_KEYS = ("enabled", "repeats", "window", "run_steps", "run_usd", "block")
_MAX = 10**12


def limits(ctx: fields.Problems, value: Any, path: Path) -> LimitSpec:
    m = fields.mapping(ctx, value, path, _LIMIT_KEYS)
    if not m:
        return NO_LIMITS
    found = {k: fields.integer(ctx, m, k, path, 0, 1, _MAX) if k in m else None
             for k in _LIMIT_KEYS}  # fmt: skip
    return LimitSpec(**found)


def model_limits(
    ctx: fields.Problems, value: Any, path: Path, models: Iterable[str]
) -> dict[str, LimitSpec]:
    known = set(models)
    found = {}
    for model, spec in fields.mapping(ctx, value, path).items():
        if model not in known:
            ctx.problem((*path, model), f"unknown model {fields.show(model)}")
            continue
        found[model] = limits(ctx, spec, (*path, model))
    return found


def budget(ctx: fields.Problems, value: Any, path: Path) -> BudgetSpec | None:
    if value is None:
        return None
    m = fields.mapping(ctx, value, path, _BUDGET_KEYS)
    d = BudgetSpec()
    period = fields.string(ctx, m, "period", path, d.period)
    if period not in ("day", "month"):
        ctx.problem((*path, "period"), f'expected "day" or "month", got {fields.show(period)}')
        period = d.period
    tokens = fields.integer(ctx, m, "tokens", path, 0, 1, _MAX) if "tokens" in m else None
    usd = fields.number(ctx, m, "usd", path, None)
    soft = fields.number(ctx, m, "soft", path, d.soft)
    if soft is not None and soft > 1:
        ctx.problem((*path, "soft"), f"expected a share from 0 to 1, got {fields.show(soft)}")
        soft = d.soft
    if tokens is None and not usd:
        ctx.problem(path, "a budget needs `tokens`, `usd` (above 0) or both")
        return None
    calendar: BudgetPeriod = "month" if period == "month" else "day"
    return BudgetSpec(calendar, tokens, usd or None, d.soft if soft is None else soft)


def guard(ctx: fields.Problems, value: Any) -> GuardSpec:
    path: Path = ("guard",)
    m = fields.mapping(ctx, value, path, _GUARD_KEYS)
    d = GuardSpec()
    steps = fields.integer(ctx, m, "run_steps", path, 0, 1, _MAX) if m.get("run_steps") else None
    return GuardSpec(
        enabled=fields.boolean(ctx, m, "enabled", path, True) if "enabled" in m else d.enabled,
        repeats=fields.integer(ctx, m, "repeats", path, d.repeats, 1, _MAX),
        window=fields.seconds(ctx, m, "window", path, d.window),
        run_steps=steps if "run_steps" in m else d.run_steps,
        run_usd=fields.number(ctx, m, "run_usd", path, None) or None,
        block=fields.boolean(ctx, m, "block", path, d.block),
    )

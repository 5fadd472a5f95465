"""The price table: the one shipped with the gateway (`gateway/prices.yaml`, also at
`policies/prices.yaml`), with the policy's `prices:` laid over it, model by model."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from gateway.config import fields
from gateway.config.fields import Path
from gateway.config.schema import PriceSpec

_KEYS = ("input", "cached_input", "output")


@functools.cache
def shipped_prices() -> Mapping[str, PriceSpec]:
    """The table shipped in the package (read once, at start, before the event loop runs)."""
    text = resources.files("gateway").joinpath("prices.yaml").read_text(encoding="utf-8")
    ctx = fields.Problems({}, {})
    top = fields.mapping(ctx, yaml.safe_load(text), (), ("version", "models"))
    table = prices(ctx, top.get("models"), ("models",), {})
    if ctx.problems:  # the package's own file: a broken install, not a user error
        raise ValueError(f"gateway/prices.yaml is broken: {'; '.join(ctx.problems)}")
    return MappingProxyType(table)


def prices(
    ctx: fields.Problems, value: Any, path: Path, base: Mapping[str, PriceSpec]
) -> dict[str, PriceSpec]:
    """`base` with the prices under `path` added or replaced; a model given only some of the
    three prices keeps the others from `base` (an unknown model must give `input` and
    `output`; `cached_input` defaults to `input`)."""
    table = dict(base)
    for model, entry in fields.mapping(ctx, value, path).items():
        where = (*path, model)
        m = fields.mapping(ctx, entry, where, _KEYS)
        if not isinstance(entry, dict):
            continue
        old = base.get(model)
        given = {k: fields.number(ctx, m, k, where, getattr(old, k, None)) for k in _KEYS}
        if given["input"] is None or given["output"] is None:
            ctx.problem(where, "a model new to the price table needs `input` and `output`")
            continue
        cached = given["cached_input"]
        table[model] = PriceSpec(given["input"], given["input"] if cached is None else cached,
                                 given["output"])  # fmt: skip
    return table

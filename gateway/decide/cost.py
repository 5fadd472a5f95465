"""What a request cost, from the usage the provider reported and the price table."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from gateway.config.schema import ModelSpec, PriceSpec
from gateway.model import Usage

# `gpt-4.1-2025-04-14`, `claude-sonnet-4-20250514`, `claude-3-5-haiku-latest`
_VERSION_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_for(prices: Mapping[str, PriceSpec], model: str) -> PriceSpec | None:
    """The price of an upstream model: by its name, else by its name without a date or
    `-latest` suffix; None when the table does not know it."""
    found = prices.get(model)
    if found is None:
        base = _VERSION_SUFFIX.sub("", model)
        found = prices.get(base) if base != model else None
    return found


def cost_usd(usage: Usage, price: PriceSpec) -> float:
    """US dollars: uncached prompt tokens at `input`, cached ones at `cached_input`,
    completion tokens (reasoning included) at `output`."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    return (
        (usage.prompt_tokens - cached) * price.input
        + cached * price.cached_input
        + usage.completion_tokens * price.output
    ) / 1_000_000


def deployment_prices(
    prices: Mapping[str, PriceSpec], models: Iterable[ModelSpec]
) -> dict[str | None, PriceSpec | None]:
    """The price of every deployment of these models, by label (provider/model)."""
    return {t.label: price_for(prices, t.model) for m in models for t in m.targets}

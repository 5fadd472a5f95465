"""The price table shipped with the gateway, the policy's `prices:` over it, and the costs."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from harness import ROOT

from gateway.config.load import PolicyError, parse_policy
from gateway.config.prices import shipped_prices
from gateway.config.schema import PriceSpec
from gateway.decide.cost import cost_usd, price_for
from gateway.model import Usage

BASE = """
version: 1
providers: {mock: {kind: mock}}
models: {m: {targets: [mock/mock-gpt]}}
"""


def _policy(extra: str):  # type: ignore[no-untyped-def]
    return parse_policy(textwrap.dedent(BASE + extra), "p.yaml", {"P": "3.5"})


def test_the_shipped_table_is_the_one_in_policies_and_prices_every_entry() -> None:
    table = shipped_prices()
    on_disk = yaml.safe_load((ROOT / "policies" / "prices.yaml").read_text())["models"]
    assert set(table) == set(on_disk)
    for name in ("gpt-4.1", "gpt-4o-mini", "gpt-5", "o3", "claude-sonnet-4", "mock-gpt"):
        assert table[name].input > 0 and table[name].output > 0, name
    assert all(p.cached_input <= p.input for p in table.values())


def test_a_policy_overrides_a_price_keeps_the_rest_and_adds_models() -> None:
    policy = _policy("""
prices:
  gpt-4.1: {output: 9}
  my-finetune: {input: '${P}', output: 7}
""")
    assert policy.prices["gpt-4.1"] == PriceSpec(2.0, 0.5, 9.0)
    assert policy.prices["my-finetune"] == PriceSpec(3.5, 3.5, 7.0)  # cached = input
    assert policy.prices["gpt-4o"] == shipped_prices()["gpt-4o"]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("prices: {new-model: {input: 1}}", "needs `input` and `output`"),
        ("prices: {gpt-4.1: {output: -1}}", "prices.gpt-4.1.output: expected a number >= 0"),
        ("prices: {gpt-4.1: {output: cheap}}", 'expected a number >= 0, got "cheap"'),
        ("prices: {gpt-4.1: {outptu: 1}}", "unknown key; expected one of: input, cached_input"),
        ("prices: [gpt-4.1]", "prices: expected a mapping"),
    ],
)
def test_bad_prices_are_refused_at_their_place(extra: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        _policy(extra)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("model", "found"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),  # a dated snapshot
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),  # not gpt-4.1's price
        ("gpt-4.1-turbo-max", None),  # no guessing by prefix
        ("unknown", None),
    ],
)
def test_price_for_a_model_name(model: str, found: str | None) -> None:
    table = shipped_prices()
    assert price_for(table, model) == (table[found] if found else None)


def test_cost_counts_cached_prompt_tokens_at_their_price_and_reasoning_as_output() -> None:
    price = PriceSpec(input=2.0, cached_input=0.5, output=8.0)
    usage = Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500,
                  cached_tokens=200, reasoning_tokens=300)  # fmt: skip
    # 800 uncached x $2 + 200 cached x $0.5 + 500 completion (reasoning included) x $8, per 1M
    assert cost_usd(usage, price) == pytest.approx((800 * 2 + 200 * 0.5 + 500 * 8) / 1e6)
    assert cost_usd(Usage(0, 0, 0), price) == 0

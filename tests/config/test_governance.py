"""Limits and budgets in the policy become frozen data; every problem names its place."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from gateway.config.load import PolicyError, parse_policy
from gateway.config.schema import BudgetSpec, LimitSpec

HASH = hashlib.sha256(b"sk-alice").hexdigest()
BASE = f"""
version: 1
providers: {{mock: {{kind: mock}}}}
models:
  m: {{targets: [mock/mock-gpt], limits: {{rpm: 600, tpm: 100000}}}}
  n: {{targets: [mock/mock-gpt]}}
clients:
  alice:
    key_sha256: {HASH}
"""


def _parse(extra: str):  # type: ignore[no-untyped-def]
    return parse_policy(textwrap.dedent(BASE + extra), "p.yaml", {"RPM": "30"})


def test_limits_and_a_budget_load_with_their_defaults() -> None:
    policy = _parse("""
    limits: {rpm: '${RPM}', concurrency: 3}
    model_limits: {n: {tpm: 5000}}
    budget: {usd: 12.5}
""")
    alice = policy.clients["alice"]
    assert alice.limits == LimitSpec(rpm=30, tpm=None, concurrency=3)
    assert alice.model_limits == {"n": LimitSpec(tpm=5000)}
    assert alice.budget == BudgetSpec(period="day", tokens=None, usd=12.5, soft=0.8)
    assert policy.models["m"].limits == LimitSpec(rpm=600, tpm=100000)
    assert not policy.models["n"].limits  # no limits: the admission check skips the model


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("    limits: {rpm: 0}", "clients.alice.limits.rpm: expected an integer from 1"),
        ("    limits: {rpm: 1.5}", "clients.alice.limits.rpm: expected an integer"),
        ("    model_limits: {x: {rpm: 1}}", 'clients.alice.model_limits.x: unknown model "x"'),
        ("    budget: {period: week, tokens: 1}", 'expected "day" or "month", got "week"'),
        ("    budget: {period: day}", "a budget needs `tokens`, `usd` (above 0) or both"),
        ("    budget: {usd: 0}", "a budget needs `tokens`, `usd` (above 0) or both"),
        ("    budget: {usd: 1, soft: 1.5}", "clients.alice.budget.soft: expected a share"),
    ],
)
def test_bad_limits_and_budgets_are_refused_at_their_place(extra: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        _parse(extra)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_deployment_limits_and_the_usage_ledger_load() -> None:
    policy = parse_policy(textwrap.dedent(BASE.replace(
        "providers: {mock: {kind: mock}}",
        "providers: {mock: {kind: mock, limits: {mock-gpt: {rpm: 500, concurrency: 8}}}}",
    ) + "usage: {flush: 250ms, retention: 7d}\n"), "p.yaml", {})  # fmt: skip
    assert policy.providers["mock"].limits == {"mock-gpt": LimitSpec(rpm=500, concurrency=8)}
    assert (policy.usage.flush, policy.usage.retention) == (0.25, 7 * 86400)
    assert policy.usage.daily_retention == 400 * 86400


@pytest.mark.parametrize(
    ("providers", "problem"),
    [
        ("{mock: {kind: mock, limits: {mock-gpt: {rps: 5}}}}", "providers.mock.limits.mock-gpt"),
        ("{mock: {kind: mock, limits: {mock-gpt: {tpm: -1}}}}", "limits.mock-gpt.tpm: expected"),
        ("{mock: {kind: mock, limits: [1]}}", "providers.mock.limits: expected a mapping"),
    ],
)
def test_bad_deployment_limits_are_refused_at_their_place(providers: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(BASE.replace("{mock: {kind: mock}}", providers)), "p.yaml", {})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_bad_usage_section_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(BASE + "usage: {flush: soon, keep: 1}\n"), "p.yaml", {})
    problems = "\n".join(caught.value.problems)
    assert "usage.flush: expected seconds" in problems and "usage.keep" in problems

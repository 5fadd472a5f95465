"""Routes in the policy: groups, fallbacks, retries and breakers, and the mistakes refused."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config.load import PolicyError, parse_policy
from gateway.config.schema import Policy
from gateway.model import Failure

PROVIDERS = """
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
  b: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
"""


def _parse(models: str, extra: str = "") -> Policy:
    return parse_policy(PROVIDERS + extra + textwrap.dedent(models), "p.yaml", {})


def _problems(models: str, extra: str = "") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        _parse(models, extra)
    return caught.value.problems


def test_a_list_inside_targets_is_a_balanced_group() -> None:
    policy = _parse("""
        models:
          m:
            targets:
              - [a/x, {provider: b, model: y, weight: 3}]
              - a/z
    """)
    first, second = policy.models["m"].groups
    assert [(t.label, t.weight) for t in first.targets] == [("a/x", 1.0), ("b/y", 3.0)]
    assert [t.label for t in second.targets] == ["a/z"]


def test_fallback_models_are_expanded_into_the_chain_without_repeats() -> None:
    policy = _parse("""
        models:
          big: {targets: [a/big], fallbacks: [mid]}
          mid: {targets: [a/mid], fallbacks: [small]}
          small: {targets: [a/small, a/mid]}
    """)
    chain = [[t.label for t in g.targets] for g in policy.models["big"].groups]
    assert chain == [["a/big"], ["a/mid"], ["a/small"]]


def test_a_model_can_be_only_a_list_of_fallbacks() -> None:
    policy = _parse("""
        models:
          alias: {fallbacks: [real]}
          real: {targets: [a/real]}
    """)
    assert [g.targets[0].label for g in policy.models["alias"].groups] == ["a/real"]


def test_route_settings_and_their_defaults() -> None:
    policy = _parse("""
        models:
          m:
            targets: [{provider: a, model: x, context_window: 128k}]
            deadline: 2m
            fallback_on: [server_error, content_filter]
            balance: least_in_flight
            retries: {attempts_per_target: 3}
          n: {targets: [a/y]}
    """, extra="retries: {backoff_cap: 4s}\nbreakers: {fail_max: 7}\n")  # fmt: skip
    m, n = policy.models["m"], policy.models["n"]
    assert m.targets[0].context_window == 128_000
    assert (m.deadline, m.balance) == (120.0, "least_in_flight")
    assert m.fallback_on == {Failure.SERVER_ERROR, Failure.CONTENT_FILTER}
    assert (m.retries.attempts_per_target, m.retries.backoff_cap) == (3, 4.0)  # inherits the cap
    assert (n.deadline, n.retries.attempts_per_target, n.balance) == (600.0, 2, "weighted")
    assert Failure.CONTENT_FILTER not in n.fallback_on  # off by default
    assert policy.breakers.fail_max == 7


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ("models:\n  x: {targets: [a/x], fallbacks: [y]}\n  y: {targets: [a/y], fallbacks: [x]}\n",
         "7: models.y.fallbacks: fallback loop: x -> y -> x"),
        ("models:\n  x: {targets: [a/x], fallbacks: [x]}\n",
         "6: models.x.fallbacks: fallback loop: x -> x"),
        ("models:\n  x: {targets: [a/x], fallbacks: [nope]}\n",
         '6: models.x.fallbacks[0]: unknown model "nope"'),
        ("models:\n  x: {targets: [c/x]}\n",
         '6: models.x.targets[0].provider: unknown provider "c" (known: a, b)'),
        ("models:\n  x: {targets: [{provider: a, model: x, weight: 0}]}\n",
         "6: models.x.targets[0].weight: expected a number above 0, got 0"),
        ("models:\n  x: {targets: [[a/x, {provider: b, weight: -1}]]}\n",
         "6: models.x.targets[0][1].weight: expected a number above 0, got -1"),
        ("models:\n  x: {targets: [a/x], fallback_on: [client_error]}\n",
         "6: models.x.fallback_on[0]: expected one of connect_error, first_byte_timeout, "
         "server_error, rate_limited, quota_exceeded, context_window_exceeded, content_filter, "
         'got "client_error"'),
        ("models:\n  x: {targets: [a/x], deadline: 5s, retries: {attempts_per_target: 4, "
         "backoff_base: 2s, backoff_cap: 8s}}\n",
         "6: models.x.retries: model x: 4 attempts per target can back off for 14s, which does "
         "not fit in its 5s deadline"),
        ("models:\n  x: {targets: [a/x], balance: random}\n",
         '6: models.x.balance: expected weighted or least_in_flight, got "random"'),
        ("models:\n  x: {targets: [[]]}\n",
         "6: models.x.targets[0]: a group needs at least one target"),
        ("models:\n  x: {}\n", "6: models.x.targets: expected a non-empty list of targets"),
    ],
)  # fmt: skip
def test_route_mistakes_are_refused_with_their_place(models: str, expected: str) -> None:
    assert expected in _problems(models)


def test_retry_defaults_that_cannot_fit_a_models_deadline_name_the_model() -> None:
    problems = _problems("models:\n  x: {targets: [a/x], deadline: 1s}\n",
                         extra="retries: {backoff_base: 2s}\n")  # fmt: skip
    assert problems == ["5: retries: model x: 2 attempts per target can back off for 2s, which "
                        "does not fit in its 1s deadline"]  # fmt: skip


def test_breaker_and_admin_settings_are_checked() -> None:
    problems = _problems(
        "models:\n  x: {targets: [a/x]}\n",
        extra="breakers: {reset_timeout: 1m, max_reset_timeout: 10s, fail_max: 0}\nadmin: {}\n",
    )
    assert any("breakers.max_reset_timeout: must be at least reset_timeout" in p for p in problems)
    assert any("breakers.fail_max: expected an integer >= 1, got 0" in p for p in problems)
    assert any("admin: the admin API needs key_sha256 or key_env" in p for p in problems)


def test_cache_is_off_by_default_and_set_per_model_over_the_top_level() -> None:
    policy = _parse(
        """
        models:
          cached: {targets: [a/x], cache: {enabled: true, ttl: 10m}}
          plain: {targets: [a/y]}
          shared: {targets: [a/z], cache: {enabled: true, shared: true}}
        """,
        extra="cache: {max_entries: 50, max_entry_bytes: 64KiB}\n",
    )
    cached, plain, shared = (policy.models[n].cache for n in ("cached", "plain", "shared"))
    assert (cached.enabled, cached.ttl, cached.max_entries, cached.shared) == (True, 600, 50, False)
    assert cached.max_entry_bytes == 64 * 1024
    assert plain.enabled is False and plain.max_entries == 50
    assert shared.enabled and shared.shared


def test_bad_cache_settings_are_refused() -> None:
    problems = _problems(
        "models:\n  x: {targets: [a/x], cache: {enabled: maybe, ttl: 0, size: 1}}\n"
    )
    assert any("models.x.cache.enabled: expected true or false" in p for p in problems)
    assert any("models.x.cache.ttl: expected seconds" in p for p in problems)
    assert any("models.x.cache.size: unknown key" in p for p in problems)

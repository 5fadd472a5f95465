"""The policy's JSON Schema (gateway/policy.schema.json) against the loader, the authority.

Editors validate with the schema, the gateway with the loader, so the two must agree. The
tables say how far:

- ACCEPTED and REJECTED: both accept, or both reject. Every key, type, unit, name pattern and
  range is exercised here.
- LOADER_ONLY: the loader rejects for a reason no JSON Schema can state (the environment,
  a name defined elsewhere in the file, a fallback loop, a comparison between two values,
  5.0 versus 5).
- SCHEMA_STRICTER: the loader accepts only by accident (a null turned into the text "None",
  a key it reads and then ignores). The schema rejects these on purpose; when the loader
  starts rejecting one too, its test fails: move the case to REJECTED.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config.load import PolicyError, parse_policy
from gateway.config.schema import DEFAULT_FALLBACK_ON
from gateway.mock import Knobs

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "gateway" / "policy.schema.json"
# policies/ and the copy of the default inside the package (gateway/default_policy.yaml).
SHIPPED = sorted(
    path
    for path in [*ROOT.glob("policies/**/*.yaml"), *ROOT.glob("gateway/*.yaml")]
    if path.name != "prices.yaml"  # the price table, not a policy (tests/config/test_prices.py)
)
DOCS = ROOT / "docs" / "policies.md"

# What the shipped policies, the docs and the tables below read from the environment.
ENV = {
    "OPENAI_API_KEY": "sk-test-openai",
    "TOGETHER_API_KEY": "sk-test-together",
    "AGENT_KEY": "sp-agent-test",
    "SAVEPOINT_CI_KEY": "sp-ci-test",
    "SAVEPOINT_API_KEY": "sp-docs-test",
    "SAVEPOINT_ADMIN_KEY": "sp-admin-test",
    "GROQ_API_KEY": "gsk-test-groq",
    "N": "5",
}
HASH = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"  # sha256("secret")


@functools.cache
def _schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA_FILE.read_text()))


def _data(text: str) -> Any:
    data = yaml.safe_load(text)
    return {} if data is None else data  # the loader reads an empty file as an empty mapping


def schema_errors(text: str, validator: type[Any] = jsonschema.Draft202012Validator) -> list[str]:
    return [e.message for e in validator(_schema()).iter_errors(_data(text))]


def loader_errors(text: str, env: dict[str, str] = ENV) -> list[str]:
    try:
        parse_policy(text, "policy.yaml", env)
    except PolicyError as e:
        return e.problems
    return []


def policy(**sections: str | None) -> str:
    """A small policy: one mock provider and one model `m`, unless a section replaces them
    (None drops it). Sections are YAML flow text, e.g. server="{drain_timeout: 2m}"."""
    defaults = {"providers": "{mock: {kind: mock}}", "models": "{m: {targets: [mock/m]}}"}
    sections = {**defaults, **sections}
    return "".join(f"{key}: {value}\n" for key, value in sections.items() if value is not None)


def openai(**keys: str) -> str:
    """`providers:` with one openai provider `up` holding `keys` (YAML flow values)."""
    inner = ", ".join(["kind: openai", *(f"{k}: {v}" for k, v in keys.items())])
    return "{up: {" + inner + "}}"


def knobs(text: str) -> str:
    return "{mock: {kind: mock, mock: " + text + "}}"


def client(text: str) -> str:
    return "{c: " + text + "}"


ON_UP = "{m: {targets: [up/m]}}"


def model(text: str) -> str:
    """`models:` with one model `m` on the mock provider, plus the keys in `text`."""
    return "{m: {targets: [mock/m], " + text + "}}"


def target(text: str) -> str:
    """`models:` with one model `m` whose one target is a mapping with the keys in `text`."""
    return "{m: {targets: [{provider: mock, " + text + "}]}}"


# `m` falls back to `n` (a list), and `n` to `o` (one name).
CHAIN = (
    "{m: {targets: [mock/m], fallbacks: [n]}, n: {targets: [mock/n], fallbacks: o},"
    " o: {targets: [mock/o]}}"
)
# `a` falls back to `b`, and `b` to `a`.
LOOP = "{a: {targets: [mock/a], fallbacks: [b]}, b: {targets: [mock/b], fallbacks: [a]}}"
N = ", n: {targets: [mock/n]}"  # a second model `n`, to fall back to

ACCEPTED = [
    pytest.param(
        policy(providers=openai(max_connections="'10'"), models=ON_UP), id="connections as text"
    ),
    pytest.param(
        policy(providers=openai(max_connections="'${N}'"), models=ON_UP),
        id="interpolated integer is text",
    ),
    pytest.param(policy(), id="the smallest policy"),
    pytest.param(policy(version="1"), id="version 1"),
    pytest.param(policy(server="{max_body_bytes: 1048576}"), id="size in bytes"),
    pytest.param(policy(server="{max_body_bytes: 32MiB}"), id="size in MiB"),
    pytest.param(policy(server="{max_body_bytes: '1 GB'}"), id="size with a space before GB"),
    pytest.param(policy(server="{drain_timeout: 30}"), id="duration in seconds"),
    pytest.param(policy(server="{drain_timeout: 0.5}"), id="duration of half a second"),
    pytest.param(policy(server="{drain_timeout: 500ms}"), id="duration in ms"),
    pytest.param(policy(server="{drain_timeout: 1.5s}"), id="duration in fractional s"),
    pytest.param(policy(server="{drain_timeout: 2m}"), id="duration in m"),
    pytest.param(policy(server="{drain_timeout: 1h}"), id="duration in h"),
    pytest.param(policy(server=""), id="empty server section"),
    pytest.param(policy(store="{kind: redis, url: 'redis://r:6379/0'}"), id="redis store"),
    pytest.param(policy(store="{kind: redis, url: 'rediss://u:p@r:6380/1'}"), id="rediss"),
    pytest.param(policy(store="{kind: redis, url: 'unix:///run/redis.sock'}"), id="unix socket"),
    pytest.param(policy(store="{kind: sqlite, path: /data/savepoint.db}"), id="sqlite path"),
    pytest.param(policy(store="{url: ''}"), id="empty store url means the default"),
    pytest.param(policy(store="{path: null}"), id="null store path means the default"),
    pytest.param(policy(store="{kind: '${STORE_KIND:-redis}'}"), id="interpolated store kind"),
    pytest.param(policy(providers=openai(), models=ON_UP), id="openai with default base_url"),
    pytest.param(
        policy(providers=openai(base_url="'http://127.0.0.1:8000/v1/'"), models=ON_UP),
        id="base_url with a trailing slash",
    ),
    pytest.param(policy(providers=openai(api_key="sk-1"), models=ON_UP), id="literal api_key"),
    pytest.param(
        policy(providers=openai(api_key_env="OPENAI_API_KEY"), models=ON_UP), id="api_key_env"
    ),
    pytest.param(
        policy(providers=openai(api_key="''", api_key_env="OPENAI_API_KEY"), models=ON_UP),
        id="an empty api_key beside api_key_env",
    ),
    pytest.param(
        policy(providers=openai(api_key_env="UNSET_KEY", optional="true"), models=ON_UP),
        id="optional provider whose variable is unset",
    ),
    pytest.param(
        policy(
            providers=openai(headers="{OpenAI-Organization: org-1, X-Retries: 3}"), models=ON_UP
        ),
        id="headers",
    ),
    pytest.param(
        policy(
            providers=openai(timeouts="{connect: 1s, first_byte: 2m, idle: 30s, total: 10m}"),
            models=ON_UP,
        ),
        id="all four timeouts",
    ),
    pytest.param(
        policy(providers=openai(timeouts="{total: 10s}"), models=ON_UP),
        id="total alone caps the other phases",
    ),
    pytest.param(policy(providers=openai(max_connections="1"), models=ON_UP), id="one connection"),
    pytest.param(
        policy(providers="{mock: {kind: '${PROVIDER_KIND:-mock}'}}"), id="interpolated kind"
    ),
    pytest.param(policy(models="{m: {targets: [mock]}}"), id="bare provider as target"),
    pytest.param(
        policy(models="{m: {targets: [{provider: mock, model: up-m, timeouts: {total: 5s}}]}}"),
        id="target mapping with timeouts",
    ),
    pytest.param(policy(models="{m: {targets: [{provider: mock}]}}"), id="target without model"),
    pytest.param(
        policy(models="{m: {targets: [mock/a, mock/b]}, m.2: {targets: [mock/c]}}"),
        id="several targets and models",
    ),
    pytest.param(policy(models="{m: {targets: [mock/m], owned_by: acme}}"), id="owned_by"),
    pytest.param(policy(clients=client(f"{{key_sha256: {HASH}}}")), id="client by hash"),
    pytest.param(policy(clients=client(f"{{key_sha256: {HASH.upper()}}}")), id="upper-case hash"),
    pytest.param(policy(clients=client(f"{{key_sha256: [{HASH}]}}")), id="list of hashes"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY}")), id="client by key_env"),
    pytest.param(
        policy(
            clients=client(
                f"{{key_sha256: {HASH}, limits: {{rpm: 60, tpm: 90000, "
                "concurrency: 4}, model_limits: {m: {rpm: 10}}, "
                "budget: {usd: 25.5, period: month, soft: 0.9}}"
            )
        ),
        id="client limits and a budget",
    ),
    pytest.param(
        policy(clients=client(f"{{key_sha256: {HASH}, budget: {{tokens: '${{TOKENS:-1000}}'}}}}")),
        id="token budget from a variable",
    ),
    pytest.param(
        policy(models=model("limits: {rpm: 600, tpm: '${TPM:-100000}'}")), id="model limits"
    ),
    pytest.param(
        policy(clients=client("{key_env: AGENT_KEY, key_sha256: []}")), id="empty hash list"
    ),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: [m]}")), id="client models"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: '*'}")), id="models star"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: ['*']}")), id="star list"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: []}")), id="no models"),
    pytest.param(policy(clients=""), id="empty clients section"),
    pytest.param(
        policy(providers=knobs("{chunks: 12, delay: 0.5, status: 503, fail_nth: [1, 2]}")),
        id="mock knobs",
    ),
    pytest.param(
        policy(providers=knobs("{scope: t1, models: [a, b], hang: true, fail_ratio: 0.25}")),
        id="more mock knobs",
    ),
    pytest.param(policy(providers=knobs("{chunk-delay: 0.1}")), id="knob spelled with a dash"),
    pytest.param(policy(providers=knobs("{status: null}")), id="optional knob unset"),
    pytest.param(policy(providers=knobs("{fail_nth: '1,2'}")), id="knob list as text"),
    pytest.param(policy(providers=knobs("{hang: 'yes', malformed: 0}")), id="flag words"),
    pytest.param(policy(providers=knobs("{delay: '${MOCK_DELAY:-0}'}")), id="interpolated knob"),
    pytest.param(policy(providers=knobs("{chunks: '12'}")), id="knob number as text"),
    pytest.param(
        policy(providers=openai(base_url="'${VLLM_URL:-http://127.0.0.1:8000/v1}'"), models=ON_UP),
        id="interpolated base_url",
    ),
    pytest.param(policy(server="{drain_timeout: '${DRAIN:-45s}'}"), id="interpolated duration"),
    pytest.param(policy(providers=openai(api_key="'pa$$word'"), models=ON_UP), id="dollar escape"),
    pytest.param(
        policy(models="{m: {targets: [[mock/a, {provider: mock, model: b, weight: 2}], mock/c]}}"),
        id="a balanced group, then a target",
    ),
    pytest.param(policy(models="{m: {targets: [[mock/a]]}}"), id="a group of one"),
    pytest.param(policy(models=CHAIN), id="fallbacks as a list and as one name"),
    pytest.param(
        policy(models="{m: {fallbacks: [n]}, n: {targets: [mock/n]}}"), id="fallbacks alone"
    ),
    pytest.param(
        policy(models="{m: {targets: null, fallbacks: n}, n: {targets: [mock/n]}}"),
        id="null targets beside fallbacks",
    ),
    pytest.param(
        policy(models="{m: {targets: [mock/m], fallbacks: []}}"),
        id="empty fallbacks beside targets",
    ),
    pytest.param(
        policy(models="{m: {targets: [mock/m], fallbacks: ['${FALLBACK:-n}']}" + N + "}"),
        id="interpolated fallback",
    ),
    pytest.param(
        policy(models="{m: {targets: [mock/m], fallbacks: [n]}, n: {targets: [mock/m]}}"),
        id="a fallback with the same deployment",
    ),
    pytest.param(policy(models=model("deadline: 2m")), id="deadline"),
    pytest.param(policy(models=model("deadline: '${DEADLINE:-90s}'")), id="interpolated deadline"),
    pytest.param(
        policy(
            models=model(
                "fallback_on: [connect_error, first_byte_timeout, server_error, rate_limited, "
                "quota_exceeded, context_window_exceeded, content_filter]"
            )
        ),
        id="every failure that can move on",
    ),
    pytest.param(policy(models=model("fallback_on: []")), id="fallback_on empty: never move on"),
    pytest.param(policy(models=model("fallback_on: null")), id="null fallback_on: the default"),
    pytest.param(
        policy(models=model("fallback_on: ['${ON:-server_error}']")), id="interpolated failure"
    ),
    pytest.param(policy(models=model("balance: least_in_flight")), id="least_in_flight"),
    pytest.param(policy(models=model("balance: weighted")), id="weighted"),
    pytest.param(
        policy(models=model("balance: '${BALANCE:-weighted}'")), id="interpolated balance"
    ),
    pytest.param(policy(models=target("weight: 0.5")), id="fractional weight"),
    pytest.param(policy(models=target("weight: 3")), id="integer weight"),
    pytest.param(policy(models=target("context_window: 128000")), id="context_window in tokens"),
    pytest.param(policy(models=target("context_window: 128k")), id="context_window 128k"),
    pytest.param(policy(models=target("context_window: 8K")), id="context_window 8K"),
    pytest.param(policy(models=target("context_window: '128 k'")), id="context_window 128 k"),
    pytest.param(policy(models=target("context_window: '32000'")), id="context_window as text"),
    pytest.param(policy(models=target("context_window: null")), id="null context_window"),
    pytest.param(
        policy(models=target("context_window: '${CTX:-32k}'")), id="interpolated context_window"
    ),
    pytest.param(
        policy(
            retries="{attempts_per_target: 3, backoff_base: 500ms, backoff_cap: 4s, "
            "budget_ratio: 0.5, budget_min: 0}"
        ),
        id="every retry key",
    ),
    pytest.param(policy(retries=""), id="empty retries section"),
    pytest.param(policy(retries="{attempts_per_target: 1}"), id="one attempt: no retry"),
    pytest.param(policy(retries="{attempts_per_target: '${N}'}"), id="interpolated attempts"),
    pytest.param(policy(retries="{backoff_base: 0}"), id="backoff_base 0"),
    pytest.param(policy(retries="{backoff_base: 0.0}"), id="backoff_base 0.0"),
    pytest.param(policy(retries="{backoff_base: 0s, backoff_cap: 0ms}"), id="backoff 0s and 0ms"),
    pytest.param(policy(retries="{backoff_base: '0', backoff_cap: '0'}"), id="backoff '0'"),
    pytest.param(policy(retries="{backoff_base: '${BACKOFF:-0}'}"), id="interpolated backoff 0"),
    pytest.param(policy(retries="{budget_ratio: 0, budget_min: '5'}"), id="budget ratio 0"),
    pytest.param(policy(retries="{budget_ratio: 1}"), id="budget ratio 1"),
    pytest.param(
        policy(models=model("retries: {attempts_per_target: 4, backoff_base: 0}")),
        id="a model's own retries",
    ),
    pytest.param(
        policy(retries="{backoff_base: 1s}", models=model("retries: {backoff_cap: 2s}")),
        id="a model's retries over the top-level ones",
    ),
    pytest.param(
        policy(models=model("deadline: 1s, retries: {attempts_per_target: 9, backoff_base: 0}")),
        id="many attempts without backoff fit any deadline",
    ),
    pytest.param(
        policy(
            breakers="{fail_max: 3, reset_timeout: 10s, max_reset_timeout: 2m, "
            "success_threshold: 1, rate_limit_cooldown: 2s, max_cooldown: 30s}"
        ),
        id="every breaker key",
    ),
    pytest.param(policy(breakers=""), id="empty breakers section"),
    pytest.param(policy(breakers="{fail_max: '${N}'}"), id="interpolated fail_max"),
    pytest.param(
        policy(breakers="{reset_timeout: 5m, max_reset_timeout: 5m}"), id="reset timeouts equal"
    ),
    pytest.param(policy(admin="{key_env: SAVEPOINT_ADMIN_KEY}"), id="admin key_env"),
    pytest.param(policy(admin=f"{{key_sha256: [{HASH}]}}"), id="admin key_sha256 list"),
    pytest.param(policy(admin=""), id="empty admin section: no admin key"),
    pytest.param(
        policy(idempotency="{retention: 2h, lease: 10s, wait: 30s}"), id="every idempotency key"
    ),
    pytest.param(policy(idempotency=""), id="empty idempotency section"),
]

REJECTED = [
    pytest.param(policy(models=model("limits: {rpm: 0}")), id="rpm 0"),
    pytest.param(policy(models=model("limits: {rps: 5}")), id="unknown limit key"),
    pytest.param(
        policy(clients=client(f"{{key_sha256: {HASH}, budget: {{period: day}}}}")),
        id="a budget without an amount",
    ),
    pytest.param(
        policy(clients=client(f"{{key_sha256: {HASH}, budget: {{tokens: 5, period: week}}}}")),
        id="a weekly budget",
    ),
    pytest.param(
        policy(clients=client(f"{{key_sha256: {HASH}, budget: {{usd: 5, soft: 2}}}}")),
        id="soft over 1",
    ),
    pytest.param(policy(models=model("fallbacks: [[n]]")), id="a list inside fallbacks"),
    pytest.param(policy(models=model("fallbacks: {n: 1}")), id="fallbacks as a mapping"),
    pytest.param(
        policy(models=model("fallback_on: [{server_error: 1}]")), id="a mapping in fallback_on"
    ),
    pytest.param(policy(retries="{attempts_per_target: '²'}"), id="a superscript digit"),
    pytest.param(
        policy(retries="{attempts_per_target: 11, backoff_base: 0}"),
        id="more than 10 attempts per target",
    ),
    pytest.param(
        policy(retries="{backoff_base: false}"),
        id="backoff false",
    ),
    pytest.param(policy(version="true"), id="version true"),
    pytest.param(
        policy(providers=openai(headers="{X-Team: null}"), models=ON_UP),
        id="null header value",
    ),
    pytest.param(
        policy(providers=openai(headers="{X-Team: [a, b]}"), models=ON_UP),
        id="list as a header value",
    ),
    pytest.param(
        policy(providers=knobs("{scope: 'a;hang'}")),
        id="semicolon in a knob value",
    ),
    pytest.param(
        policy(providers=openai(mock="{speed: 9}"), models=ON_UP),
        id="mock knobs on an openai provider",
    ),
    pytest.param(
        policy(providers="{mock: {kind: mock, base_url: 'http://x/v1'}}"),
        id="base_url on a mock provider",
    ),
    pytest.param("", id="empty file"),
    pytest.param("- a\n", id="a list instead of a mapping"),
    pytest.param(policy(routes="{}"), id="unknown top-level key"),
    pytest.param(policy(version="2"), id="version 2"),
    pytest.param(policy(version="'1'"), id="version as text"),
    pytest.param(policy(models=None), id="no models"),
    pytest.param(policy(models="{}"), id="empty models"),
    pytest.param(policy(providers=None), id="no providers"),
    pytest.param(policy(providers="{}"), id="empty providers"),
    pytest.param(policy(server="{port: 8080}"), id="unknown server key"),
    pytest.param(policy(server="[]"), id="server as a list"),
    pytest.param(policy(server="{max_body_bytes: 0}"), id="size 0"),
    pytest.param(policy(server="{max_body_bytes: -1}"), id="negative size"),
    pytest.param(policy(server="{max_body_bytes: 1.5}"), id="fractional size"),
    pytest.param(policy(server="{max_body_bytes: 32mib}"), id="size unit in the wrong case"),
    pytest.param(policy(server="{max_body_bytes: 32M}"), id="size unit M"),
    pytest.param(policy(server="{max_body_bytes: 0MiB}"), id="size 0MiB"),
    pytest.param(policy(server="{max_body_bytes: 1.5MiB}"), id="fractional size with unit"),
    pytest.param(policy(server="{max_body_bytes: null}"), id="null size"),
    pytest.param(policy(server="{drain_timeout: 0}"), id="duration 0"),
    pytest.param(policy(server="{drain_timeout: 0s}"), id="duration 0s"),
    pytest.param(policy(server="{drain_timeout: 0.0m}"), id="duration 0.0m"),
    pytest.param(policy(server="{drain_timeout: -5}"), id="negative duration"),
    pytest.param(policy(server="{drain_timeout: fast}"), id="duration as a word"),
    pytest.param(policy(server="{drain_timeout: 30 sec}"), id="duration unit sec"),
    pytest.param(policy(server="{drain_timeout: .5s}"), id="duration without a leading digit"),
    pytest.param(policy(server="{drain_timeout: true}"), id="duration true"),
    pytest.param(policy(store="{kind: postgres}"), id="unknown store kind"),
    pytest.param(policy(store="{kind: null}"), id="null store kind"),
    pytest.param(policy(store="{url: 'http://r:6379'}"), id="store url not redis"),
    pytest.param(policy(store="{url: 6379}"), id="store url as a number"),
    pytest.param(policy(store="{file: x.db}"), id="unknown store key"),
    pytest.param(policy(providers="{up: {base_url: 'http://x/v1'}}"), id="provider without kind"),
    pytest.param(policy(providers="{mock: {kind: anthropic}}"), id="unknown provider kind"),
    pytest.param(policy(providers="{mock: }"), id="null provider"),
    pytest.param(policy(providers="{-mock: {kind: mock}}"), id="provider name with a dash first"),
    pytest.param(policy(providers="{'my mock': {kind: mock}}"), id="provider name with a space"),
    pytest.param(
        policy(providers=openai(base_url="'localhost:8000/v1'"), models=ON_UP),
        id="base_url without scheme",
    ),
    pytest.param(
        policy(providers=openai(base_url="'http://'"), models=ON_UP), id="base_url without host"
    ),
    pytest.param(policy(providers=openai(base_url="null"), models=ON_UP), id="null base_url"),
    pytest.param(
        policy(providers=openai(api_key="sk-1", api_key_env="OPENAI_API_KEY"), models=ON_UP),
        id="api_key and api_key_env",
    ),
    pytest.param(policy(providers=openai(api_key="true"), models=ON_UP), id="api_key true"),
    pytest.param(
        policy(providers=openai(api_key_env="UNSET", optional="'yes'"), models=ON_UP),
        id="optional as text",
    ),
    pytest.param(policy(providers=openai(optional="null"), models=ON_UP), id="null optional"),
    pytest.param(policy(providers=openai(api_base="'x'"), models=ON_UP), id="unknown key"),
    pytest.param(policy(providers=openai(headers="[a]"), models=ON_UP), id="headers as a list"),
    pytest.param(
        policy(providers=openai(timeouts="{read: 5s}"), models=ON_UP), id="unknown timeout"
    ),
    pytest.param(policy(providers=openai(timeouts="5s"), models=ON_UP), id="timeouts as text"),
    pytest.param(
        policy(providers=openai(max_connections="0"), models=ON_UP), id="zero connections"
    ),
    pytest.param(policy(models="{'gpt 4': {targets: [mock/m]}}"), id="model name with a space"),
    pytest.param(policy(models="{m: }"), id="null model"),
    pytest.param(policy(models="{m: {owned_by: x}}"), id="model without targets"),
    pytest.param(policy(models="{m: {targets: []}}"), id="empty targets"),
    pytest.param(policy(models="{m: {targets: mock/m}}"), id="targets not a list"),
    pytest.param(policy(models="{m: {targets: [5]}}"), id="target as a number"),
    pytest.param(policy(models="{m: {targets: [/m]}}"), id="target without provider"),
    pytest.param(policy(models="{m: {targets: [{model: m}]}}"), id="target mapping no provider"),
    pytest.param(policy(models=target("priority: 2")), id="unknown target key"),
    pytest.param(
        policy(models="{m: {targets: [{provider: mock, timeouts: {total: 0}}]}}"),
        id="target total 0",
    ),
    pytest.param(policy(models="{m: {targets: [mock/m], owner: x}}"), id="unknown model key"),
    pytest.param(policy(clients=client("{}")), id="client without a key"),
    pytest.param(policy(clients=client("")), id="null client"),
    pytest.param(policy(clients=client("{key_sha256: abc}")), id="short hash"),
    pytest.param(policy(clients=client("{key_sha256: [abc]}")), id="short hash in a list"),
    pytest.param(policy(clients=client("{key_sha256: null}")), id="null hash"),
    pytest.param(policy(clients=client("{key_sha256: []}")), id="empty hash list alone"),
    pytest.param(policy(clients=client("{key_env: ''}")), id="empty key_env"),
    pytest.param(policy(clients=client("{key: sk-1}")), id="unknown client key"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: m}")), id="models as text"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: null}")), id="null models"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: ['*', m]}")), id="star+m"),
    pytest.param(policy(clients=client("{key_env: AGENT_KEY, models: [5]}")), id="model number"),
    pytest.param(policy(clients="{'a b': {key_env: AGENT_KEY}}"), id="client name with a space"),
    pytest.param(policy(providers="{mock: {kind: mock}, 7: {kind: mock}}"), id="number as a name"),
    pytest.param(policy(providers=knobs("{speed: 9}")), id="unknown knob"),
    pytest.param(policy(providers=knobs("[chunks]")), id="knobs as a list"),
    pytest.param(policy(providers=knobs("{chunks: -1}")), id="negative chunks"),
    pytest.param(policy(providers=knobs("{chunks: 2.5}")), id="fractional chunks"),
    pytest.param(policy(providers=knobs("{chunks: null}")), id="null chunks"),
    pytest.param(policy(providers=knobs("{dimensions: 0}")), id="zero dimensions"),
    pytest.param(policy(providers=knobs("{status: 200}")), id="status 200"),
    pytest.param(policy(providers=knobs("{status: oops}")), id="status as a word"),
    pytest.param(policy(providers=knobs("{delay: fast}")), id="delay as a word"),
    pytest.param(policy(providers=knobs("{delay: -1}")), id="negative delay"),
    pytest.param(policy(providers=knobs("{delay: 90000}")), id="delay over a day"),
    pytest.param(policy(providers=knobs("{hang: 2}")), id="flag 2"),
    pytest.param(policy(providers=knobs("{hang: maybe}")), id="flag maybe"),
    pytest.param(policy(providers=knobs("{hang: }")), id="bare flag"),
    pytest.param(policy(providers=knobs("{fail_nth: [0]}")), id="request number 0"),
    pytest.param(policy(providers=knobs("{fail_nth: 'a,b'}")), id="request numbers as words"),
    pytest.param(policy(providers=knobs("{fail_ratio: 1.5}")), id="ratio over 1"),
    pytest.param(policy(providers=knobs("{scope: 'a b'}")), id="scope with a space"),
    pytest.param(policy(providers=knobs("{scope: " + "s" * 65 + "}")), id="scope too long"),
    pytest.param(policy(models="{m: {targets: [[]]}}"), id="nested empty group"),
    pytest.param(policy(models="{m: {targets: [[], mock/m]}}"), id="empty group before a target"),
    pytest.param(policy(models="{m: {targets: [[[mock/m]]]}}"), id="a group inside a group"),
    pytest.param(policy(models="{m: {targets: null}}"), id="null targets without fallbacks"),
    pytest.param(policy(models="{m: {fallbacks: []}}"), id="empty fallbacks without targets"),
    pytest.param(
        policy(models="{m: {targets: [], fallbacks: [n]}, n: {targets: [mock/n]}}"),
        id="empty targets beside fallbacks",
    ),
    pytest.param(policy(models=model("fallbacks: [5]")), id="fallback as a number"),
    pytest.param(policy(models=target("weight: 0")), id="weight 0"),
    pytest.param(policy(models=target("weight: -1")), id="negative weight"),
    pytest.param(policy(models=target("weight: '2'")), id="weight as text"),
    pytest.param(policy(models=target("weight: '${W:-2}'")), id="interpolated weight"),
    pytest.param(policy(models=target("weight: true")), id="weight true"),
    pytest.param(policy(models=target("weight: null")), id="null weight"),
    pytest.param(policy(models=target("context_window: 0")), id="context_window 0"),
    pytest.param(policy(models=target("context_window: 0k")), id="context_window 0k"),
    pytest.param(policy(models=target("context_window: -8000")), id="negative context_window"),
    pytest.param(policy(models=target("context_window: 1.5k")), id="context_window 1.5k"),
    pytest.param(policy(models=target("context_window: 128m")), id="context_window 128m"),
    pytest.param(policy(models=target("context_window: 128kb")), id="context_window 128kb"),
    pytest.param(policy(models=target("context_window: true")), id="context_window true"),
    pytest.param(policy(models=model("deadline: 0")), id="deadline 0"),
    pytest.param(policy(models=model("deadline: soon")), id="deadline as a word"),
    pytest.param(policy(models=model("fallback_on: [timeout]")), id="unknown failure name"),
    pytest.param(
        policy(models=model("fallback_on: [client_error]")), id="fallback on client_error"
    ),
    pytest.param(
        policy(models=model("fallback_on: [idle_timeout]")), id="fallback on idle_timeout"
    ),
    pytest.param(
        policy(models=model("fallback_on: [deadline_exceeded]")), id="fallback on deadline_exceeded"
    ),
    pytest.param(policy(models=model("fallback_on: server_error")), id="fallback_on not a list"),
    pytest.param(policy(models=model("fallback_on: [5]")), id="failure as a number"),
    pytest.param(policy(models=model("balance: round_robin")), id="unknown balance"),
    pytest.param(policy(models=model("balance: null")), id="null balance"),
    pytest.param(policy(models=model("retries: {attempts: 3}")), id="unknown model retry key"),
    pytest.param(policy(retries="[3]"), id="retries as a list"),
    pytest.param(policy(retries="{max_attempts: 3}"), id="unknown retry key"),
    pytest.param(policy(retries="{attempts_per_target: 0}"), id="zero attempts"),
    pytest.param(policy(retries="{attempts_per_target: '0'}"), id="zero attempts as text"),
    pytest.param(policy(retries="{attempts_per_target: 2.5}"), id="fractional attempts"),
    pytest.param(policy(retries="{backoff_base: -1}"), id="negative backoff"),
    pytest.param(policy(retries="{backoff_base: 0.0s}"), id="backoff 0.0s"),
    pytest.param(policy(retries="{backoff_base: '0.0'}"), id="backoff '0.0'"),
    pytest.param(policy(retries="{backoff_cap: fast}"), id="backoff as a word"),
    pytest.param(policy(retries="{budget_ratio: 1.5}"), id="budget ratio over 1"),
    pytest.param(policy(retries="{budget_ratio: -0.1}"), id="negative budget ratio"),
    pytest.param(policy(retries="{budget_ratio: '0.5'}"), id="budget ratio as text"),
    pytest.param(policy(retries="{budget_ratio: '${RATIO:-0.5}'}"), id="interpolated ratio"),
    pytest.param(policy(retries="{budget_min: -1}"), id="negative budget_min"),
    pytest.param(policy(idempotency="{lease: 0}"), id="idempotency lease 0"),
    pytest.param(policy(idempotency="{wait: forever}"), id="idempotency wait as a word"),
    pytest.param(policy(idempotency="{ttl: 1h}"), id="unknown idempotency key"),
    pytest.param(policy(breakers="[]"), id="breakers as a list"),
    pytest.param(policy(breakers="{threshold: 5}"), id="unknown breaker key"),
    pytest.param(policy(breakers="{fail_max: 0}"), id="fail_max 0"),
    pytest.param(policy(breakers="{success_threshold: 0}"), id="success_threshold 0"),
    pytest.param(policy(breakers="{reset_timeout: 0}"), id="reset_timeout 0"),
    pytest.param(policy(breakers="{rate_limit_cooldown: 0}"), id="rate_limit_cooldown 0"),
    pytest.param(policy(breakers="{max_cooldown: never}"), id="max_cooldown as a word"),
    pytest.param(policy(admin="{}"), id="admin without a key"),
    pytest.param(policy(admin="{key_sha256: []}"), id="admin with an empty hash list"),
    pytest.param(policy(admin="{key_env: ''}"), id="admin with an empty key_env"),
    pytest.param(policy(admin="{key_sha256: abc}"), id="admin short hash"),
    pytest.param(policy(admin="{key: sk-1}"), id="unknown admin key"),
    pytest.param(policy(admin="sk-admin"), id="admin as text"),
]

LOADER_ONLY = [
    pytest.param(
        policy(clients=client(f"{{key_sha256: {HASH}, model_limits: {{nope: {{rpm: 1}}}}}}")),
        id="limits for an unknown model",
    ),
    pytest.param(
        policy(providers=openai(base_url="'${UNSET_URL}'"), models=ON_UP),
        id="a ${VAR} that is not set",
    ),
    pytest.param(
        policy(server="{drain_timeout: '${DRAIN:-fast}'}"),
        id="an interpolated value that is not a duration",
    ),
    pytest.param(
        policy(providers=openai(api_key_env="UNSET_KEY"), models=ON_UP),
        id="api_key_env not set and the provider not optional",
    ),
    pytest.param(policy(clients=client("{key_env: UNSET_KEY}")), id="key_env not set"),
    pytest.param(policy(models="{m: {targets: [nope/m]}}"), id="target names no provider"),
    pytest.param(
        policy(clients=client("{key_env: AGENT_KEY, models: [nope]}")),
        id="client names no model",
    ),
    pytest.param(
        policy(clients=f"{{a: {{key_sha256: {HASH}}}, b: {{key_sha256: {HASH}}}}}"),
        id="two clients with one key",
    ),
    pytest.param(
        policy(providers=openai(timeouts="{connect: 20s, total: 10s}"), models=ON_UP),
        id="a phase longer than total",
    ),
    pytest.param(
        policy(providers=openai(max_connections="5.0"), models=ON_UP),
        id="5.0 where an integer is expected",
    ),
    pytest.param(policy(server="{max_body_bytes: 1048576.0}"), id="1048576.0 bytes"),
    pytest.param(policy(providers=knobs("{chunks: '999999'}")), id="knob text out of range"),
    pytest.param(
        policy(models=LOOP),
        id="fallback loop",
    ),
    pytest.param(policy(models=model("fallbacks: [m]")), id="a model that falls back to itself"),
    pytest.param(policy(models=model("fallbacks: [nope]")), id="unknown fallback model"),
    pytest.param(
        policy(models="{m: {targets: [[mock/a, nope/b]]}}"), id="a group member names no provider"
    ),
    pytest.param(
        policy(models=model("fallback_on: ['${ON:-timeout}']")),
        id="an interpolated failure that is not a failure name",
    ),
    pytest.param(
        policy(models=model("deadline: 1s, retries: {attempts_per_target: 3, backoff_base: 1s}")),
        id="retry backoff that cannot fit the deadline",
    ),
    pytest.param(
        policy(retries="{attempts_per_target: 5}", models=model("deadline: 2s")),
        id="top-level retries that cannot fit a model's deadline",
    ),
    pytest.param(policy(models=model("deadline: 200ms")), id="the default retries in 200ms"),
    pytest.param(policy(retries="{backoff_base: 10s}"), id="backoff_base above the default cap"),
    pytest.param(
        policy(retries="{backoff_base: 2s, backoff_cap: 1s}"), id="backoff_cap below backoff_base"
    ),
    pytest.param(policy(retries="{backoff_cap: 0}"), id="backoff_cap 0 alone"),
    pytest.param(
        policy(
            retries="{backoff_base: 2s, backoff_cap: 4s}",
            models=model("retries: {backoff_cap: 1s}"),
        ),
        id="a model's backoff_cap below the top-level backoff_base",
    ),
    pytest.param(policy(models=target("context_window: 128000.0")), id="128000.0 tokens"),
    pytest.param(
        policy(breakers="{reset_timeout: 60s, max_reset_timeout: 30s}"),
        id="max_reset_timeout below reset_timeout",
    ),
    pytest.param(policy(breakers="{reset_timeout: 10m}"), id="reset_timeout above the default max"),
    pytest.param(policy(admin="{key_env: UNSET_ADMIN_KEY}"), id="admin key_env not set"),
]

SCHEMA_STRICTER = [
    pytest.param(
        policy(providers=knobs("{scope: null}")),
        id="null scope: the loader names the scope None",
    ),
    pytest.param(
        policy(providers=knobs("{Chunks: 3}")),
        id="knob name in capitals: the loader lower-cases it",
    ),
]

# The loader fails with a Python exception instead of a located problem: a loader bug, outside
# this file. The second value is the schema's verdict (True: valid). When the loader reports a
# problem instead, the xfail test below fails: move the case to REJECTED or LOADER_ONLY.


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert _schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(_schema())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_policy_passes_the_schema_and_the_loader(path: Path) -> None:
    text = path.read_text()
    assert schema_errors(text) == []
    assert loader_errors(text) == []


@pytest.mark.parametrize("text", ACCEPTED)
def test_schema_and_loader_both_accept(text: str) -> None:
    assert loader_errors(text) == []
    assert schema_errors(text) == []


@pytest.mark.parametrize("text", REJECTED)
def test_schema_and_loader_both_reject(text: str) -> None:
    assert loader_errors(text) != []
    assert schema_errors(text) != []


@pytest.mark.parametrize("text", LOADER_ONLY)
def test_loader_rejects_what_no_schema_can_express(text: str) -> None:
    assert loader_errors(text) != []
    assert schema_errors(text) == []


@pytest.mark.parametrize("text", SCHEMA_STRICTER)
def test_schema_rejects_what_the_loader_accepts_only_by_accident(text: str) -> None:
    assert schema_errors(text) != []
    assert loader_errors(text) == [], "the loader rejects this now: move the case to REJECTED"


@pytest.mark.parametrize("text", [*ACCEPTED, *REJECTED, *LOADER_ONLY, *SCHEMA_STRICTER])
def test_a_draft_07_validator_gives_the_same_verdict(text: str) -> None:
    # Editors (yaml-language-server) validate with draft-07 semantics.
    newer = schema_errors(text) == []
    assert (schema_errors(text, jsonschema.Draft7Validator) == []) == newer


def _loader_known_keys(text: str) -> set[str]:
    for problem in loader_errors(text):
        if "unknown key; expected one of: " in problem:
            return set(problem.split("expected one of: ")[1].split(", "))
        if match := re.search(r"unknown mock knob .* \(known: (.*)\)", problem):
            return set(match.group(1).split(", "))
    raise AssertionError(f"no unknown-key problem in {loader_errors(text)}")


KEY_PROBES = [
    pytest.param(policy(zzz="1"), (), id="top level"),
    pytest.param(policy(server="{zzz: 1}"), ("properties", "server"), id="server"),
    pytest.param(policy(store="{zzz: 1}"), ("properties", "store"), id="store"),
    pytest.param(
        policy(providers="{mock: {kind: mock, zzz: 1}}"), ("$defs", "provider"), id="provider"
    ),
    pytest.param(
        policy(providers="{mock: {kind: mock, timeouts: {zzz: 1}}}"),
        ("$defs", "provider_timeouts"),
        id="provider timeouts",
    ),
    pytest.param(policy(models="{m: {targets: [mock/m], zzz: 1}}"), ("$defs", "model"), id="model"),
    pytest.param(
        policy(models="{m: {targets: [{provider: mock, zzz: 1}]}}"),
        ("$defs", "target", "anyOf", 2),
        id="target",
    ),
    pytest.param(
        policy(models="{m: {targets: [{provider: mock, timeouts: {zzz: 1}}]}}"),
        ("$defs", "target_timeouts"),
        id="target timeouts",
    ),
    pytest.param(
        policy(clients=client("{key_env: AGENT_KEY, zzz: 1}")), ("$defs", "client"), id="client"
    ),
    pytest.param(policy(retries="{zzz: 1}"), ("$defs", "retries"), id="retries"),
    pytest.param(
        policy(models=model("retries: {zzz: 1}")), ("$defs", "retries"), id="model retries"
    ),
    pytest.param(policy(breakers="{zzz: 1}"), ("properties", "breakers"), id="breakers"),
    pytest.param(
        policy(admin="{key_env: SAVEPOINT_ADMIN_KEY, zzz: 1}"), ("properties", "admin"), id="admin"
    ),
    pytest.param(policy(providers=knobs("{zzz: 1}")), ("$defs", "mock_knobs"), id="mock knobs"),
]


@pytest.mark.parametrize(("text", "where"), KEY_PROBES)
def test_the_schema_knows_exactly_the_keys_the_loader_knows(
    text: str, where: tuple[str | int, ...]
) -> None:
    node: Any = _schema()
    for part in where:
        node = node[part]
    assert set(node["properties"]) == _loader_known_keys(text)


def _default(*path: str) -> Any:
    node: Any = _schema()
    for part in path:
        node = node[part]
    return node["default"]


def test_schema_defaults_are_the_loaders_defaults() -> None:
    loaded = parse_policy(
        policy(
            providers="{up: {kind: openai}, mock: {kind: mock}}",
            models="{m: {targets: [{provider: mock}]}}",
            clients=client(f"{{key_sha256: {HASH}}}"),
        ),
        "policy.yaml",
        {},
    )
    server, store, up = loaded.server, loaded.store, loaded.providers["up"]
    assert _default("properties", "version") == 1
    assert _default("properties", "server", "properties", "max_body_bytes") == server.max_body_bytes
    assert _default("properties", "server", "properties", "drain_timeout") == server.drain_timeout
    for key in ("kind", "path", "url"):
        assert _default("properties", "store", "properties", key) == getattr(store, key)
    provider = ("$defs", "provider", "properties")
    assert _default(*provider, "base_url") == up.base_url
    assert _default(*provider, "max_connections") == up.max_connections
    assert _default(*provider, "headers") == dict(up.headers)
    assert _default(*provider, "optional") is False
    for key in ("connect", "first_byte", "idle", "total"):
        assert _default("$defs", "provider_timeouts", "properties", key) == getattr(
            up.timeouts, key
        )
    m = loaded.models["m"]
    model_keys = ("$defs", "model", "properties")
    assert _default(*model_keys, "owned_by") == m.owned_by
    assert _default(*model_keys, "deadline") == m.deadline
    assert _default(*model_keys, "balance") == m.balance
    assert set(_default(*model_keys, "fallback_on")) == {f.value for f in m.fallback_on}
    assert m.fallback_on == DEFAULT_FALLBACK_ON
    target_keys = ("$defs", "target", "anyOf", 2, "properties")
    assert _default(*target_keys, "weight") == m.targets[0].weight
    assert m.targets[0].context_window is None  # unknown unless given
    assert "default" not in _schema()["$defs"]["target"]["anyOf"][2]["properties"]["context_window"]
    for f in dataclasses.fields(m.retries):
        assert _default("$defs", "retries", "properties", f.name) == getattr(m.retries, f.name)
    for f in dataclasses.fields(loaded.breakers):
        assert _default("properties", "breakers", "properties", f.name) == getattr(
            loaded.breakers, f.name
        )
    assert loaded.admin_key_hashes == frozenset()  # no admin key unless given
    assert loaded.clients["c"].models is None  # every model
    assert _default("$defs", "client", "properties", "models") == "*"


def test_schema_knob_defaults_are_the_mocks_defaults() -> None:
    knobs_schema = _schema()["$defs"]["mock_knobs"]["properties"]
    for field in dataclasses.fields(Knobs):
        default = getattr(Knobs(), field.name)
        if default is None:  # an optional knob: unset by default
            assert "default" not in knobs_schema[field.name], field.name
        else:
            expected = list(default) if isinstance(default, tuple) else default
            assert knobs_schema[field.name]["default"] == expected, field.name


def _docs_policies() -> list[Any]:
    """Every complete policy in docs/policies.md (a yaml block with `version: 1`), and whether
    it is meant to be valid: the one that shows error messages says so in its first line."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    complete = [b for b in blocks if re.search(r"^version: 1$", b, flags=re.M)]
    return [
        pytest.param(b, "mistakes on purpose" not in b.partition("\n")[0], id=f"docs policy {i}")
        for i, b in enumerate(complete, start=1)
    ]


def test_the_docs_show_complete_policies() -> None:
    assert [p for p in _docs_policies() if p.values[1]], "no valid policy found in the docs"


@pytest.mark.parametrize(("text", "valid"), _docs_policies())
def test_every_complete_policy_in_the_docs_is_judged_as_the_docs_say(
    text: str, valid: bool
) -> None:
    assert (loader_errors(text) == []) is valid
    assert (schema_errors(text) == []) is valid

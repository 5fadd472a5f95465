"""The policy loader: valid files become frozen data; every problem names its place."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from gateway.config.load import PolicyError, parse_policy

BASE = """
version: 1
providers:
  up:
    kind: openai
    base_url: http://127.0.0.1:9/v1
models:
  m:
    targets: [up/upstream-m]
"""


def _parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_policy(textwrap.dedent(text), "p.yaml", env or {})


def _problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        _parse(text, env)
    return caught.value.problems


def test_minimal_policy_loads_with_defaults() -> None:
    policy = _parse(BASE)
    target = policy.models["m"].targets[0]
    assert (target.provider, target.model) == ("up", "upstream-m")
    assert target.timeouts.connect == 5.0 and target.timeouts.total == 600.0
    assert policy.store.kind == "sqlite"
    assert not policy.auth_enabled


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _parse(BASE).server.drain_timeout = 1  # type: ignore[misc]


PROVIDER = "providers:\n  up: {kind: openai}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PROVIDER
            + "models:\n  m:\n    targets:\n      - {provider: up, timeouts: {total: fast}}\n",
            "6: models.m.targets[0].timeouts.total: expected seconds (e.g. 30, 500ms, 2m, 7d), "
            'got "fast"',
        ),
        (
            PROVIDER + "models:\n  m:\n    targets: [nope/x]\n",
            '5: models.m.targets[0].provider: unknown provider "nope" (known: up)',
        ),
        (
            PROVIDER + "models:\n  m:\n    targets: []\n",
            "5: models.m.targets: expected a non-empty list of targets",
        ),
        (
            "modles: {}\n" + BASE,
            "1: modles: unknown key; expected one of: version, server, "
            "store, providers, models, clients, retries, breakers, admin, cache, runs, "
            "idempotency, prices, guard, usage",
        ),
        (
            BASE + "server: {max_body_bytes: lots}\n",
            '10: server.max_body_bytes: expected a size in bytes (e.g. 1048576, 32MiB), got "lots"',
        ),
        (
            BASE + "store: {kind: postgres}\n",
            '10: store.kind: expected sqlite or redis, got "postgres"',
        ),
        (
            BASE.replace("version: 1", "version: 2"),
            "2: version: this gateway reads version 1, got 2",
        ),
        (
            BASE.replace("version: 1", "version: true"),
            "2: version: this gateway reads version 1, got True",
        ),
        (
            BASE + "clients: {}\nclients: {}\n",
            "11: clients: appears twice in the same mapping; YAML would keep only the last one",
        ),
        (
            BASE.replace("kind: openai", "kind: openai\n    timeouts: {total: .nan}"),
            "6: providers.up.timeouts.total: expected seconds (e.g. 30, 500ms, 2m, 7d), got nan",
        ),
        (
            BASE.replace("kind: openai", "kind: openai\n    headers: {x-team: null}"),
            "6: providers.up.headers.x-team: expected a header value (a string), got null",
        ),
        (
            BASE.replace("kind: openai", "kind: openai\n    mock: {chunks: 3}"),
            "6: providers.up.mock: only a provider of kind mock takes `mock`",
        ),
    ],
)
def test_problem_names_line_and_path(text: str, expected: str) -> None:
    assert _problems(text) == [expected]


def test_every_problem_is_reported_not_just_the_first() -> None:
    problems = _problems("""
        providers:
          up: {kind: openai, timeouts: {connect: -1}, max_connections: 0}
        models:
          m: {targets: [ghost/x]}
    """)
    assert len(problems) == 3


def test_env_interpolation_with_defaults_and_escapes() -> None:
    policy = _parse(
        """
        providers:
          up:
            kind: openai
            base_url: "${UP_URL}"
            headers: {x-cost: "$$5", x-team: "${TEAM:-core}"}
        models:
          m: {targets: [up/x]}
        """,
        {"UP_URL": "http://10.0.0.1/v1"},
    )
    spec = policy.providers["up"]
    assert spec.base_url == "http://10.0.0.1/v1"
    assert dict(spec.headers) == {"x-cost": "$5", "x-team": "core"}


def test_unset_env_var_is_an_error_naming_it() -> None:
    problems = _problems(BASE.replace("http://127.0.0.1:9/v1", "${UPSTREAM_URL}"))
    assert any("environment variable UPSTREAM_URL is not set" in p for p in problems)


def test_required_provider_key_must_be_set() -> None:
    problems = _problems(BASE.replace("kind: openai", "kind: openai\n    api_key_env: UP_KEY"))
    assert any(
        "providers.up.api_key_env: environment variable UP_KEY is not set" in p for p in problems
    )


def test_optional_provider_without_key_switches_its_models_off() -> None:
    text = BASE.replace("kind: openai", "kind: openai\n    api_key_env: UP_KEY\n    optional: true")
    policy = _parse(text + "  other:\n    targets: [up/x]\n")
    assert policy.models == {}
    assert "UP_KEY is not set" in policy.unavailable["m"]
    assert policy.disabled_providers == {"up": "UP_KEY is not set"}
    on = _parse(text, {"UP_KEY": "sk-live"})
    assert on.providers["up"].api_key is not None
    assert on.providers["up"].api_key.reveal() == "sk-live"


def test_provider_key_never_shows_in_repr() -> None:
    policy = _parse(BASE.replace("kind: openai", "kind: openai\n    api_key: sk-very-secret"))
    assert "sk-very-secret" not in repr(policy)
    assert "sk-very-secret" not in str(policy.providers["up"])


def test_target_timeouts_override_the_providers_and_cap_at_total() -> None:
    policy = _parse("""
        providers:
          up: {kind: openai, timeouts: {first_byte: 30s, idle: 20s}}
        models:
          m:
            targets:
              - {provider: up, model: x, timeouts: {total: 10s}}
              - {provider: up, model: y, timeouts: {first_byte: 500ms}}
    """)
    short, long_ = policy.models["m"].targets
    assert (short.timeouts.first_byte, short.timeouts.idle, short.timeouts.total) == (10, 10, 10)
    assert (long_.timeouts.first_byte, long_.timeouts.idle) == (0.5, 20)


def test_explicit_phase_longer_than_total_is_refused() -> None:
    problems = _problems(
        BASE.replace("kind: openai", "kind: openai\n    timeouts: {idle: 2m, total: 1m}")
    )
    assert any("providers.up.timeouts.idle: 120s is longer than total (60s)" in p for p in problems)


def test_clients_keys_and_allowed_models() -> None:
    digest = "a" * 64
    policy = _parse(
        BASE
        + f"""
clients:
  alice: {{key_sha256: {digest}, models: [m]}}
  bob: {{key_env: BOB_KEY}}
""",
        {"BOB_KEY": "sk-bob"},
    )
    assert policy.auth_enabled
    assert policy.clients["alice"].models == frozenset({"m"})
    assert policy.clients["bob"].models is None
    assert len(policy.clients["bob"].key_hashes) == 1


@pytest.mark.parametrize(
    ("clients", "expected"),
    [
        ("alice: {key_sha256: nothex}", "clients.alice.key_sha256: expected 64 hex digits"),
        ("alice: {models: [m]}", "clients.alice: a client needs key_sha256 or key_env"),
        (
            f"alice: {{key_sha256: {'b' * 64}, models: [ghost]}}",
            'clients.alice.models[0]: unknown model "ghost"',
        ),
        (
            f"a: {{key_sha256: {'c' * 64}}}\n  b: {{key_sha256: {'c' * 64}}}",
            "clients.b: uses the same API key as client 'a'",
        ),
    ],
)
def test_bad_clients_are_refused(clients: str, expected: str) -> None:
    problems = _problems(BASE + "clients:\n  " + clients + "\n")
    assert any(expected in p for p in problems), problems


def test_mock_provider_knobs_are_validated_each_at_its_key() -> None:
    problems = _problems("""
        providers:
          m:
            kind: mock
            mock: {chunks: many, scope: "a;hang", delay: 0.5}
        models:
          x: {targets: [m/mock-gpt]}
    """)
    assert len(problems) == 2
    assert problems[0].startswith("5: providers.m.mock.chunks:")
    assert problems[1].startswith("5: providers.m.mock.scope: expected a number, a string")


def test_key_hash_written_as_a_block_is_refused_not_silently_broken() -> None:
    problems = _problems(BASE + "clients:\n  a:\n    key_sha256: |\n      " + "a" * 64 + "\n")
    assert problems == [
        "12: clients.a.key_sha256: expected 64 hex digits (sha256 of the key), got 65 characters"
    ]


def test_a_malformed_key_hash_is_never_echoed() -> None:
    problems = _problems(BASE + "clients:\n  a: {key_sha256: sk-live-supersecretvalue123}\n")
    assert "supersecret" not in problems[0]
    assert problems[0].endswith("got 27 characters")


def test_env_values_can_fill_numbers_and_flags() -> None:
    text = BASE.replace("kind: openai", "kind: openai\n    max_connections: ${CONNS}")
    assert _parse(text, {"CONNS": "8"}).providers["up"].max_connections == 8


def test_default_replaces_an_empty_variable_like_the_shell() -> None:
    text = BASE.replace("http://127.0.0.1:9/v1", "${UP:-http://127.0.0.1:7/v1}")
    assert _parse(text, {"UP": ""}).providers["up"].base_url == "http://127.0.0.1:7/v1"


def test_invalid_yaml_is_reported_with_its_line() -> None:
    problems = _problems("models:\n  m: [unclosed\n")
    assert problems[0].startswith("3:") or problems[0].startswith("2:")
    assert "not valid YAML" in problems[0]


def test_a_header_or_key_that_would_break_the_request_line_is_refused() -> None:
    evil = 'kind: openai\n    headers: {x-team: "a\\r\\nX-Evil: 1"}'
    headers = BASE.replace("kind: openai", evil)
    assert _problems(headers) == [
        "6: providers.up.headers.x-team: a header name must be letters, digits and "
        "-_.!#$%&'*+^`|~, and neither name nor value may hold a line break or NUL"
    ]
    key = BASE.replace("kind: openai", "kind: openai\n    api_key_env: UP_KEY")
    problems = _problems(key, {"UP_KEY": "sk-live-123\n"})
    assert any(
        "environment variable UP_KEY holds a line break or NUL (a trailing newline from a file?)"
        in p
        and "sk-live" not in p
        for p in problems
    )


def test_a_redis_url_may_set_only_the_database_in_its_query() -> None:
    store = "store: {kind: redis, url: 'redis://:secret@r:6379/0?socket_timeout=5'}\n"
    assert _problems(BASE + store) == [
        "10: store.url: the URL's query may set only db (redis://host:6379?db=1); other client "
        "options are not read"
    ]
    assert _parse(BASE + "store: {kind: redis, url: 'redis://r:6379?db=2'}\n").store.kind == "redis"

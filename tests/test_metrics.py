"""Prometheus metrics: `Metrics` fed with traces and read back through prometheus_client's
parser, then `GET /metrics` on a real gateway driven by the openai SDK."""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from typing import Any

import httpx
import openai
import pytest
from harness import Gateway, Gateways, mock_provider
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.load import parse_policy
from gateway.config.prices import shipped_prices
from gateway.config.schema import Policy
from gateway.decide.cost import cost_usd, price_for
from gateway.errors import (
    BudgetExhausted,
    InvalidRequest,
    Refused,
    RequestsLimited,
    TokensLimited,
    UpstreamUnreachable,
)
from gateway.metrics import BUCKETS, CONTENT_TYPE, Metrics, refused_limit
from gateway.model import Attempt, Trace, Usage

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

POLICY = f"""
version: 1
providers: {{mock: {{kind: mock}}}}
models:
  m: {{targets: [mock/mock-gpt, {{provider: mock, model: 'odd"name\\x'}}]}}
  n: {{targets: [mock/mock-gpt], cache: {{enabled: true}}}}
clients:
  alice: {{key_sha256: {"a" * 64}}}
  bob: {{key_sha256: {"b" * 64}}}
"""


@pytest.fixture
def policy() -> Policy:
    return parse_policy(textwrap.dedent(POLICY), "p.yaml", {})


def _trace(started: float = 100.0, **fields: Any) -> Trace:
    trace = Trace("id", "POST", "/v1/chat/completions", started)
    trace.client, trace.model, trace.status = "alice", "m", 200
    for name, value in fields.items():
        setattr(trace, name, value)
    return trace


def _parse(text: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def _render(metrics: Metrics, breakers: list[dict[str, Any]] | None = None) -> Samples:
    return _parse(metrics.render(breakers or []))


USAGE = Usage(
    prompt_tokens=1000,
    completion_tokens=200,
    total_tokens=1200,
    cached_tokens=400,
    reasoning_tokens=50,
)


def test_a_live_request_counts_its_tokens_cost_latency_and_attempt(policy: Policy) -> None:
    metrics = Metrics(policy)
    trace = _trace(
        target="mock/mock-gpt", usage=USAGE, attempts=[Attempt("mock/mock-gpt", "ok", 290.0)]
    )
    metrics.observe(trace, 100.3)
    s = _render(metrics)
    assert (
        _get(s, "savepoint_requests_total", client="alice", model="m", outcome="live", code="200")
        == 1
    )
    tokens = {
        kind: _get(s, "savepoint_tokens_total", client="alice", model="m", kind=kind)
        for kind in ("prompt", "cached", "completion", "reasoning")
    }
    assert tokens == {"prompt": 1000, "cached": 400, "completion": 200, "reasoning": 50}
    price = price_for(policy.prices, "mock-gpt")
    assert price is not None
    cost = _get(s, "savepoint_cost_usd_total", client="alice", model="m")
    assert cost == pytest.approx(cost_usd(USAGE, price)) and cost > 0
    assert _get(s, "savepoint_upstream_attempts_total", target="mock/mock-gpt", outcome="ok") == 1
    duration = "savepoint_request_duration_seconds"
    assert _get(s, duration + "_count", model="m", outcome="live") == 1
    assert _get(s, duration + "_sum", model="m", outcome="live") == pytest.approx(0.3)
    assert _get(s, duration + "_bucket", model="m", outcome="live", le="0.25") == 0
    assert _get(s, duration + "_bucket", model="m", outcome="live", le="0.5") == 1
    assert _series(s, "savepoint_time_to_first_byte_seconds_count") == []  # not a stream


def test_requests_the_loop_guard_flagged_are_counted(policy: Policy) -> None:
    metrics = Metrics(policy)
    metrics.observe(_trace(flags=["loop"]), 100.1)
    metrics.observe(_trace(flags=["loop"]), 100.1)
    metrics.observe(_trace(), 100.1)
    s = _render(metrics)
    assert _get(s, "savepoint_loops_flagged_total", client="alice", model="m") == 2


def test_histogram_buckets_are_cumulative_and_end_in_count_and_sum(policy: Policy) -> None:
    metrics = Metrics(policy)
    for seconds in (0.001, 0.005, 0.3, 7.0, 500.0):  # 0.005 counts in le="0.005"
        metrics.observe(_trace(started=0.0), seconds)
    s = _render(metrics)
    name = "savepoint_request_duration_seconds"
    buckets = [_get(s, name + "_bucket", model="m", outcome="live", le=str(b)) for b in BUCKETS]
    assert buckets[:2] == [2, 2] and buckets[BUCKETS.index(0.5)] == 3
    assert buckets[BUCKETS.index(10.0)] == 4 and buckets[-1] == 4  # 500 s is past 120 s
    assert buckets == sorted(buckets)
    assert _get(s, name + "_bucket", model="m", outcome="live", le="+Inf") == 5
    assert _get(s, name + "_count", model="m", outcome="live") == 5
    assert _get(s, name + "_sum", model="m", outcome="live") == pytest.approx(507.306)


def test_names_the_policy_does_not_know_are_never_used_as_labels(policy: Policy) -> None:
    metrics = Metrics(policy)
    metrics.observe(_trace(model="gpt-made-up-by-the-client", status=404), 100.1)
    metrics.observe(_trace(client=None, model=None, status=401), 100.1)
    metrics.observe(_trace(client="mallory", model="m", status=200), 100.1)
    metrics.observe(
        _trace(attempts=[Attempt("elsewhere/x", "ok", 1.0), Attempt("mock/mock-gpt", "weird", 1)]),
        100.1,
    )
    s = _render(metrics)
    labels = _series(s, "savepoint_requests_total")
    assert {(x["client"], x["model"]) for x in labels} == {
        ("alice", "other"),
        ("none", "none"),
        ("other", "m"),
        ("alice", "m"),
    }
    assert _get(s, "savepoint_upstream_attempts_total", target="other", outcome="ok") == 1
    assert (
        _get(s, "savepoint_upstream_attempts_total", target="mock/mock-gpt", outcome="other") == 1
    )


def test_a_label_value_is_escaped_and_parses_back_exactly(policy: Policy) -> None:
    metrics = Metrics(policy)
    odd = 'mock/odd"name\\x'
    metrics.observe(_trace(attempts=[Attempt(odd, "server_error", 3.0)], status=502), 100.1)
    s = _render(metrics)
    assert _get(s, "savepoint_upstream_attempts_total", target=odd, outcome="server_error") == 1
    assert _get(s, "savepoint_breaker_state", target=odd, state="closed") == 1


@pytest.mark.parametrize(
    ("fields", "refused", "outcome", "code"),
    [
        pytest.param({}, None, "live", "200", id="live"),
        pytest.param({"cache": "miss"}, None, "live", "200", id="cache miss"),
        pytest.param({"cache": "hit", "target": "cache"}, None, "cache_hit", "200", id="hit"),
        pytest.param(
            {"cache": "replay", "target": "journal"},
            None,
            "run_replay",
            "200",
            id="durable run replay",
        ),
        pytest.param({"idempotency": "replayed"}, None, "idempotent_replay", "200", id="replay"),
        pytest.param(
            {"idempotency": "replayed", "status": 502},
            None,
            "idempotent_replay",
            "502",
            id="a replayed failure is a replay",
        ),
        pytest.param(
            {"idempotency": "attached"}, None, "idempotent_attached", "200", id="attached"
        ),
        pytest.param({"idempotency": "executed"}, None, "live", "200", id="executed"),
        pytest.param(
            {"status": 429, "error_code": "rate_limit_exceeded"},
            "requests",
            "refused",
            "429",
            id="refused by a limit",
        ),
        pytest.param(
            {"status": 429, "attempts": [Attempt("mock/mock-gpt", "rate_limited", 1)]},
            None,
            "failed",
            "429",
            id="the provider's 429",
        ),
        pytest.param({"status": 503}, None, "failed", "503", id="upstream failure"),
        pytest.param(
            {"error_code": "upstream_stream_cut"},
            None,
            "failed",
            "200",
            id="stream broken after the commit point",
        ),
        pytest.param({"status": 499}, None, "failed", "499", id="client went away"),
    ],
)
def test_each_request_has_one_outcome(
    policy: Policy, fields: dict[str, Any], refused: str | None, outcome: str, code: str
) -> None:
    metrics = Metrics(policy)
    metrics.observe(_trace(**fields), 100.1, refused)
    s = _render(metrics)
    assert _series(s, "savepoint_requests_total") == [
        {"client": "alice", "model": "m", "outcome": outcome, "code": code}
    ]


@pytest.mark.parametrize(
    ("error", "limit"),
    [
        (RequestsLimited("over rpm"), "requests"),
        (TokensLimited("over tpm"), "tokens"),
        (BudgetExhausted("spent"), "budget"),
        (Refused("guard", code="loop_detected"), "loop_detected"),
        (InvalidRequest("bad"), None),
        (UpstreamUnreachable("down"), None),
    ],
)
def test_refusals_are_told_apart_by_the_limit_that_refused(error: Any, limit: str | None) -> None:
    assert refused_limit(error) == limit


def test_limit_rejections_are_counted_by_limit(policy: Policy) -> None:
    metrics = Metrics(policy)
    for limit in ("tokens", "tokens", "budget"):
        metrics.observe(_trace(status=429), 100.01, limit)
    s = _render(metrics)
    name = "savepoint_limit_rejections_total"
    assert _get(s, name, client="alice", model="m", limit="tokens") == 2
    assert _get(s, name, client="alice", model="m", limit="budget") == 1
    assert (
        _get(
            s, "savepoint_requests_total", client="alice", model="m", outcome="refused", code="429"
        )
        == 3
    )


def test_saved_tokens_are_counted_by_where_the_stored_answer_came_from(policy: Policy) -> None:
    metrics = Metrics(policy)
    saved = Usage(10, 20, 30)
    metrics.observe(_trace(model="n", cache="hit", target="cache", saved=saved), 100.01)
    metrics.observe(_trace(cache="replay", target="journal", saved=saved), 100.01)
    metrics.observe(_trace(idempotency="replayed", saved=saved), 100.01)
    metrics.observe(_trace(idempotency="attached", saved=saved), 100.01)
    metrics.observe(_trace(model="n", cache="miss", usage=saved, target="mock/mock-gpt"), 100.01)
    s = _render(metrics)
    name = "savepoint_saved_tokens_total"
    assert _get(s, name, client="alice", model="n", source="cache") == 30
    assert _get(s, name, client="alice", model="m", source="replay") == 30
    assert _get(s, name, client="alice", model="m", source="idempotency") == 60
    assert len(_series(s, name)) == 3  # a live answer saves nothing
    assert _get(s, "savepoint_cache_requests_total", model="n", result="hit") == 1
    assert _get(s, "savepoint_cache_requests_total", model="n", result="miss") == 1
    tokens = {(x["model"], x["kind"]) for x in _series(s, "savepoint_tokens_total")}
    assert tokens == {("n", k) for k in ("prompt", "cached", "completion", "reasoning")}


def test_wasted_tokens_are_those_of_failures_and_flagged_loops(policy: Policy) -> None:
    metrics = Metrics(policy)
    billed = Usage(10, 20, 30)
    metrics.observe(_trace(usage=billed, error_code="upstream_stream_cut"), 100.01)
    metrics.observe(_trace(usage=billed, flags=["loop"]), 100.01)
    metrics.observe(_trace(usage=billed), 100.01)  # a good answer wastes nothing
    metrics.observe(_trace(status=503), 100.01)  # a failure the provider billed nothing for
    s = _render(metrics)
    assert _get(s, "savepoint_wasted_tokens_total", client="alice", model="m") == 60


def test_time_to_first_byte_is_of_streams_relayed_from_a_provider(policy: Policy) -> None:
    metrics = Metrics(policy)
    ok = [Attempt("mock/mock-gpt", "ok", 40.0)]
    metrics.observe(_trace(stream=True, first_byte=100.04, attempts=ok), 101.0)
    metrics.observe(_trace(stream=True, first_byte=100.02, idempotency="attached"), 101.0)
    s = _render(metrics)
    name = "savepoint_time_to_first_byte_seconds"
    assert _get(s, name + "_count", model="m") == 1
    assert _get(s, name + "_sum", model="m") == pytest.approx(0.04)
    assert _get(s, name + "_bucket", model="m", le="0.025") == 0
    assert _get(s, name + "_bucket", model="m", le="0.05") == 1


def test_breaker_states_come_from_the_snapshot_and_unseen_deployments_are_closed(
    policy: Policy,
) -> None:
    snapshot = [
        {
            "target": "mock/mock-gpt",
            "state": "open",
            "failures": 5,
            "cooldown_s": 2.5,
            "active": 3,
            "reset_timeout_s": 30.0,
            "retry_in_s": 29.0,
            "ejected_by_peer_s": 0.0,
        }
    ]
    s = _render(Metrics(policy), snapshot)
    states = {
        st: _get(s, "savepoint_breaker_state", target="mock/mock-gpt", state=st)
        for st in ("closed", "open", "half-open")
    }
    assert states == {"closed": 0, "open": 1, "half-open": 0}
    assert _get(s, "savepoint_breaker_state", target='mock/odd"name\\x', state="closed") == 1
    assert _get(s, "savepoint_breaker_failures", target="mock/mock-gpt") == 5
    assert _get(s, "savepoint_target_cooldown_seconds", target="mock/mock-gpt") == 2.5
    assert _get(s, "savepoint_target_active_requests", target="mock/mock-gpt") == 3


def test_every_family_is_declared_even_before_the_first_request(policy: Policy) -> None:
    families = {
        f.name: f.type for f in text_string_to_metric_families(Metrics(policy).render([]).decode())
    }
    assert families == {
        "savepoint_requests": "counter",
        "savepoint_request_duration_seconds": "histogram",
        "savepoint_time_to_first_byte_seconds": "histogram",
        "savepoint_tokens": "counter",
        "savepoint_cost_usd": "counter",
        "savepoint_saved_tokens": "counter",
        "savepoint_wasted_tokens": "counter",
        "savepoint_limit_rejections": "counter",
        "savepoint_cache_requests": "counter",
        "savepoint_loops_flagged": "counter",
        "savepoint_upstream_attempts": "counter",
        "savepoint_breaker_state": "gauge",
        "savepoint_breaker_failures": "gauge",
        "savepoint_target_cooldown_seconds": "gauge",
        "savepoint_target_active_requests": "gauge",
    }


# ---- end to end: a real gateway, the openai SDK, Prometheus' parser --------------------------

ALICE, ADMIN = "sk-alice-metrics-0001", "sk-admin-metrics-0001"
RUN = f"{os.getpid()}-{time.monotonic_ns() % 10**8}"
QUESTION = [{"role": "user", "content": "how many tokens?"}]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _e2e_policy(admin: str) -> str:
    return f"""
version: 1
store: {{path: "{{tmp}}/metrics-{RUN}.db"}}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", scope=f"metrics-{RUN}")}{mock_provider("down", "status=503", scope=f"metrics-down-{RUN}")}
models:
  plain: {{targets: [up/mock-gpt]}}
  cached: {{targets: [up/mock-gpt], cache: {{enabled: true}}}}
  broken: {{targets: [down/mock-gpt]}}
  tight: {{targets: [up/mock-gpt], limits: {{rpm: 1}}}}
clients:
  alice: {{key_sha256: {_hash(ALICE)}}}
{admin}
"""  # noqa: E501


def _scrape(gw: Gateway, key: str = ADMIN) -> httpx.Response:
    return httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {key}"})


def _scrape_when(gw: Gateway, requests: int) -> Samples:
    """The metrics once `requests` requests are counted (a stream's client can read its last
    byte a moment before the gateway has counted it)."""
    deadline = time.monotonic() + 5
    while True:
        s = _parse(_scrape(gw).content)
        counted = sum(v for (n, _), v in s.items() if n == "savepoint_requests_total")
        if counted >= requests or time.monotonic() > deadline:
            assert counted == requests
            return s
        time.sleep(0.05)


def _usage(u: Any) -> Usage:
    details = u.prompt_tokens_details
    return Usage(
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        details.cached_tokens if details and details.cached_tokens else 0,
    )


def test_metrics_count_what_the_sdk_saw(gateways: Gateways) -> None:
    gw = gateways.start(_e2e_policy(f"admin: {{key_sha256: {_hash(ADMIN)}}}"), shared=False)
    try:
        client = gw.client(api_key=ALICE)
        live = client.chat.completions.create(model="plain", messages=QUESTION)  # type: ignore[arg-type]
        chunks = list(
            client.chat.completions.create(
                model="plain",
                messages=QUESTION,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
        )
        streamed = chunks[-1].usage
        miss = client.chat.completions.with_raw_response.create(model="cached", messages=QUESTION)  # type: ignore[arg-type]
        hit = client.chat.completions.with_raw_response.create(model="cached", messages=QUESTION)  # type: ignore[arg-type]
        assert (miss.headers["x-savepoint-cache"], hit.headers["x-savepoint-cache"]) == (
            "miss",
            "hit",
        )
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="broken", messages=QUESTION)  # type: ignore[arg-type]
        client.chat.completions.create(model="tight", messages=QUESTION)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tight", messages=QUESTION)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-from-nowhere", messages=QUESTION)  # type: ignore[arg-type]
        assert _scrape(gw, key=ALICE).status_code == 401  # a client may not read them
        assert httpx.get(f"{gw.url}/metrics").status_code == 401

        s = _scrape_when(gw, 10)
        first = _scrape(gw)
        assert first.headers["Content-Type"] == CONTENT_TYPE
        assert _parse(first.content) == s  # a scrape is not a request

        def requests(model: str, outcome: str, code: str, client: str = "alice") -> float | None:
            return _get(
                s,
                "savepoint_requests_total",
                client=client,
                model=model,
                outcome=outcome,
                code=code,
            )

        assert requests("plain", "live", "200") == 2
        assert requests("cached", "live", "200") == 1
        assert requests("cached", "cache_hit", "200") == 1
        assert requests("broken", "failed", "503") == 1
        assert requests("tight", "live", "200") == 1
        assert requests("tight", "refused", "429") == 1
        assert requests("other", "failed", "404") == 1
        assert requests("none", "failed", "401", client="none") == 2  # the refused scrapes
        assert (
            _get(
                s,
                "savepoint_limit_rejections_total",
                client="alice",
                model="tight",
                limit="requests",
            )
            == 1
        )

        assert live.usage is not None and streamed is not None
        plain = [_usage(live.usage), _usage(streamed)]
        for kind, field in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            expected = sum(getattr(u, field) for u in plain)
            assert expected > 0
            assert (
                _get(s, "savepoint_tokens_total", client="alice", model="plain", kind=kind)
                == expected
            )
        price = price_for(shipped_prices(), "mock-gpt")
        assert price is not None
        assert _get(s, "savepoint_cost_usd_total", client="alice", model="plain") == (
            pytest.approx(sum(cost_usd(u, price) for u in plain))
        )
        cached_usage = miss.parse().usage
        assert cached_usage is not None
        assert (
            _get(s, "savepoint_saved_tokens_total", client="alice", model="cached", source="cache")
            == cached_usage.total_tokens
        )
        assert _get(s, "savepoint_cache_requests_total", model="cached", result="hit") == 1
        assert _get(s, "savepoint_cache_requests_total", model="cached", result="miss") == 1

        attempts = "savepoint_upstream_attempts_total"
        assert _get(s, attempts, target="up/mock-gpt", outcome="ok") == 4
        assert _get(s, attempts, target="down/mock-gpt", outcome="server_error") == 1
        assert _get(s, "savepoint_time_to_first_byte_seconds_count", model="plain") == 1
        assert (
            _get(s, "savepoint_request_duration_seconds_count", model="plain", outcome="live") == 2
        )
        assert _get(s, "savepoint_breaker_state", target="down/mock-gpt", state="closed") == 1
        assert _get(s, "savepoint_breaker_failures", target="down/mock-gpt") == 1
        assert _get(s, "savepoint_breaker_state", target="up/mock-gpt", state="open") == 0

        logged = {line["path"] for line in gw.proc.access_log() if "path" in line}
        assert "/metrics" in logged  # the refused scrapes; the others are not logged
        assert sum(1 for line in gw.proc.access_log() if line.get("path") == "/metrics") == 2
    finally:
        gw.proc.stop()


def test_metrics_are_open_when_authentication_is_off(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families["savepoint_requests"] == "counter"
    assert families["savepoint_breaker_state"] == "gauge"


def test_metrics_are_refused_with_clients_but_no_admin_key(gateways: Gateways) -> None:
    gw = gateways.start(_e2e_policy(""), shared=False)
    try:
        response = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {ALICE}"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "admin_not_configured"
    finally:
        gw.proc.stop()


def test_workers_metrics_add_up_from_snapshots(policy: Policy) -> None:
    """`serve --workers N`: a scrape adds the other workers' snapshots to its own series."""
    mine, theirs = Metrics(policy), Metrics(policy)
    billed = Usage(10, 20, 30)
    mine.observe(_trace(usage=billed, target="mock/mock-gpt"), 100.01)
    for _ in range(3):
        theirs.observe(_trace(usage=billed, target="mock/mock-gpt", stream=True, first_byte=100.02,
                              attempts=[Attempt("mock/mock-gpt", "ok", 1)]), 100.3)  # fmt: skip
    s = _render(mine.merged([theirs.snapshot(), b"{half a snapsh"]))
    assert _get(s, "savepoint_requests_total", client="alice", model="m", outcome="live",
                code="200") == 4  # fmt: skip
    assert _get(s, "savepoint_tokens_total", client="alice", model="m", kind="prompt") == 40
    assert _get(s, "savepoint_request_duration_seconds_count", model="m", outcome="live") == 4
    assert _get(s, "savepoint_time_to_first_byte_seconds_count", model="m") == 3
    assert _get(s, "savepoint_upstream_attempts_total", target="mock/mock-gpt", outcome="ok") == 3
    # the merge is a copy: the worker's own counters are untouched
    assert _get(_render(mine), "savepoint_requests_total", client="alice", model="m",
                outcome="live", code="200") == 1  # fmt: skip

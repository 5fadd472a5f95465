"""Retries, fallbacks, breakers and the retry budget, driven by the mock's scripted faults.

Every provider here is the same mock under its own counter scope, so the mock's per-scope
counts are the exact number of upstream calls each deployment received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from harness import Gateway, Gateways, free_port, mock_provider

USER = [{"role": "user", "content": "hi"}]
ADMIN_KEY = "sp-admin-key-0123456789"


def _provider(name: str, knobs: str, extra: str = "", base: str = "{mock}/v1") -> str:
    return mock_provider(name, knobs, scope=f"res-{name}", base=base, extra=extra)


PROVIDERS = [
    _provider("down", "status=503"),
    _provider("backup", ""),
    _provider("closed", "", base=f"http://127.0.0.1:{free_port()}/v1"),
    _provider("slow", "delay=2", "timeouts: {first_byte: 300ms}"),
    _provider("limited", "status=429;retry_after=0.3"),
    _provider("limited2", "status=429;retry_after=0.3"),
    _provider("rejects", "status=400"),
    _provider("flaky", "status=503;fail_nth=1,2,3;delay=0.3"),
    _provider("flakybackup", ""),
    _provider("cut", "cut_after=3;chunks=10"),
    _provider("cutbackup", ""),
    _provider("sdk", "status=503;retry_after=0.2"),
    _provider("heavy", ""),
    _provider("light", ""),
    _provider("tardy", "delay=3"),
    _provider("gone", "status=503"),
]
MODELS = """
  fallback: {targets: [down/mock-gpt, backup/mock-gpt]}
  connect: {targets: [closed/mock-gpt, backup/mock-gpt]}
  first-byte: {targets: [slow/mock-gpt, backup/mock-gpt]}
  rate-limited: {targets: [limited/mock-gpt, backup/mock-gpt]}
  rate-limited-alone: {targets: [limited2/mock-gpt]}
  rejected: {targets: [rejects/mock-gpt, backup/mock-gpt]}
  flaky:
    targets: [flaky/mock-gpt, flakybackup/mock-gpt]
  cut: {targets: [cut/mock-gpt, cutbackup/mock-gpt]}
  sdk: {targets: [sdk/mock-gpt]}
  balanced:
    targets:
      - [{provider: heavy, model: mock-gpt, weight: 3}, {provider: light, model: mock-gpt}]
  short-deadline: {targets: [tardy/mock-gpt], deadline: 1s}
  all-down: {targets: [gone/mock-gpt]}
"""


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    return gateways.start(
        f"""
version: 1
store: {{path: "{{tmp}}/resilience.db"}}
retries: {{attempts_per_target: 2, backoff_base: 0}}   # tests switch backoff off here
breakers: {{fail_max: 3, reset_timeout: 500ms, success_threshold: 2}}
admin: {{key_env: TEST_ADMIN_KEY}}
providers:{"".join(PROVIDERS)}
models:{MODELS}
""",
        env={"TEST_ADMIN_KEY": ADMIN_KEY},
    )


@pytest.fixture
def calls(gw: Gateway) -> Iterator[dict[str, int]]:
    """Upstream calls per provider made during the test (by the mock's scope counters)."""
    before = gw_scope_counts(gw)
    delta: dict[str, int] = {}
    yield delta
    after = gw_scope_counts(gw)
    delta.update({k: after.get(k, 0) - before.get(k, 0) for k in after})


def gw_scope_counts(gw: Gateway) -> dict[str, int]:
    stats = httpx.get(f"{gw_mock_url(gw)}/_mock/stats").json()
    return {k.removeprefix("res-"): v for k, v in stats["by_scope"].items() if k.startswith("res-")}


def gw_mock_url(gw: Gateway) -> str:
    return str(gw.mock_url)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _mock_url(gw: Gateway, gateways: Gateways) -> None:
    gw.mock_url = gateways.mock.url  # type: ignore[attr-defined]


def _counts(gw: Gateway) -> dict[str, int]:
    return gw_scope_counts(gw)


def _delta(gw: Gateway, before: dict[str, int], *names: str) -> list[int]:
    after = _counts(gw)
    return [after.get(n, 0) - before.get(n, 0) for n in names]


def _chat(gw: Gateway, model: str, **kw: object) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions",
                      json={"model": model, "messages": USER, **kw}, timeout=30)  # fmt: skip


def test_503_everywhere_on_the_first_provider_falls_back_to_the_second(gw: Gateway) -> None:
    before = _counts(gw)
    r = _chat(gw, "fallback")
    assert r.status_code == 200
    assert r.headers["x-savepoint-target"] == "backup/mock-gpt"
    assert (r.headers["x-savepoint-attempts"], r.headers["x-savepoint-fallback"]) == ("3", "true")
    assert _delta(gw, before, "down", "backup") == [2, 1]  # one retry of the first, then on
    line = gw.log_for(r.headers["x-savepoint-request-id"])
    assert [a[:2] for a in line["attempts"]] == [["down/mock-gpt", "server_error"]] * 2 + [
        ["backup/mock-gpt", "ok"]]  # fmt: skip


def test_connect_error_is_retried_then_falls_back(gw: Gateway) -> None:
    before = _counts(gw)
    r = _chat(gw, "connect")
    assert r.status_code == 200 and r.headers["x-savepoint-attempts"] == "3"
    assert _delta(gw, before, "backup") == [1]


def test_first_byte_timeout_moves_on_before_anything_reaches_the_client(gw: Gateway) -> None:
    before = _counts(gw)
    started = time.monotonic()
    client = gw.client()
    stream = client.chat.completions.create(model="first-byte", messages=USER, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(text.split()) == 8
    assert time.monotonic() - started < 1.5  # 2 x 0.3 s, not the 2 s delay
    assert _delta(gw, before, "slow", "backup") == [2, 1]


def test_429_benches_the_deployment_and_moves_on_without_waiting(gw: Gateway) -> None:
    before = _counts(gw)
    first = _chat(gw, "rate-limited")
    second = _chat(gw, "rate-limited")  # within the 0.3 s cooldown: not even tried
    assert first.status_code == second.status_code == 200
    assert _delta(gw, before, "limited", "backup") == [1, 2]
    time.sleep(0.35)
    _chat(gw, "rate-limited")
    assert _delta(gw, before, "limited") == [2]  # the cooldown is over


def test_429_with_no_way_out_waits_for_retry_after_then_gives_up_for_good(gw: Gateway) -> None:
    before = _counts(gw)
    started = time.monotonic()
    r = _chat(gw, "rate-limited-alone")
    assert time.monotonic() - started >= 0.3
    assert r.status_code == 429
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"  # the provider's own body
    assert _delta(gw, before, "limited2") == [2]


def test_a_4xx_goes_back_as_it_is_with_no_retry_and_no_fallback(gw: Gateway) -> None:
    before = _counts(gw)
    r = _chat(gw, "rejected")
    assert r.status_code == 400
    assert r.headers["x-savepoint-attempts"] == "1"
    assert _delta(gw, before, "rejects", "backup") == [1, 0]
    breakers = _breakers(gw)
    assert breakers["rejects/mock-gpt"]["state"] == "closed"
    assert breakers["rejects/mock-gpt"]["failures"] == 0


def test_a_stream_cut_after_the_commit_point_is_not_retried(gw: Gateway) -> None:
    before = _counts(gw)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in gw.client().chat.completions.create(model="cut", messages=USER, stream=True):  # type: ignore[arg-type]
            received.append(chunk)
    assert caught.value.code == "upstream_stream_cut"
    assert _delta(gw, before, "cut", "cutbackup") == [1, 0]


def _breakers(gw: Gateway) -> dict[str, dict[str, object]]:
    r = httpx.get(f"{gw.url}/admin/breakers", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200
    return {row["target"]: row for row in r.json()["breakers"]}


def test_admin_api_needs_the_admin_key(gw: Gateway) -> None:
    assert httpx.get(f"{gw.url}/admin/breakers").status_code == 401
    wrong = httpx.get(f"{gw.url}/admin/breakers", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_breaker_opens_skips_probes_once_under_load_then_closes(gw: Gateway) -> None:
    before = _counts(gw)
    # Requests 1-3 to `flaky` fail (fail_nth=1,2,3): three consecutive failures open it.
    assert _chat(gw, "flaky").headers["x-savepoint-target"] == "flakybackup/mock-gpt"
    assert _chat(gw, "flaky").headers["x-savepoint-target"] == "flakybackup/mock-gpt"
    assert _delta(gw, before, "flaky") == [3]
    assert _breakers(gw)["flaky/mock-gpt"]["state"] == "open"
    for _ in range(5):  # skipped at once while open
        r = _chat(gw, "flaky")
        assert r.headers["x-savepoint-attempts"] == "1"
    assert _delta(gw, before, "flaky") == [3]

    time.sleep(0.55)  # past the reset timeout: exactly one probe, even under 50 at once

    async def burst() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(*(
                client.post(f"{gw.base_url}/chat/completions",
                            json={"model": "flaky", "messages": USER})
                for _ in range(50)))  # fmt: skip
        return [r.headers["x-savepoint-target"] for r in replies]

    targets = asyncio.run(burst())
    assert targets.count("flaky/mock-gpt") == 1
    assert _delta(gw, before, "flaky") == [4]
    # The probe succeeded (request 4 is healthy); success_threshold 2: one more probe closes it.
    assert _chat(gw, "flaky").headers["x-savepoint-target"] == "flaky/mock-gpt"
    assert _breakers(gw)["flaky/mock-gpt"]["state"] == "closed"
    assert _chat(gw, "flaky").headers["x-savepoint-target"] == "flaky/mock-gpt"
    events = [line for line in gw.proc.stderr().splitlines() if '"flaky/mock-gpt"' in line
              and '"event":"breaker"' in line]  # fmt: skip
    assert ['"to":"open"' in e for e in events].count(True) == 1
    assert ['"to":"closed"' in e for e in events].count(True) == 1


def test_sdk_does_not_retry_what_the_gateway_gave_up_on(gw: Gateway) -> None:
    before = _counts(gw)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x")  # the SDK's default: 2 retries
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.with_raw_response.create(model="sdk", messages=USER)  # type: ignore[arg-type]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert _delta(gw, before, "sdk") == [2]  # the gateway's two attempts; none from the SDK


def test_weighted_group_spreads_requests_by_weight(gw: Gateway) -> None:
    before = _counts(gw)

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(4):
                await asyncio.gather(*(
                    client.post(f"{gw.base_url}/chat/completions",
                                json={"model": "balanced", "messages": USER})
                    for _ in range(50)))  # fmt: skip

    asyncio.run(burst())
    heavy, light = _delta(gw, before, "heavy", "light")
    assert heavy + light == 200
    assert 120 <= heavy <= 180, (heavy, light)  # 3:1 expects 150


def test_route_deadline_bounds_the_whole_chain(gw: Gateway) -> None:
    started = time.monotonic()
    r = _chat(gw, "short-deadline")
    assert time.monotonic() - started < 2
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert r.headers["x-should-retry"] == "false"


def test_when_every_deployment_is_benched_the_answer_says_when_to_come_back(gw: Gateway) -> None:
    for _ in range(2):  # 2 requests x 2 attempts = 4 failures >= fail_max 3
        _chat(gw, "all-down")
    r = _chat(gw, "all-down")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_healthy_target"
    assert r.headers["x-should-retry"] == "true"
    assert 1 <= int(r.headers["retry-after"]) <= 60

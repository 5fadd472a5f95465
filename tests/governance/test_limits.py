"""Rate limits, concurrency limits and budgets, end to end: real gateways, the real openai SDK."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import openai
import pytest
from harness import Gateway, Gateways, mock_provider

ALICE, BOB = "sk-alice-limits-0001", "sk-bob-limits-00002"
SCOPE = f"lim-{os.getpid()}-{time.monotonic_ns() % 10**8}"
QUESTION = [{"role": "user", "content": "what is the answer?"}]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _policy(store: str, scope: str, alice: str, models: str = "") -> str:
    return f"""
version: 1
store: {store}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", scope=scope)}{mock_provider("lazy", "delay=1", scope=scope + "-lazy")}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
  lazy: {{targets: [lazy/mock-gpt]}}
{models}
clients:
  alice: {{key_sha256: {_hash(ALICE)}, {alice}}}
  bob: {{key_sha256: {_hash(BOB)}}}
"""  # noqa: E501


async def _burst(gw: Gateway, n: int, key: str = ALICE, model: str = "mock-gpt",
                 **extra: Any) -> list[Any]:  # fmt: skip
    """`n` requests at once; each result is the raw response or the SDK's exception."""
    client = gw.async_client(api_key=key, max_retries=0)

    async def one() -> Any:
        try:
            return await client.chat.completions.with_raw_response.create(
                model=model, messages=QUESTION, **extra
            )
        except openai.APIStatusError as e:
            return e

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()


def _split(results: list[Any]) -> tuple[list[Any], list[openai.APIStatusError]]:
    ok = [r for r in results if not isinstance(r, openai.APIStatusError)]
    return ok, [r for r in results if isinstance(r, openai.APIStatusError)]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_60_rpm_limit_admits_exactly_60_of_200_at_once(gateways: Gateways, store: str) -> None:
    scope = f"{SCOPE}-rpm-{store}"
    where = ('{kind: redis, url: "redis://127.0.0.1:6379/0"}' if store == "redis"
             else f'{{path: "{{tmp}}/limits-{scope}.db"}}')  # fmt: skip
    # a client name of its own per run: the Redis keys of earlier runs never count
    gw = gateways.start(_policy(where, scope, "limits: {rpm: 60}").replace("alice", f"a{scope}"),
                        shared=False)  # fmt: skip
    try:
        started = time.monotonic()
        ok, refused = _split(asyncio.run(_burst(gw, 200)))
        refilled = int(time.monotonic() - started)  # one more per second the burst took
        assert 60 <= len(ok) <= 60 + refilled and len(ok) + len(refused) == 200
        assert gateways.mock.scope_count(scope) == len(ok)  # refusals cost nothing upstream
        error = refused[0]
        assert error.status_code == 429 and error.code == "rate_limit_exceeded"
        assert error.type == "requests"  # type: ignore[attr-defined]
        assert "over its limit of 60 requests per minute" in error.message
        headers = error.response.headers
        assert headers["x-ratelimit-limit-requests"] == "60"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["retry-after"] == "1" and 0 < int(headers["retry-after-ms"]) <= 1000
        assert headers["x-should-retry"] == "true"
        remaining = {int(r.headers["x-ratelimit-remaining-requests"]) for r in ok}
        assert remaining == set(range(60))  # every admitted answer says what is left
        assert all(r.headers["x-ratelimit-limit-requests"] == "60" for r in ok)
    finally:
        gw.proc.stop()


def test_the_limit_holds_across_three_gateways_sharing_redis(gateways: Gateways) -> None:
    scope = f"{SCOPE}-three"
    policy = _policy('{kind: redis, url: "redis://127.0.0.1:6379/0"}', scope,
                     "limits: {rpm: 60}").replace("alice", f"a{scope}")  # fmt: skip
    three = [gateways.start(policy, shared=False) for _ in range(3)]
    try:

        async def spread() -> list[Any]:
            parts = await asyncio.gather(*(_burst(g, 67) for g in three))
            return [r for part in parts for r in part]

        started = time.monotonic()
        ok, refused = _split(asyncio.run(spread()))
        refilled = int(time.monotonic() - started)
        assert 60 <= len(ok) <= 60 + refilled and len(ok) + len(refused) == 201
        assert gateways.mock.scope_count(scope) == len(ok)
    finally:
        for g in three:
            g.proc.stop()


def test_the_sdk_retries_a_429_after_retry_after_and_gets_through(gateways: Gateways) -> None:
    scope = f"{SCOPE}-retry"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope,
                                "limits: {rpm: 120}"))  # fmt: skip
    ok, _ = _split(asyncio.run(_burst(gw, 120)))
    assert len(ok) == 120  # the whole minute's burst is spent
    refused = [r for r in asyncio.run(_burst(gw, 3)) if isinstance(r, openai.RateLimitError)]
    assert refused  # without retries, this moment is a 429 the SDK raises as RateLimitError
    answer = gw.client(api_key=ALICE, max_retries=3).chat.completions.create(
        model="mock-gpt",
        messages=QUESTION,  # type: ignore[arg-type]
    )
    assert answer.choices[0].message.content  # with them, it waits as told and gets through


def test_requests_at_once_beyond_the_concurrency_limit_are_refused(gateways: Gateways) -> None:
    scope = f"{SCOPE}-conc"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope,
                                "limits: {concurrency: 2}"))  # fmt: skip
    ok, refused = _split(asyncio.run(_burst(gw, 5, model="lazy")))
    assert len(ok) == 2 and len(refused) == 3
    assert "already has 2 requests in flight" in refused[0].message
    ok, _ = _split(asyncio.run(_burst(gw, 2, model="lazy")))  # the slots were given back
    assert len(ok) == 2


def test_token_limits_reserve_then_settle_to_the_real_usage(gateways: Gateways) -> None:
    scope = f"{SCOPE}-tpm"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope,
                                "limits: {tpm: 1000}"))  # fmt: skip
    # each request reserves its prompt (~15 tokens) + max_tokens 400: two fit, a third not
    ok, refused = _split(asyncio.run(_burst(gw, 3, model="lazy", max_tokens=400)))
    assert len(ok) == 2 and len(refused) == 1
    assert refused[0].type == "tokens"  # type: ignore[attr-defined]
    time.sleep(1.0)  # settled (in the background): each took ~25 tokens, not 415
    ok, refused = _split(asyncio.run(_burst(gw, 2, model="lazy", max_tokens=400)))
    assert len(ok) == 2, [r.message for r in refused]
    tokens = int(ok[0].headers["x-ratelimit-remaining-tokens"])
    assert 0 < tokens < 1000
    with pytest.raises(openai.RateLimitError) as caught:  # alone larger than the whole limit
        gw.client(api_key=ALICE, max_retries=0).chat.completions.create(
            model="mock-gpt",
            messages=QUESTION,
            max_tokens=5000,  # type: ignore[arg-type]
        )
    assert "needs more tokens than client" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_a_budget_holds_under_100_concurrent_requests(gateways: Gateways) -> None:
    scope = f"{SCOPE}-budget"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope,
                                "budget: {tokens: 2000, soft: 0.5}"))  # fmt: skip
    ok, refused = _split(asyncio.run(_burst(gw, 100, max_tokens=60)))
    assert ok and refused
    lines = [gw.log_for(r.headers["x-savepoint-request-id"]) for r in ok]
    spent = sum(line["tokens"]["total"] for line in lines)
    assert spent <= 2000  # every admitted request reserved at least what it took
    error = refused[0]
    assert error.code == "insufficient_quota" and error.status_code == 429
    assert error.response.headers["x-should-retry"] == "false"
    assert "has used its budget of 2000 tokens" in error.message
    assert any("x-savepoint-budget-warning" in r.headers for r in ok)
    assert '"event":"budget_soft_limit"' in gw.proc.stderr()


def test_clients_do_not_share_limits(gateways: Gateways) -> None:
    scope = f"{SCOPE}-iso"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope,
                                "limits: {rpm: 5}"))  # fmt: skip
    ok, _ = _split(asyncio.run(_burst(gw, 10)))
    assert len(ok) == 5
    ok, _ = _split(asyncio.run(_burst(gw, 10, key=BOB)))  # bob has no limit
    assert len(ok) == 10
    assert "x-ratelimit-limit-requests" not in ok[0].headers


def _guarded(gateways: Gateways, scope: str, guard: str) -> Gateway:
    policy = _policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope, "models: '*'")
    return gateways.start(policy + f"guard: {guard}\n")


def test_the_loop_guard_flags_a_repeated_request_and_blocks_when_told(
    gateways: Gateways,
) -> None:
    flagging = _guarded(gateways, f"{SCOPE}-flag", "{enabled: true, repeats: 3, window: 60s}")
    client = flagging.client(api_key=ALICE, max_retries=0)
    answers = [_ask_raw(client) for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)  # flagged, not blocked
    assert [("x-savepoint-loop" in a.headers) for a in answers] == [False] * 3 + [True] * 2
    line = flagging.log_for(answers[-1].headers["x-savepoint-request-id"])
    assert line["flags"] == ["loop"]
    assert '"event":"loop_detected"' in flagging.proc.stderr()
    assert "x-savepoint-loop" not in _ask_raw(client, "something else").headers

    blocking = _guarded(
        gateways, f"{SCOPE}-block", "{enabled: true, repeats: 3, window: 60s, block: true}"
    )
    client = blocking.client(api_key=ALICE, max_retries=0)
    for _ in range(3):
        _ask_raw(client)
    with pytest.raises(openai.RateLimitError) as caught:
        _ask_raw(client)
    assert caught.value.code == "loop_detected"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "sent this same request more than 3 times" in caught.value.message
    assert _ask_raw(client, "a new step").status_code == 200  # a different request passes


def test_the_loop_guard_caps_a_runs_steps(gateways: Gateways) -> None:
    gw = _guarded(gateways, f"{SCOPE}-steps", "{enabled: true, run_steps: 3, block: true}")
    client = gw.client(api_key=ALICE, max_retries=0, default_headers={"X-Savepoint-Run": "r1"})
    for i in range(3):
        _ask_raw(client, f"step {i}")
    with pytest.raises(openai.RateLimitError) as caught:
        _ask_raw(client, "step 3")
    assert "run `r1` has taken more than 3 steps" in caught.value.message


def _ask_raw(client: openai.OpenAI, text: str = "same again") -> Any:
    return client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=[{"role": "user", "content": text}]
    )


def test_by_default_the_guard_counts_only_requests_that_limits_apply_to(
    gateways: Gateways,
) -> None:
    scope = f"{SCOPE}-auto"
    policy = _policy(f'{{path: "{{tmp}}/limits-{scope}.db"}}', scope, "limits: {rpm: 1000}")
    gw = gateways.start(policy + "guard: {repeats: 2}\n")
    alice = gw.client(api_key=ALICE, max_retries=0)
    flags = ["x-savepoint-loop" in _ask_raw(alice, "auto").headers for _ in range(3)]
    assert flags == [False, False, True]  # alice has a limit: counted on the same store call
    bob = gw.client(api_key=BOB, max_retries=0)
    assert not any("x-savepoint-loop" in _ask_raw(bob, "auto").headers for _ in range(3))


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_cached_answer_still_takes_its_place_under_the_limit(
    gateways: Gateways, store: str
) -> None:
    """The cache lookup runs alongside admission (one round trip): a hit counts against the
    client's requests per minute, and a refused request gets the 429, not the stored answer."""
    scope = f"{SCOPE}-cached-{store}"
    where = ('{kind: redis, url: "redis://127.0.0.1:6379/0"}' if store == "redis"
             else f'{{path: "{{tmp}}/limits-{scope}.db"}}')  # fmt: skip
    models = "  cached: {targets: [up/mock-gpt], cache: {enabled: true}}"
    policy = _policy(where, scope, "limits: {rpm: 3}", models).replace("alice", f"a{scope}")
    gw = gateways.start(policy, shared=False)
    try:
        client = gw.client(api_key=ALICE)
        ask = client.chat.completions.with_raw_response.create
        live = ask(model="cached", messages=QUESTION)  # type: ignore[arg-type]
        hits = [ask(model="cached", messages=QUESTION) for _ in range(2)]  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            ask(model="cached", messages=QUESTION)  # type: ignore[arg-type]
        assert live.headers["x-savepoint-cache"] == "miss"
        assert [h.headers["x-savepoint-cache"] for h in hits] == ["hit", "hit"]
        assert [h.headers["x-ratelimit-remaining-requests"] for h in hits] == ["1", "0"]
        assert hits[1].parse().choices[0].message.content == live.parse().choices[0].message.content
        assert "x-savepoint-cache" not in refused.value.response.headers
        assert gateways.mock.scope_count(scope) == 1  # only the first reached the provider
    finally:
        gw.proc.stop()

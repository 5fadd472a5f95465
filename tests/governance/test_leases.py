"""Leases on busy limits and the loop guard's written-behind counts, end to end: real gateways
on a real store, the real openai SDK. A busy limit is admitted from leases (a store call per
many requests), is still never exceeded by several gateways sharing it, and a budget's
leased tokens are given back when a gateway stops: the budget's counter ends at exactly the
tokens the provider reported."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
import redis
from harness import Gateway, Gateways, OwnRedis, mock_provider

ALICE = "sk-alice-leases-0001"
SCOPE = f"lease-{os.getpid()}-{time.monotonic_ns() % 10**8}"
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def _policy(store: str, scope: str, client: str, limits: str, extra: str = "") -> str:
    key = hashlib.sha256(ALICE.encode()).hexdigest()
    return f"""
version: 1
store: {store}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", scope=scope)}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
clients:
  {client}: {{key_sha256: {key}, {limits}}}
{extra}"""


async def _send(gw: Gateway, n: int, at_once: int, text: str = "hello") -> list[Any]:
    """`n` requests, `at_once` in flight: each raw response, or the SDK's error."""
    client = gw.async_client(api_key=ALICE, max_retries=0)
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> Any:
        async with gate:
            try:
                return await client.chat.completions.with_raw_response.create(
                    model="mock-gpt", messages=[{"role": "user", "content": f"{text} {i}"}]
                )
            except openai.APIStatusError as e:
                return e

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def _ok(results: list[Any]) -> list[Any]:
    return [r for r in results if not isinstance(r, openai.APIStatusError)]


def _script_calls(server: OwnRedis) -> int:
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def test_a_busy_limit_is_admitted_with_a_store_call_per_many_requests(
    gateways: Gateways, own_redis: OwnRedis
) -> None:
    scope = f"{SCOPE}-busy"
    store = f'{{kind: redis, url: "{own_redis.url}"}}'
    limits = "limits: {rpm: 1000000, tpm: 1000000000}"
    gw = gateways.start(_policy(store, scope, "alice", limits), shared=False)
    try:
        before = _script_calls(own_redis)
        results = asyncio.run(_send(gw, 1500, 32))
        calls = _script_calls(own_redis) - before
        assert len(_ok(results)) == 1500
        # One admission and one settlement (the token correction) each, without leases: 3,000.
        assert calls < 1500 / 4, calls
        remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in results]
        assert all(0 < left <= 1_000_000 for left in remaining)  # never past the limit
    finally:
        gw.proc.stop()


def test_a_busy_deployment_limit_is_leased_too(gateways: Gateways, own_redis: OwnRedis) -> None:
    scope = f"{SCOPE}-deployment"
    key = hashlib.sha256(ALICE.encode()).hexdigest()
    deployment = "limits: {mock-gpt: {rpm: 1000000, tpm: 1000000000}}"
    policy = f"""
version: 1
store: {{kind: redis, url: "{own_redis.url}"}}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", scope=scope, extra=deployment)}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
clients:
  alice: {{key_sha256: {key}}}
"""
    gw = gateways.start(policy, shared=False)
    try:
        before = _script_calls(own_redis)
        results = asyncio.run(_send(gw, 1500, 32))
        calls = _script_calls(own_redis) - before
        assert len(_ok(results)) == 1500
        assert gateways.mock.scope_count(scope) == 1500  # no attempt skipped as over its limit
        # An attempt's take and its token correction each, without leases: 3,000.
        assert calls < 1500 / 4, calls
    finally:
        gw.proc.stop()


def test_gateways_sharing_a_busy_limit_never_exceed_it(gateways: Gateways) -> None:
    scope = f"{SCOPE}-shared"
    store = f'{{kind: redis, url: "{SHARED_REDIS}"}}'
    policy = _policy(store, scope, f"a{scope}", "limits: {rpm: 600}")
    two = [gateways.start(policy, shared=False) for _ in range(2)]
    try:

        async def both() -> list[Any]:
            parts = await asyncio.gather(*(_send(g, 450, 32) for g in two))
            return [r for part in parts for r in part]

        started = time.monotonic()
        results = asyncio.run(both())
        refilled = int((time.monotonic() - started) * 10) + 1  # 600/min: 10 a second
        ok = _ok(results)
        # Never more than the limit; less by at most what one gateway leased and did not use
        # (a lease takes at most 1/8 of what is left) when the other ran out.
        assert 600 * 0.85 <= len(ok) <= 600 + refilled, len(ok)
        assert gateways.mock.scope_count(scope) == len(ok)  # refused ones never went upstream
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(refused) == 900 - len(ok)
        assert "over its limit of 600 requests per minute" in refused[0].message
    finally:
        for g in two:
            g.proc.stop()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_stopped_gateway_gives_back_its_lease_so_the_budget_counts_exactly_what_was_used(
    gateways: Gateways, kind: str, tmp_path: Any
) -> None:
    scope = f"{SCOPE}-budget-{kind}"
    client = f"a{scope}"
    db = tmp_path / "budget.db"
    store = f'{{kind: redis, url: "{SHARED_REDIS}"}}' if kind == "redis" else f'{{path: "{db}"}}'
    gw = gateways.start(_policy(store, scope, client, "budget: {tokens: 10000000}"), shared=False)
    results = asyncio.run(_send(gw, 300, 32))
    assert len(_ok(results)) == 300
    assert gw.proc.stop() == 0
    used = sum(line["tokens"]["total"] for line in gw.proc.access_log() if line.get("tokens"))
    assert used > 0
    key = f"b/{client}/{datetime.now(UTC):%Y-%m-%d}/tokens"
    if kind == "redis":
        counted = float(
            redis.Redis.from_url(SHARED_REDIS).hget(f"sp:{{limits}}:quota:{key}", "used")
        )
    else:
        with sqlite3.connect(db) as conn:
            (counted,) = conn.execute(
                "SELECT used FROM limit_quotas WHERE key = ?", (key,)
            ).fetchone()
    # Each request reserved its prompt plus 1,024 tokens of output, from leases of many requests'
    # worth; the unused rest of every reservation and lease is back.
    assert counted == used


def test_the_loop_guard_counts_a_request_repeated_across_gateways(gateways: Gateways) -> None:
    scope = f"{SCOPE}-guard"
    store = f'{{kind: redis, url: "{SHARED_REDIS}"}}'
    guard = "guard: {enabled: true, repeats: 3, window: 60s}\n"
    policy = _policy(store, scope, f"a{scope}", "limits: {rpm: 1000}", guard)
    two = [gateways.start(policy, shared=False) for _ in range(2)]
    try:
        flagged = []
        # The same request, first seen by one gateway, then by the other: each counts a request
        # it sees for the first time on its own and writes the count behind it.
        for gw in (two[0], two[1], two[1], two[1], two[0]):
            client = gw.client(api_key=ALICE, max_retries=0)
            answer = client.chat.completions.with_raw_response.create(
                model="mock-gpt", messages=[{"role": "user", "content": f"stuck {scope}"}]
            )
            flagged.append("x-savepoint-loop" in answer.headers)
            time.sleep(0.2)  # counts are written to the store within 50 ms
        assert flagged == [False, False, False, True, True]
    finally:
        for g in two:
            g.proc.stop()


def test_a_prompt_answered_from_the_cache_again_and_again_costs_no_store_call_each_time(
    gateways: Gateways, own_redis: OwnRedis
) -> None:
    scope = f"{SCOPE}-hot"
    store = f'{{kind: redis, url: "{own_redis.url}"}}'
    cached = "  cached: {targets: [up/mock-gpt], cache: {enabled: true}}\n"
    policy = _policy(store, scope, "alice", "limits: {rpm: 1000000}")
    gw = gateways.start(policy.replace("clients:", cached + "clients:"), shared=False)
    try:
        client = gw.client(api_key=ALICE, max_retries=0)
        before = _script_calls(own_redis)
        answers = [
            client.chat.completions.with_raw_response.create(
                model="cached", messages=[{"role": "user", "content": "the same again"}]
            )
            for _ in range(100)
        ]
        calls = _script_calls(own_redis) - before
        assert [a.headers["x-savepoint-cache"] for a in answers] == ["miss"] + ["hit"] * 99
        assert gateways.mock.scope_count(scope) == 1
        # The loop guard (20 repeats by default) counts the repeats below its threshold in
        # the store, exactly; past it they are a loop whatever else is counted.
        assert [("x-savepoint-loop" in a.headers) for a in answers] == [False] * 20 + [True] * 80
        assert calls < 40, calls
    finally:
        gw.proc.stop()

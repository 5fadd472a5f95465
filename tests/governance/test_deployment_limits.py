"""Limits of a deployment (`providers.<p>.limits`): a request over one goes elsewhere before
the provider has to answer 429, and gets the gateway's own 429 when nothing else can take it."""

from __future__ import annotations

import asyncio
import os
import time

import openai
import pytest
from harness import Gateways, mock_provider

SCOPE = f"dep-{os.getpid()}-{time.monotonic_ns() % 10**8}"
QUESTION = [{"role": "user", "content": "what is the answer?"}]


def _policy(scope: str, limits: str, knobs: str = "") -> str:
    return f"""
version: 1
store: {{path: "{{tmp}}/deployments-{scope}.db"}}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", knobs, scope=scope, extra=f"limits: {{mock-gpt: {limits}}}")}{mock_provider("backup", knobs, scope=scope + "-backup")}
models:
  chained: {{targets: [up/mock-gpt, backup/mock-gpt]}}
  alone: {{targets: [up/mock-gpt]}}
"""  # noqa: E501


def test_a_deployment_at_its_rpm_sends_the_rest_down_the_route(gateways: Gateways) -> None:
    scope = f"{SCOPE}-rpm"
    gw = gateways.start(_policy(scope, "{rpm: 5}"), shared=False)
    client = gw.client()
    targets = []
    for _ in range(12):
        raw = client.chat.completions.with_raw_response.create(model="chained", messages=QUESTION)
        targets.append(raw.headers["x-savepoint-target"])
    assert targets.count("up/mock-gpt") == 5  # (plus at most one more refilled meanwhile)
    assert targets.count("backup/mock-gpt") == 7
    assert gateways.mock.scope_count(scope) == 5  # the provider never saw the sixth
    line = gw.log_for(raw.headers["x-savepoint-request-id"])
    assert line["flags"] == ["limited:up/mock-gpt"] and line["fallback"] is True
    # a deployment with nowhere else to go: the gateway's own 429, before the provider's
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="alone", messages=QUESTION)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    assert "deployment `up/mock-gpt`" in error.message and "5 requests per minute" in error.message
    assert int(error.response.headers["retry-after"]) >= 1
    assert error.response.headers["x-should-retry"] == "true"
    assert gateways.mock.scope_count(scope) == 5
    gw.proc.stop()


def test_a_deployment_at_its_concurrency_sends_the_rest_down_the_route(gateways: Gateways) -> None:
    scope = f"{SCOPE}-conc"
    gw = gateways.start(_policy(scope, "{concurrency: 2}", "delay=0.5"), shared=False)

    async def burst() -> list[str]:
        client = gw.async_client()

        async def one() -> str:
            raw = await client.chat.completions.with_raw_response.create(
                model="chained", messages=QUESTION
            )
            return raw.headers["x-savepoint-target"]

        try:
            return await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await client.close()

    targets = asyncio.run(burst())
    assert targets.count("up/mock-gpt") == 2 and targets.count("backup/mock-gpt") == 4
    # the slots are given back: the next two go to the first deployment again
    assert asyncio.run(burst()).count("up/mock-gpt") == 2
    gw.proc.stop()


def test_deployment_token_limits_reserve_the_estimate_and_settle_to_the_usage(
    gateways: Gateways,
) -> None:
    scope = f"{SCOPE}-tpm"
    gw = gateways.start(_policy(scope, "{tpm: 3000}"), shared=False)
    client = gw.client()
    # each request reserves its prompt and an output cap of 1,000 tokens, then settles to the
    # ~20 tokens the mock reports: far more than three requests fit in 3,000 tokens a minute
    targets = [
        client.chat.completions.with_raw_response.create(
            model="chained", messages=QUESTION, max_tokens=1000
        ).headers["x-savepoint-target"]
        for _ in range(8)
    ]
    assert targets.count("up/mock-gpt") >= 6, targets
    # a request whose estimate exceeds the whole limit never fits: it goes down the route
    raw = client.chat.completions.with_raw_response.create(
        model="chained", messages=QUESTION, max_tokens=5000
    )
    assert raw.headers["x-savepoint-target"] == "backup/mock-gpt"
    gw.proc.stop()

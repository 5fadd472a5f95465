"""The retry budget stops a retry storm when a provider is down for everyone."""

from __future__ import annotations

import asyncio

import httpx
from harness import PROVIDER_KEY, Gateways

USER = [{"role": "user", "content": "hi"}]


def test_retry_budget_caps_attempts_during_a_total_outage(gateways: Gateways) -> None:
    gw = gateways.start(f"""
version: 1
store: {{path: "{{tmp}}/budget.db"}}
breakers: {{fail_max: 100000}}   # breakers off: this is about the budget alone
retries: {{attempts_per_target: 2, backoff_base: 50ms, backoff_cap: 50ms}}
providers:
  outage:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "status=503;delay=0.05;scope=budget-outage"}}
models:
  outage: {{targets: [outage/mock-gpt]}}
""")
    before = gateways.mock.scope_count("budget-outage")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{gw.base_url}/chat/completions",
                        json={"model": "outage", "messages": USER},
                    )
                    for _ in range(50)
                )
            )

    replies = asyncio.run(burst())
    assert all(r.status_code == 503 for r in replies)
    assert all(r.headers["x-should-retry"] == "false" for r in replies)
    upstream = gateways.mock.scope_count("budget-outage") - before
    print(f"outage: 50 requests, {upstream} upstream calls")
    assert 50 < upstream <= 50 * 1.2 + 3, upstream  # every request once; without a budget, 100

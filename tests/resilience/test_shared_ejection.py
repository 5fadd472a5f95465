"""Replicas sharing Redis share ejections: a dead provider found by one is skipped by all."""

from __future__ import annotations

import os
import time

import httpx
from harness import PROVIDER_KEY, Gateways

USER = [{"role": "user", "content": "hi"}]


def test_a_breaker_opened_in_one_replica_ejects_the_deployment_in_the_other(
    gateways: Gateways,
) -> None:
    dead = f"dead{os.getpid()}x{time.monotonic_ns() % 10**9}"  # fresh Redis keys each run
    policy = f"""
version: 1
store: {{kind: redis, url: "redis://127.0.0.1:6379/0"}}
retries: {{attempts_per_target: 1}}
breakers: {{fail_max: 2, reset_timeout: 30s}}
providers:
  {dead}:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "status=503;scope={dead}"}}
  backup:
    kind: openai
    base_url: {{mock}}/v1
    api_key: {PROVIDER_KEY}
    headers: {{x-mock: "scope={dead}-backup"}}
models:
  shared: {{targets: [{dead}/mock-gpt, backup/mock-gpt]}}
"""
    first = gateways.start(policy, shared=False)
    second = gateways.start(policy, shared=False)
    try:
        for _ in range(2):  # two failures in the first replica open its breaker
            r = httpx.post(f"{first.base_url}/chat/completions",
                           json={"model": "shared", "messages": USER})  # fmt: skip
            assert r.headers["x-savepoint-target"] == "backup/mock-gpt"
        assert gateways.mock.scope_count(dead) == 2

        deadline = time.monotonic() + 5
        while True:  # the second replica learns of it from Redis within about a second
            rows = httpx.get(f"{second.url}/admin/breakers").json()["breakers"]
            row = next((r for r in rows if r["target"] == f"{dead}/mock-gpt"), None)
            if row is not None and row["ejected_by_peer_s"] > 0:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        assert row["state"] == "closed"  # its own breaker never saw a failure
        assert 20 < row["ejected_by_peer_s"] <= 30

        r = httpx.post(f"{second.base_url}/chat/completions",
                       json={"model": "shared", "messages": USER})  # fmt: skip
        assert r.headers["x-savepoint-target"] == "backup/mock-gpt"
        assert r.headers["x-savepoint-attempts"] == "1"
        assert gateways.mock.scope_count(dead) == 2  # the second replica never called it
    finally:
        first.proc.stop()
        second.proc.stop()

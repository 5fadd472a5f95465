"""The usage ledger and its reports, end to end: real gateways, the real openai SDK, a mock
provider of this module's own whose `/_mock/billed` says what usage its answers reported.

The ledger must account for exactly the usage the provider reported, request by request,
through a SIGKILL of the gateway and across replicas; what a crash loses is bounded by
`usage.flush`, and measured here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from harness import ROOT, Gateway, Gateways, Mock, OwnRedis, running_mock

from gateway.decide.ledger import Entry, from_json
from gateway.stores.sqlite import SqliteStore

ALICE, BOB, ADMIN = "sk-alice-ledger-0001", "sk-bob-ledger-000002", "sk-admin-ledger-0003"
FLUSH = 0.2  # the policy's usage.flush


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def own_mock() -> Iterator[Mock]:
    """A mock of this module's own: its billed totals are this module's alone."""
    yield from running_mock()


def _policy(mock: Mock, store: str) -> str:
    def provider(name: str, knobs: str) -> str:
        header = f'\n    headers: {{x-mock: "{knobs}"}}' if knobs else ""
        return (
            f"\n  {name}:\n    kind: openai\n    base_url: {mock.url}/v1\n    api_key: sk-x{header}"
        )

    return f"""
version: 1
store: {store}
usage: {{flush: {FLUSH}}}
retries: {{attempts_per_target: 1}}
providers:{provider("up", "")}{provider("down", "status=503")}{provider("mute", "no_usage")}{provider("cut", "cut_after=3")}
models:
  gpt: {{targets: [up/gpt-4o-mini]}}
  cached: {{targets: [up/gpt-4o], cache: {{enabled: true}}}}
  broken: {{targets: [down/gpt-4o-mini]}}
  mute: {{targets: [mute/gpt-4o-mini]}}
  cut: {{targets: [cut/gpt-4o-mini]}}
  embed: {{targets: [up/text-embedding-3-small]}}
clients:
  alice: {{key_sha256: {_hash(ALICE)}}}
  bob: {{key_sha256: {_hash(BOB)}}}
admin: {{key_sha256: {_hash(ADMIN)}}}
"""  # noqa: E501


Done = dict[str, float]  # gateway request id -> when its client had the whole answer


async def _traffic(gw: Gateway, n: int, seed: int, done: Done) -> None:
    """`n` mixed requests, 16 at a time: live and streamed (usage asked for or not), cache
    hits, idempotent replays, embeddings, upstream failures; from two clients."""
    clients = [gw.async_client(api_key=k, max_retries=0, timeout=10) for k in (ALICE, BOB)]
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        client = clients[i % 2]
        kind = i % 8
        text = [{"role": "user", "content": f"question {seed}-{i} " + "word " * (i % 13)}]
        async with gate:
            try:
                if kind in (0, 1):
                    raw = await client.chat.completions.with_raw_response.create(
                        model="gpt", messages=text
                    )
                elif kind == 2:  # a stream whose client asked for usage
                    raw = await client.chat.completions.with_raw_response.create(
                        model="gpt", messages=text, stream=True,
                        stream_options={"include_usage": True},
                    )  # fmt: skip
                    async for _ in raw.parse():
                        pass
                elif kind == 3:  # a stream whose client did not: accounted all the same
                    raw = await client.chat.completions.with_raw_response.create(
                        model="gpt", messages=text, stream=True
                    )
                    async for _ in raw.parse():
                        pass
                elif kind == 4:  # a few questions asked again and again: cache hits
                    again = [{"role": "user", "content": f"cached {i % 5}"}]
                    raw = await client.chat.completions.with_raw_response.create(
                        model="cached", messages=again
                    )
                elif kind == 5:  # the same Idempotency-Key three times: one call, two replays
                    raw = await client.chat.completions.with_raw_response.create(
                        model="gpt", messages=[{"role": "user", "content": f"k{i // 24}"}],
                        extra_headers={"Idempotency-Key": f"key-{seed}-{i // 24}"},
                    )  # fmt: skip
                elif kind == 6:
                    raw = await client.embeddings.with_raw_response.create(
                        model="embed", input=f"text {seed}-{i}"
                    )
                else:  # the provider is down: a failure, no tokens
                    raw = await client.chat.completions.with_raw_response.create(
                        model="broken", messages=text
                    )
                done[raw.headers["x-savepoint-request-id"]] = time.time()
            except (openai.APIStatusError, openai.APIConnectionError):
                pass

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for c in clients:
            await c.close()


def _entries_sqlite(path: Path) -> list[Entry]:
    async def read() -> list[bytes]:
        store = SqliteStore(str(path))
        await store.open()
        try:
            return await store.usage_records(0, time.time() + 60)
        finally:
            await store.close()

    return [from_json(raw) for raw in asyncio.run(read())]


def _usage_cli(policy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "--policy", str(policy), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _billed(mock: Mock) -> dict[str, Any]:
    return dict(httpx.get(f"{mock.url}/_mock/billed").json())


def test_totals_equal_the_providers_usage_exactly_through_a_sigkill(
    own_mock: Mock, gateways: Gateways, tmp_path: Path
) -> None:
    httpx.post(f"{own_mock.url}/_mock/reset")
    db = tmp_path / "ledger.db"
    policy = _policy(own_mock, f'{{path: "{db}"}}')
    done: Done = {}
    first = gateways.start(policy, shared=False)
    asyncio.run(_traffic(first, 800, 1, done))

    async def kill_midway() -> float:  # SIGKILL while 800 more are under way
        traffic = asyncio.ensure_future(_traffic(first, 800, 2, done))
        await asyncio.sleep(1.0)
        killed = time.time()
        first.proc.signal(signal.SIGKILL)
        await traffic
        return killed

    killed = asyncio.run(kill_midway())
    first.proc.popen.wait(10)
    second = gateways.start(policy, shared=False)  # the same store: the ledger goes on
    asyncio.run(_traffic(second, 800, 3, done))
    assert second.proc.stop() == 0  # a graceful stop writes everything

    entries = _entries_sqlite(db)
    by_id = {e.request_id: e for e in entries}
    billed = _billed(own_mock)
    # Request by request, the ledger holds what the provider reported, no more, no less.
    for request_id, (prompt, completion) in billed["by_request"].items():
        e = by_id.get(request_id)
        if e is not None:
            assert (e.prompt, e.completion, e.estimated) == (prompt, completion, False), e
    live = [e for e in entries if e.outcome == "live"]
    assert {e.request_id for e in live} <= set(billed["by_request"])
    # What the crash lost: answers the provider reported but the ledger never got. Every one
    # had reached its client within the last flush interval before the kill, or never did.
    lost = set(billed["by_request"]) - set(by_id)
    late = {
        i: round(killed - done[i], 3) for i in lost if i in done and done[i] < killed - FLUSH - 0.3
    }
    assert late == {}, f"entries lost from before the crash window: {late}"
    window = max((killed - done[i] for i in lost if i in done), default=0.0)
    print(f"\nSIGKILL lost {len(lost)} of {len(billed['by_request'])} billed answers; the oldest "
          f"reached its client {window * 1000:.0f} ms before the kill")  # fmt: skip
    assert len(entries) > 1600  # the first and the last 800, and what came before the kill

    # The report's totals are the ledger's, and equal the provider's, less what was lost.
    lost_prompt = sum(billed["by_request"][i][0] for i in lost)
    lost_completion = sum(billed["by_request"][i][1] for i in lost)
    path = gateways.policy_file(policy)
    report = json.loads(_usage_cli(path, "--format", "json", "--by", "model").stdout)
    total = report["total"]
    assert report["source"] == "daily"
    assert total["prompt_tokens"] == billed["prompt_tokens"] - lost_prompt
    assert total["completion_tokens"] == billed["completion_tokens"] - lost_completion
    assert total["requests"] == len(entries)
    by_model = {g["model"]: g for g in report["groups"]}
    assert by_model["broken"]["outcomes"]["failed"] == by_model["broken"]["requests"] > 0
    assert by_model["broken"]["total_tokens"] == 0 and by_model["broken"]["success_rate"] == 0
    cached = by_model["cached"]
    assert cached["outcomes"]["cache_hit"] > 0 and cached["saved_tokens"] > 0
    assert cached["saved_usd"] > 0  # priced as gpt-4o
    assert by_model["gpt"]["outcomes"]["replay"] + by_model["gpt"]["outcomes"]["attached"] > 0
    assert by_model["gpt"]["cost_usd"] > 0 and by_model["gpt"]["latency_ms"]["p95"] is not None
    # the same numbers from the entries (a report that cuts at a time of day)
    exact = json.loads(
        _usage_cli(path, "--format", "json", "--since", "2h", "--by", "client").stdout
    )
    assert exact["source"] == "entries" and exact["total"] == total


def test_replicas_sharing_redis_account_every_request_once(
    own_mock: Mock, gateways: Gateways, tmp_path: Path
) -> None:
    server = OwnRedis()
    server.start()
    try:
        httpx.post(f"{own_mock.url}/_mock/reset")
        policy = _policy(own_mock, f'{{kind: redis, url: "{server.url}"}}')
        replicas = [gateways.start(policy, shared=False) for _ in range(2)]
        done: Done = {}

        async def both() -> None:
            await asyncio.gather(*(_traffic(gw, 400, i, done) for i, gw in enumerate(replicas)))

        asyncio.run(both())
        # the admin API of either replica reports every replica's entries once they are written
        time.sleep(FLUSH * 3)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        got = httpx.get(f"{replicas[0].url}/admin/usage", params={"group_by": "client"},
                        headers=admin).json()  # fmt: skip
        billed = _billed(own_mock)
        assert got["total"]["prompt_tokens"] == billed["prompt_tokens"]
        assert got["total"]["completion_tokens"] == billed["completion_tokens"]
        assert got["total"]["requests"] == 800
        assert [g["client"] for g in got["groups"]] == ["alice", "bob"]
        for gw in replicas:
            assert gw.proc.stop() == 0
        cli = _usage_cli(gateways.policy_file(policy), "--format", "json", "--since", "1h")
        assert json.loads(cli.stdout)["total"] == got["total"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ledger_gw(
    own_mock: Mock, gateways: Gateways, tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    db = tmp_path_factory.mktemp("ledger") / "sp.db"
    return gateways.start(_policy(own_mock, f'{{path: "{db}"}}'))


def _report(gw: Gateway, **params: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/usage", params=params,
                  headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_provider_that_reports_no_usage_is_estimated_and_says_so(ledger_gw: Gateway) -> None:
    client = ledger_gw.client(api_key=ALICE)
    text = "tell me " * 40  # 320 characters: 80 tokens at four characters a token
    chunks = client.chat.completions.create(
        model="mute", messages=[{"role": "user", "content": text}], stream=True
    )
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    group = _report(ledger_gw, model="mute", since="1h", group_by="model")["groups"][0]
    assert group["estimated_requests"] == group["requests"] == 1
    assert group["prompt_tokens"] == 80
    assert group["completion_tokens"] == -(-len(answer) // 4) > 0


def test_a_stream_cut_after_tokens_is_failed_and_its_tokens_wasted(ledger_gw: Gateway) -> None:
    client = ledger_gw.client(api_key=BOB)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="cut", messages=[{"role": "user", "content": "go"}], stream=True
        ):
            pass
    group = _report(ledger_gw, model="cut", since="1h", group_by="model")["groups"][0]
    assert group["outcomes"]["failed"] == 1
    assert group["wasted_tokens"] == group["total_tokens"] > 0  # estimated: none was reported
    assert group["estimated_requests"] == 1


def test_the_usage_report_wants_the_admin_key_and_clear_parameters(ledger_gw: Gateway) -> None:
    r = httpx.get(f"{ledger_gw.url}/admin/usage", headers={"Authorization": f"Bearer {ALICE}"})
    assert r.status_code == 401 and ALICE not in r.text
    r = httpx.get(f"{ledger_gw.url}/admin/usage", params={"since": "last week"},
                  headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "since" and "7d" in r.json()["error"]["message"]


def test_the_command_line_prints_a_table_and_csv(ledger_gw: Gateway) -> None:
    ledger_gw.client(api_key=ALICE).chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "for the table"}]
    )
    _report(ledger_gw)  # writes the gateway's queued entries
    policy = ledger_gw.proc.args[ledger_gw.proc.args.index("--policy") + 1]
    table = _usage_cli(Path(policy), "--by", "client,model")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:4] == ["client", "model", "requests", "ok"]
    assert any(line.split()[:2] == ["alice", "gpt"] for line in lines)
    assert lines[-1].startswith("total")
    csv = _usage_cli(Path(policy), "--format", "csv", "--by", "model").stdout.splitlines()
    assert csv[0].startswith("model,requests,outcome_live,")
    bad = _usage_cli(Path(policy), "--since", "fortnight")
    assert bad.returncode == 2 and "30m, 12h, 7d" in bad.stderr

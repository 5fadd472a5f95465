"""`Idempotency-Key` end to end: the real openai SDK, real gateways, the mock as the provider."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from harness import Gateway, Gateways, free_port, mock_provider

ALICE, BOB = "sk-alice-idem-00001", "sk-bob-idem-000002"
SCOPE = f"idem-{os.getpid()}-{time.monotonic_ns() % 10**8}"
QUESTION = [{"role": "user", "content": "what is the answer?"}]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _policy(store: str, scope: str, idempotency: str = "{}") -> str:
    return f"""
version: 1
store: {store}
retries: {{attempts_per_target: 1}}
idempotency: {idempotency}
providers:{mock_provider("up", "delay=0.4", scope=scope)}{mock_provider("streamy", "chunk_delay=0.05;chunks=16", scope=scope + "-s")}{mock_provider("flaky", "status=503;fail_nth=1", scope=scope + "-f")}{mock_provider("bad", "status=400", scope=scope + "-b")}{mock_provider("slow", "chunk_delay=0.1;chunks=30", scope=scope + "-slow")}{mock_provider("lazy", "delay=1.5", scope=scope + "-lazy")}{mock_provider("broken", "error_event_after=3;fail_nth=1", scope=scope + "-e")}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
  streamy: {{targets: [streamy/mock-gpt]}}
  flaky: {{targets: [flaky/mock-gpt]}}
  bad: {{targets: [bad/mock-gpt]}}
  slow: {{targets: [slow/mock-gpt]}}
  lazy: {{targets: [lazy/mock-gpt]}}
  broken: {{targets: [broken/mock-gpt]}}
clients:
  alice: {{key_sha256: {_hash(ALICE)}}}
  bob: {{key_sha256: {_hash(BOB)}}}
"""  # noqa: E501


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    return gateways.start(_policy(f'{{path: "{{tmp}}/idem-{SCOPE}.db"}}', SCOPE))


def _key() -> str:
    return str(uuid.uuid4())


def _client(gw: Gateway, key: str, api_key: str = ALICE) -> openai.OpenAI:
    return gw.client(api_key=api_key, max_retries=0, default_headers={"Idempotency-Key": key})


def _ask(client: openai.OpenAI, model: str = "mock-gpt", messages: Any = QUESTION) -> Any:
    return client.chat.completions.with_raw_response.create(model=model, messages=messages)


def _stream_text(client: openai.OpenAI, model: str = "streamy") -> tuple[str, list[str]]:
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.id for c in chunks]


async def _together(gws: list[Gateway], key: str, n: int, stream: bool) -> list[Any]:
    """`n` identical requests at once, spread over the gateways, with one key."""
    clients = [g.async_client(api_key=ALICE, max_retries=0,
                              default_headers={"Idempotency-Key": key}) for g in gws]  # fmt: skip

    async def one(i: int) -> Any:
        client = clients[i % len(clients)]
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-gpt", messages=QUESTION
            )
            return raw.headers.get("idempotent-replayed"), raw.text
        chunks = [c async for c in await client.chat.completions.create(
            model="streamy", messages=QUESTION, stream=True)]  # type: ignore[arg-type]  # fmt: skip
        return [(c.id, c.choices[0].delta.content if c.choices else None,
                 c.choices[0].finish_reason if c.choices else None) for c in chunks]  # fmt: skip

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for client in clients:
            await client.close()


def test_fifty_concurrent_duplicates_make_one_upstream_call(
    gw: Gateway, gateways: Gateways
) -> None:
    before = gateways.mock.scope_count(SCOPE)
    answers = asyncio.run(_together([gw], _key(), 50, stream=False))
    assert gateways.mock.scope_count(SCOPE) == before + 1
    assert len({body for _, body in answers}) == 1  # 50 identical bodies
    assert sum(1 for replayed, _ in answers if replayed == "true") == 49


def test_fifty_concurrent_duplicate_streams_make_one_upstream_call(
    gw: Gateway, gateways: Gateways
) -> None:
    before = gateways.mock.scope_count(SCOPE + "-s")
    streams = asyncio.run(_together([gw], _key(), 50, stream=True))
    assert gateways.mock.scope_count(SCOPE + "-s") == before + 1
    assert sum(1 for c in streams[0] if c[1]) == 16  # every content chunk
    assert any(c[2] == "stop" for c in streams[0])
    assert all(s == streams[0] for s in streams)  # the same events, in the same order


def test_a_completed_key_replays_its_answer(gw: Gateway, gateways: Gateways) -> None:
    client = _client(gw, _key())
    first = _ask(client)
    assert "idempotent-replayed" not in first.headers
    before = gateways.mock.scope_count(SCOPE)
    time.sleep(0.2)  # the record is written after the answer
    again = _ask(client)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.text == first.text
    assert again.headers["x-request-id"] == first.headers["x-request-id"]  # the same answer
    assert gateways.mock.scope_count(SCOPE) == before
    line = gw.log_for(again.headers["x-savepoint-request-id"])
    assert line["idempotency"] == "replayed" and line["saved_tokens"] > 0
    assert gw.log_for(first.headers["x-savepoint-request-id"])["idempotency"] == "executed"


def test_a_completed_stream_replays_as_the_same_stream(gw: Gateway, gateways: Gateways) -> None:
    client = _client(gw, _key())
    first = _stream_text(client)
    time.sleep(0.2)
    before = gateways.mock.scope_count(SCOPE + "-s")
    assert _stream_text(client) == first  # same text, same chunk ids
    assert gateways.mock.scope_count(SCOPE + "-s") == before


def test_the_same_key_with_another_request_is_refused_with_422(gw: Gateway) -> None:
    key = _key()
    client = _client(gw, key)
    _ask(client)
    for other in (
        lambda: _ask(client, messages=[{"role": "user", "content": "something else"}]),
        lambda: _stream_text(client, model="mock-gpt"),  # `stream` is part of the request
    ):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            other()
        assert caught.value.code == "idempotency_key_reused"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "different request" in caught.value.message


def test_keys_are_scoped_per_client(gw: Gateway, gateways: Gateways) -> None:
    key = _key()
    before = gateways.mock.scope_count(SCOPE)
    alice = _ask(_client(gw, key, ALICE))
    time.sleep(0.2)
    bob = _ask(_client(gw, key, BOB))
    assert gateways.mock.scope_count(SCOPE) == before + 2  # bob's request ran for bob
    assert "idempotent-replayed" not in bob.headers
    assert bob.parse().id != alice.parse().id


def test_a_5xx_is_not_kept_so_the_retry_runs_again(gw: Gateway, gateways: Gateways) -> None:
    client = _client(gw, _key())
    before = gateways.mock.scope_count(SCOPE + "-f")
    with pytest.raises(openai.InternalServerError):
        _ask(client, model="flaky")
    ok = _ask(client, model="flaky")  # the same key: executed again, and succeeds
    assert "idempotent-replayed" not in ok.headers
    assert ok.parse().choices[0].message.content
    time.sleep(0.2)
    assert _ask(client, model="flaky").headers["idempotent-replayed"] == "true"
    assert gateways.mock.scope_count(SCOPE + "-f") == before + 2


def test_a_deterministic_4xx_is_kept_and_replayed(gw: Gateway, gateways: Gateways) -> None:
    client = _client(gw, _key())
    before = gateways.mock.scope_count(SCOPE + "-b")
    with pytest.raises(openai.BadRequestError) as first:
        _ask(client, model="bad")
    time.sleep(0.2)
    with pytest.raises(openai.BadRequestError) as again:
        _ask(client, model="bad")
    assert again.value.response.headers["idempotent-replayed"] == "true"
    assert again.value.body == first.value.body
    assert gateways.mock.scope_count(SCOPE + "-b") == before + 1


def test_a_duplicate_gets_409_after_the_wait_budget(gateways: Gateways) -> None:
    scope = SCOPE + "-wait"
    gw = gateways.start(_policy(f'{{path: "{{tmp}}/idem-wait-{SCOPE}.db"}}', scope,
                                "{wait: 0.3s}"))  # fmt: skip
    key = _key()

    async def run() -> tuple[Any, openai.ConflictError | None]:
        first = asyncio.create_task(asyncio.to_thread(_ask, _client(gw, key), "lazy"))
        await asyncio.sleep(0.3)
        try:
            await asyncio.to_thread(_ask, _client(gw, key), "lazy")
        except openai.ConflictError as e:
            return await first, e
        return await first, None

    first, conflict = asyncio.run(run())
    assert conflict is not None, "the duplicate should have been refused with 409"
    assert conflict.code == "idempotency_request_in_progress"
    assert conflict.response.headers["retry-after"] == "1"
    assert conflict.response.headers["x-should-retry"] == "true"
    assert first.parse().choices[0].message.content  # the first one was not disturbed
    time.sleep(0.2)
    assert _ask(_client(gw, key), "lazy").headers["idempotent-replayed"] == "true"


def test_an_invalid_key_is_a_400_that_says_what_a_key_is(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(_client(gw, "x" * 300))
    assert caught.value.code == "invalid_idempotency_key"
    assert "1-255 visible ASCII" in caught.value.message


def test_a_client_that_leaves_mid_stream_gets_the_whole_answer_replayed(
    gw: Gateway, gateways: Gateways
) -> None:
    key = _key()
    before = gateways.mock.scope_count(SCOPE + "-slow")
    with _slow_stream(gw, key) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # and hang up after the first event
    time.sleep(3.5)  # the gateway reads the paid-for answer to its end (30 chunks, 0.1 s)
    text, _ = _stream_text(_client(gw, key), model="slow")
    assert len(text.split()) == 30
    assert gateways.mock.scope_count(SCOPE + "-slow") == before + 1


def _slow_stream(gw: Gateway, key: str) -> Any:
    """A streamed call to `slow` with plain httpx, to hang up (or kill) in the middle."""
    return httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {ALICE}", "Idempotency-Key": key},
        json={"model": "slow", "messages": QUESTION, "stream": True},
    )


def _own_redis(port: int) -> subprocess.Popen[bytes]:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


@pytest.fixture
def redis_port() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    procs = [_own_redis(port)]
    yield port, procs
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_duplicates_spread_over_three_gateways_on_redis_make_one_call(
    gateways: Gateways,
) -> None:
    scope = SCOPE + "-three"
    policy = _policy('{kind: redis, url: "redis://127.0.0.1:6379/0"}', scope)
    three = [gateways.start(policy, shared=False) for _ in range(3)]
    try:
        key = _key()
        answers = asyncio.run(_together(three, key, 51, stream=False))
        assert gateways.mock.scope_count(scope) == 1
        assert len({body for _, body in answers}) == 1
        time.sleep(0.2)
        for g in three:  # finished: every replica replays it, from the store or from memory
            again = _ask(_client(g, key))
            assert again.headers["idempotent-replayed"] == "true"
            assert again.text == answers[0][1]
        assert gateways.mock.scope_count(scope) == 1
        streams = asyncio.run(_together(three, _key(), 51, stream=True))
        assert gateways.mock.scope_count(scope + "-s") == 1
        assert all(s == streams[0] for s in streams)
        assert sum(1 for c in streams[0] if c[1]) == 16  # every content chunk, in each
    finally:
        for g in three:
            g.proc.stop()


def test_a_gateway_killed_mid_stream_is_taken_over_then_replayed(gateways: Gateways) -> None:
    scope = SCOPE + "-kill"
    policy = _policy(f'{{path: "{{tmp}}/idem-kill-{SCOPE}.db"}}', scope, "{lease: 3s}")
    key = _key()
    first = gateways.start(policy, shared=False)
    with _slow_stream(first, key) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen == 5:
                first.proc.signal(signal.SIGKILL)
                break
    first.proc.stop()
    assert gateways.mock.scope_count(scope + "-slow") == 1
    second = gateways.start(policy, shared=False)
    try:
        # the retry comes while the dead gateway's lease still runs (3 s): it must not start
        # streaming the dead lead's half answer, but wait for the lease to lapse, take over
        text, ids = _stream_text(_client(second, key), model="slow")
        assert len(text.split()) == 30
        assert gateways.mock.scope_count(scope + "-slow") == 2  # executed once more
        time.sleep(0.2)
        assert _stream_text(_client(second, key), model="slow") == (text, ids)  # replayed
        assert gateways.mock.scope_count(scope + "-slow") == 2
    finally:
        second.proc.stop()


def test_redis_down_keys_still_answer_and_replay_resumes_after(
    gateways: Gateways, redis_port: tuple[int, list[subprocess.Popen[bytes]]]
) -> None:
    port, procs = redis_port
    scope = SCOPE + "-outage"
    gw = gateways.start(_policy(f'{{kind: redis, url: "redis://127.0.0.1:{port}/0"}}', scope),
                        shared=False)  # fmt: skip
    try:
        procs[0].terminate()
        procs[0].wait(10)
        key = _key()
        down = _ask(_client(gw, key))
        assert down.parse().choices[0].message.content  # answered all the same
        assert down.headers["x-savepoint-degraded"] == "store"
        procs.append(_own_redis(port))
        deadline = time.monotonic() + 10
        key = _key()
        while "x-savepoint-degraded" in (back := _ask(_client(gw, key))).headers:
            assert time.monotonic() < deadline, "the gateway did not reconnect to Redis"
            key = _key()
            time.sleep(0.2)
        time.sleep(0.2)
        again = _ask(_client(gw, key))
        assert again.headers["idempotent-replayed"] == "true"
        assert again.text == back.text
    finally:
        gw.proc.stop()


def test_a_request_refused_before_executing_leaves_its_key_free(
    gw: Gateway, gateways: Gateways
) -> None:
    key = _key()
    headers = {"Idempotency-Key": key, "X-Savepoint-Run": "not a run id"}
    bad = gw.client(api_key=ALICE, max_retries=0, default_headers=headers)
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(bad)
    assert caught.value.code == "invalid_header"
    before = gateways.mock.scope_count(SCOPE)
    started = time.monotonic()
    ok = _ask(_client(gw, key))  # the key was never claimed: this executes, at once
    assert time.monotonic() - started < 2
    assert "idempotent-replayed" not in ok.headers
    assert gateways.mock.scope_count(SCOPE) == before + 1


def test_a_stream_ended_by_an_error_event_is_not_kept(gw: Gateway, gateways: Gateways) -> None:
    client = _client(gw, _key())
    before = gateways.mock.scope_count(SCOPE + "-e")
    with pytest.raises(openai.APIError, match="ended this stream with an error"):
        _stream_text(client, model="broken")  # the provider's first answer breaks off
    text, ids = _stream_text(client, model="broken")  # the same key: executed again
    assert len(text.split()) == 8
    assert gateways.mock.scope_count(SCOPE + "-e") == before + 2
    time.sleep(0.2)
    assert _stream_text(client, model="broken") == (text, ids)  # and that one is kept
    assert gateways.mock.scope_count(SCOPE + "-e") == before + 2

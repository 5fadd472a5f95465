"""The response cache, through the real SDK: hits, both directions between streamed and
not, Cache-Control, tenant isolation, what is never stored, and restarts."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import openai
import pytest
from harness import Gateway, Gateways, mock_provider

ALICE, BOB = "sk-alice-cache-0001", "sk-bob-cache-00002"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _policy(store: str, run: str) -> str:
    return f"""
version: 1
store: {store}
providers:{mock_provider("up", scope=f"cache-{run}")}{mock_provider("flaky", "status=503;fail_nth=1", scope=f"cache-flaky-{run}")}{mock_provider("short", "truncate", scope=f"cache-short-{run}")}
retries: {{attempts_per_target: 1}}
models:
  cached: {{targets: [up/mock-gpt], cache: {{enabled: true, ttl: 1h}}}}
  shared: {{targets: [up/mock-gpt], cache: {{enabled: true, shared: true}}}}
  uncached: {{targets: [up/mock-gpt]}}
  flaky: {{targets: [flaky/mock-gpt], cache: {{enabled: true}}}}
  short: {{targets: [short/mock-gpt], cache: {{enabled: true}}}}
  embed: {{targets: [up/mock-embed], cache: {{enabled: true}}}}
clients:
  alice: {{key_sha256: {_hash(ALICE)}}}
  bob: {{key_sha256: {_hash(BOB)}}}
"""  # noqa: E501


RUN = f"{os.getpid()}-{time.monotonic_ns() % 10**8}"


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    return gateways.start(_policy('{path: "{tmp}/cache-' + RUN + '.db"}', RUN))


def _calls(gateways: Gateways) -> int:
    return gateways.mock.scope_count(f"cache-{RUN}")


def _ask(gw: Gateway, question: str, key: str = ALICE, model: str = "cached", **kw: object):  # type: ignore[no-untyped-def]
    return gw.client(api_key=key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], **kw
    )


def test_an_identical_request_is_answered_from_the_cache(gw: Gateway, gateways: Gateways) -> None:
    before = _calls(gateways)
    first = _ask(gw, "q-identical")
    second = _ask(gw, "q-identical")
    assert first.headers["x-savepoint-cache"] == "miss"
    assert second.headers["x-savepoint-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert _calls(gateways) == before + 1
    line = gw.log_for(second.headers["x-savepoint-request-id"])
    assert line["cache"] == "hit" and line["saved_tokens"] == first.parse().usage.total_tokens  # type: ignore[union-attr]


def test_a_streamed_answer_is_served_whole_and_a_whole_answer_streamed(
    gw: Gateway, gateways: Gateways
) -> None:
    client = gw.client(api_key=ALICE)
    before = _calls(gateways)
    question = [{"role": "user", "content": "q-stream-first"}]
    chunks = list(client.chat.completions.create(model="cached", messages=question, stream=True))  # type: ignore[arg-type]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = _ask(gw, "q-stream-first")
    assert whole.headers["x-savepoint-cache"] == "hit"
    assert whole.parse().choices[0].message.content == streamed
    assert whole.parse().choices[0].finish_reason == "stop"
    # and the other way round, with the usage chunk only when asked for
    _ask(gw, "q-whole-first")
    again = list(client.chat.completions.create(
        model="cached", messages=[{"role": "user", "content": "q-whole-first"}], stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert again[-1].choices == [] and again[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in again if c.choices)
    assert text == _ask(gw, "q-whole-first").parse().choices[0].message.content
    assert _calls(gateways) == before + 2


def test_cache_control_refreshes_skips_or_bypasses(gw: Gateway, gateways: Gateways) -> None:
    _ask(gw, "q-control")
    before = _calls(gateways)
    refresh = _ask(gw, "q-control", extra_headers={"Cache-Control": "no-cache"})
    assert refresh.headers["x-savepoint-cache"] == "refresh"
    assert _ask(gw, "q-control").headers["x-savepoint-cache"] == "hit"
    assert _ask(gw, "q-nostore", extra_headers={"Cache-Control": "no-store"}).headers[
        "x-savepoint-cache"] == "miss"  # fmt: skip
    assert _ask(gw, "q-nostore").headers["x-savepoint-cache"] == "miss"  # it was not stored
    bypass = _ask(gw, "q-control", extra_headers={"Cache-Control": "no-cache, no-store"})
    assert bypass.headers["x-savepoint-cache"] == "bypass"
    assert _calls(gateways) == before + 4


def test_one_clients_answers_never_reach_another_unless_the_cache_is_shared(
    gw: Gateway, gateways: Gateways
) -> None:
    before = _calls(gateways)
    _ask(gw, "q-tenant", key=ALICE)
    assert _ask(gw, "q-tenant", key=BOB).headers["x-savepoint-cache"] == "miss"
    assert _calls(gateways) == before + 2
    _ask(gw, "q-tenant-shared", key=ALICE, model="shared")
    assert (
        _ask(gw, "q-tenant-shared", key=BOB, model="shared").headers["x-savepoint-cache"] == "hit"
    )
    assert _calls(gateways) == before + 3


def test_errors_and_incomplete_streams_are_never_stored(gw: Gateway, gateways: Gateways) -> None:
    with pytest.raises(openai.InternalServerError):
        _ask(gw, "q-error", model="flaky")  # request 1 of the scope fails
    ok = _ask(gw, "q-error", model="flaky")
    assert ok.headers["x-savepoint-cache"] == "miss"  # the 503 was not kept
    client = gw.client(api_key=ALICE)
    for _ in range(2):
        with pytest.raises(openai.APIError):
            question = [{"role": "user", "content": "q-trunc"}]
            list(client.chat.completions.create(model="short", messages=question, stream=True))  # type: ignore[arg-type]
    assert gateways.mock.scope_count(f"cache-short-{RUN}") == 2  # the second was not a hit


def test_embeddings_are_cached_per_encoding_format(gw: Gateway, gateways: Gateways) -> None:
    client = gw.client(api_key=ALICE)
    first = client.embeddings.with_raw_response.create(model="embed", input="hello cache")
    second = client.embeddings.with_raw_response.create(model="embed", input="hello cache")
    assert second.headers["x-savepoint-cache"] == "hit"
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    floats = client.embeddings.with_raw_response.create(
        model="embed", input="hello cache", encoding_format="float")  # fmt: skip
    assert floats.headers["x-savepoint-cache"] == "miss"


def test_uncached_models_say_nothing_about_the_cache(gw: Gateway) -> None:
    assert "x-savepoint-cache" not in _ask(gw, "q-plain", model="uncached").headers


def test_cached_answers_survive_a_gateway_restart(gateways: Gateways) -> None:
    run = f"{RUN}-restart"
    policy = _policy('{path: "{tmp}/cache-' + run + '.db"}', run)
    first = gateways.start(policy, shared=False)
    _ask(first, "q-restart")
    time.sleep(0.3)  # the write happens after the answer
    assert first.proc.stop() == 0
    second = gateways.start(policy, shared=False)
    try:
        assert _ask(second, "q-restart").headers["x-savepoint-cache"] == "hit"
    finally:
        second.proc.stop()


@pytest.fixture
def own_redis() -> Iterator[tuple[int, list[object]]]:
    import subprocess

    from harness import free_port

    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]  # fmt: skip
    procs: list[object] = [subprocess.Popen(argv, stdout=subprocess.DEVNULL)]
    _wait_port(port)
    yield port, procs
    for proc in procs:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(10)  # type: ignore[attr-defined]


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_redis_outage_degrades_to_misses_and_caching_resumes(
    gateways: Gateways, own_redis: tuple[int, list[object]]
) -> None:
    import subprocess

    port, procs = own_redis
    run = f"{RUN}-redis"
    gw = gateways.start(_policy(f'{{kind: redis, url: "redis://127.0.0.1:{port}/0"}}', run),
                        shared=False)  # fmt: skip
    try:
        _ask(gw, "q-redis")
        time.sleep(0.3)
        assert _ask(gw, "q-redis").headers["x-savepoint-cache"] == "hit"
        procs[0].terminate()  # type: ignore[attr-defined]
        procs[0].wait(10)  # type: ignore[attr-defined]
        down = _ask(gw, "q-redis")
        assert down.parse().choices[0].message.content  # still answered
        assert down.headers["x-savepoint-cache"] == "miss"
        assert down.headers["x-savepoint-degraded"] == "store"
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        _wait_port(port)
        deadline = time.monotonic() + 10
        while "x-savepoint-degraded" in _ask(gw, "q-redis-back").headers:  # reconnects itself
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.3)
        assert _ask(gw, "q-redis-back").headers["x-savepoint-cache"] == "hit"
        assert '"event":"store_unavailable"' in gw.proc.stderr()
    finally:
        gw.proc.stop()

"""Durable agent runs: a restarted agent replays the steps it paid for, then goes on live."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import openai
import pytest
from harness import ROOT, Gateway, Gateways, mock_provider

ALICE, BOB = "sk-alice-runs-00001", "sk-bob-runs-000002"
SCOPE = f"runs-{os.getpid()}-{time.monotonic_ns() % 10**8}"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    return gateways.start(f"""
version: 1
store: {{path: "{{tmp}}/runs-{SCOPE}.db"}}
retries: {{attempts_per_target: 1}}
providers:{mock_provider("up", scope=SCOPE)}{mock_provider("flaky", "status=503;fail_nth=1", scope=SCOPE + "-flaky")}{mock_provider("slow", "chunk_delay=0.1;chunks=20", scope=SCOPE + "-slow")}{mock_provider("lazy", "delay=1", scope=SCOPE + "-lazy")}
models:
  mock-gpt: {{targets: [up/mock-gpt]}}
  flaky: {{targets: [flaky/mock-gpt]}}
  slow: {{targets: [slow/mock-gpt]}}
  lazy: {{targets: [lazy/mock-gpt]}}
clients:
  alice: {{key_sha256: {_hash(ALICE)}}}
  bob: {{key_sha256: {_hash(BOB)}}}
admin: {{key_sha256: {_hash("sp-admin-runs")}}}
""")  # noqa: E501


def _calls(gateways: Gateways, scope: str = SCOPE) -> int:
    return gateways.mock.scope_count(scope)


def _client(gw: Gateway, run: str, attempt: str | None = None, key: str = ALICE) -> openai.OpenAI:
    headers = {"X-Savepoint-Run": run}
    if attempt:
        headers["X-Savepoint-Attempt"] = attempt
    return gw.client(api_key=key, default_headers=headers)


def _ask(client: openai.OpenAI, question: str, model: str = "mock-gpt") -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}]
    )


def _settle() -> None:
    time.sleep(0.3)  # journal writes happen after the answer


def test_a_restarted_run_replays_paid_steps_then_continues_live(
    gw: Gateway, gateways: Gateways
) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    first = _client(gw, run, attempt="a1")
    answers = [_ask(first, f"step {i}").parse().choices[0].message.content for i in range(3)]
    _settle()
    before = _calls(gateways)
    again = _client(gw, run, attempt="a2")  # the agent crashed and started again
    raws = [_ask(again, f"step {i}") for i in range(3)]
    assert [r.parse().choices[0].message.content for r in raws] == answers
    assert all(r.headers["x-savepoint-replayed"] == "true" for r in raws)
    assert _calls(gateways) == before  # not a single token paid again
    new = _ask(again, "step 3")
    assert "x-savepoint-replayed" not in new.headers
    assert _calls(gateways) == before + 1
    line = gw.log_for(raws[0].headers["x-savepoint-request-id"])
    assert line["cache"] == "replay" and line["saved_tokens"] > 0 and line["run"] == f"alice/{run}"


def test_identical_requests_in_one_attempt_are_separate_steps(
    gw: Gateway, gateways: Gateways
) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    before = _calls(gateways)
    first = _client(gw, run, attempt="a1")
    _ask(first, "poll")
    _ask(first, "poll")  # the agent asks the same thing twice: two steps, both live
    assert _calls(gateways) == before + 2
    _settle()
    again = _client(gw, run, attempt="a2")
    assert _ask(again, "poll").headers["x-savepoint-replayed"] == "true"
    assert _ask(again, "poll").headers["x-savepoint-replayed"] == "true"
    assert "x-savepoint-replayed" not in _ask(again, "poll").headers  # a third: live
    assert _calls(gateways) == before + 3


def test_without_an_attempt_an_identical_request_replays_the_first_answer(
    gw: Gateway, gateways: Gateways
) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    client = _client(gw, run)
    before = _calls(gateways)
    _ask(client, "same")
    _settle()
    assert _ask(client, "same").headers["x-savepoint-replayed"] == "true"
    assert _calls(gateways) == before + 1


def test_a_streamed_step_replays_as_a_stream(gw: Gateway, gateways: Gateways) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    question = [{"role": "user", "content": "stream me"}]
    first = _client(gw, run, attempt="a1")
    live = "".join(c.choices[0].delta.content or "" for c in first.chat.completions.create(
        model="mock-gpt", messages=question, stream=True) if c.choices)  # type: ignore[arg-type]  # fmt: skip
    _settle()
    before = _calls(gateways)
    again = _client(gw, run, attempt="a2")
    replayed = "".join(c.choices[0].delta.content or "" for c in again.chat.completions.create(
        model="mock-gpt", messages=question, stream=True) if c.choices)  # type: ignore[arg-type]  # fmt: skip
    assert replayed == live
    assert _calls(gateways) == before


def test_another_client_with_the_same_run_id_gets_nothing_of_it(
    gw: Gateway, gateways: Gateways
) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    _ask(_client(gw, run, key=ALICE), "secret plans")
    _settle()
    before = _calls(gateways)
    bob = _ask(_client(gw, run, key=BOB), "secret plans")
    assert "x-savepoint-replayed" not in bob.headers
    assert _calls(gateways) == before + 1


def test_a_failed_step_is_not_journaled_and_runs_again(gw: Gateway, gateways: Gateways) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    client = _client(gw, run, attempt="a1")
    with pytest.raises(openai.InternalServerError):
        _ask(client, "fragile", model="flaky")
    _settle()
    retry = _ask(_client(gw, run, attempt="a2"), "fragile", model="flaky")
    assert "x-savepoint-replayed" not in retry.headers
    assert retry.parse().choices[0].message.content


def test_admin_shows_a_runs_steps_and_drops_it(gw: Gateway, gateways: Gateways) -> None:
    run = f"r-{uuid.uuid4().hex[:8]}"
    _ask(_client(gw, run, attempt="a1"), "one")
    _ask(_client(gw, run, attempt="a1"), "two")
    _settle()
    _ask(_client(gw, run, attempt="a2"), "one")
    _settle()
    admin = {"Authorization": "Bearer sp-admin-runs"}
    url = f"{gw.url}/admin/runs/{run}?client=alice"
    steps = httpx.get(url, headers=admin).json()["steps"]
    assert [(s["model"], s["occurrence"]) for s in steps] == [("mock-gpt", 0), ("mock-gpt", 0)]
    assert all(s["tokens"] > 0 and s["time"] > 0 for s in steps)  # the replay added no step
    assert httpx.get(url).status_code == 401
    assert httpx.delete(url, headers=admin).json()["dropped_steps"] == 2
    assert httpx.get(url, headers=admin).status_code == 404
    before = _calls(gateways)
    _ask(_client(gw, run, attempt="a3"), "one")  # dropped: live again
    assert _calls(gateways) == before + 1


def test_a_bad_run_header_is_a_400_naming_it(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(_client(gw, "no spaces allowed"), "x")
    assert caught.value.param == "X-Savepoint-Run"


def test_an_agent_killed_three_times_pays_what_an_uninterrupted_run_pays(
    gw: Gateway, gateways: Gateways
) -> None:
    """examples/crash_agent.py as a test: SIGKILL-style exits at random steps, restarts."""
    env = {**os.environ, "SAVEPOINT_KEY": ALICE}
    argv = [sys.executable, str(ROOT / "examples" / "crash_agent.py"), "demo",
            "--base-url", gw.base_url, "--crashes", "3", "--seed", "11"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["with run id"]["calls"] == report["uninterrupted"]["calls"] == 8
    assert report["without run id"]["calls"] > report["uninterrupted"]["calls"]


def test_a_client_that_crashes_mid_stream_gets_the_whole_answer_replayed(
    gw: Gateway, gateways: Gateways
) -> None:
    """Detach and complete: the gateway reads the paid-for stream to its end and journals it."""
    run = f"r-{uuid.uuid4().hex[:8]}"
    headers = {"X-Savepoint-Run": run, "X-Savepoint-Attempt": "a1",
               "Authorization": f"Bearer {ALICE}"}  # fmt: skip
    body = {"model": "slow", "messages": [{"role": "user", "content": "long"}], "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, headers=headers) as r:
        first = r.headers["x-savepoint-request-id"]
        lines = r.iter_lines()
        next(lines)
        next(lines)  # the agent dies two events in: 18 chunks still to come
    time.sleep(2.8)  # 20 chunks x 0.1 s, read on by the gateway
    # logged (and accounted) when the call it paid for ended, not when its client left
    (line,) = [x for x in gw.proc.access_log() if x.get("request_id") == first and "status" in x]
    assert line["detached"] is True and line["status"] == 200
    assert line["tokens"]["completion"] == 20
    assert line["latency_ms"] > 1900
    calls = _calls(gateways, SCOPE + "-slow")
    again = _client(gw, run, attempt="a2")
    chunks = list(again.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "long"}], stream=True))  # type: ignore[arg-type]  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20  # the whole answer, not the two chunks the agent saw
    assert _calls(gateways, SCOPE + "-slow") == calls  # replayed, not paid again
    assert '"event":"detached"' in gw.proc.stderr()


def test_a_call_whose_client_gave_up_is_logged_when_it_ends_with_what_it_cost(gw: Gateway) -> None:
    """The client times out before the answer: the handler is cancelled, the call goes on
    (detached) and is logged, counted and accounted once it ends, not as a 499."""
    run = f"r-{uuid.uuid4().hex[:8]}"
    headers = {"X-Savepoint-Run": run, "Authorization": f"Bearer {ALICE}"}
    body = {"model": "lazy", "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(httpx.ReadTimeout):  # no x-stainless-read-timeout: the gateway waits on
        httpx.post(f"{gw.base_url}/chat/completions", json=body, headers=headers, timeout=0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            x for x in gw.proc.access_log() if x.get("run") == f"alice/{run}" and "status" in x
        ]
        if lines:
            break
        time.sleep(0.1)
    (line,) = lines
    assert line["detached"] is True and line["status"] == 200
    assert line["tokens"]["total"] > 0 and line["latency_ms"] >= 1000

"""A small tool-using agent that survives crashes, thanks to Savepoint's durable runs.

The agent answers a few questions with the plain `openai` SDK; for each, the model calls a
`lookup` tool, the agent runs it and sends the result back, and the model answers. Every
call carries `X-Savepoint-Run` (the same id on every restart) and `X-Savepoint-Attempt` (new
on every process start). Kill it at any step and start it again: the steps it had paid for
come back from the gateway's journal at no token cost, and it carries on live from there.

    # one agent process (what a real agent does):
    python examples/crash_agent.py agent --base-url http://127.0.0.1:8080/v1 --run-id demo-1

    # the demonstration: start the gateway on its default policy first (`savepoint serve`),
    # then crash the agent at random steps, three times, with and without a run id:
    python examples/crash_agent.py demo --base-url http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import openai

QUESTIONS = ["Where is Savepoint's journal kept?", "What does a crash cost?",
             "How are steps matched?", "What is never replayed?"]  # fmt: skip
TOOLS: list[Any] = [{
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a topic up in the team's notes.",
        "parameters": {"type": "object", "properties": {"topic": {"type": "string"}},
                       "required": ["topic"]},
    },
}]  # fmt: skip


def lookup(topic: str) -> str:
    return f"notes on {topic}: deterministic, so a restarted agent asks the same thing"


def agent(
    base_url: str, model: str, run_id: str | None, crash_after: int | None, ledger: str | None
) -> dict[str, int]:
    headers = {"X-Savepoint-Attempt": uuid.uuid4().hex}
    if run_id:
        headers["X-Savepoint-Run"] = run_id
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("SAVEPOINT_KEY", "unused"),
                           default_headers=headers, max_retries=0)  # fmt: skip
    calls = paid = replayed = 0
    for question in QUESTIONS:
        messages: list[Any] = [{"role": "user", "content": question}]
        while True:
            if crash_after is not None and calls == crash_after:
                os._exit(3)  # the crash: no cleanup, no goodbye
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, tools=TOOLS
            )
            reply, calls = raw.parse(), calls + 1
            if raw.headers.get("x-savepoint-replayed") == "true":
                replayed += 1
            elif reply.usage is not None:
                paid += reply.usage.total_tokens
                if ledger:  # written as it is paid: a crash cannot lose it
                    with open(ledger, "a") as f:
                        f.write(f"{reply.usage.total_tokens}\n")
            message = reply.choices[0].message
            if not message.tool_calls:
                break
            messages.append(message.model_dump(exclude_none=True))
            for call in message.tool_calls:
                topic = json.loads(call.function.arguments).get("topic", "")  # type: ignore[union-attr]
                messages.append({"role": "tool", "tool_call_id": call.id, "content": lookup(topic)})
    return {"model_calls": calls, "tokens_paid": paid, "replayed": replayed}


def run_agent(
    base_url: str, model: str, run_id: str | None, crash_after: int | None
) -> tuple[int, int]:
    """One agent process: (upstream calls, tokens) it paid for, finished or crashed."""
    with tempfile.NamedTemporaryFile(prefix="savepoint-ledger-") as ledger:
        argv = [sys.executable, __file__, "agent", "--base-url", base_url, "--model", model,
                "--ledger", ledger.name]  # fmt: skip
        if run_id:
            argv += ["--run-id", run_id]
        if crash_after is not None:
            argv += ["--crash-after", str(crash_after)]
        subprocess.run(argv, capture_output=True, text=True, timeout=120)
        paid = [int(line) for line in Path(ledger.name).read_text().split()]
        return len(paid), sum(paid)


def demo(base_url: str, model: str, crashes: int, seed: int) -> dict[str, Any]:
    """Upstream calls and tokens paid for one uninterrupted run, and for a run that crashes
    `crashes` times at random steps and is restarted each time, with and without a run id."""
    rng = random.Random(seed)
    steps = 2 * len(QUESTIONS)  # a tool call and an answer per question
    crash_points = sorted(rng.sample(range(1, steps), crashes))
    calls, tokens = run_agent(base_url, model, None, None)
    report: dict[str, Any] = {"crash points": crash_points,
                              "uninterrupted": {"calls": calls, "tokens": tokens}}  # fmt: skip
    for label, run_id in (("without run id", None), ("with run id", f"demo-{uuid.uuid4().hex}")):
        runs = [run_agent(base_url, model, run_id, p) for p in [*crash_points, None]]
        paid_calls, paid_tokens = sum(c for c, _ in runs), sum(t for _, t in runs)
        report[label] = {"calls": paid_calls, "tokens": paid_tokens,
                         "tokens / uninterrupted": round(paid_tokens / tokens, 2)}  # fmt: skip
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["agent", "demo"])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default="mock-gpt")
    parser.add_argument("--run-id")
    parser.add_argument("--crash-after", type=int, help="exit abruptly before this model call")
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ledger", help="append the tokens of every paid call to this file")
    args = parser.parse_args()
    if args.mode == "agent":
        result = agent(args.base_url, args.model, args.run_id, args.crash_after, args.ledger)
        print(json.dumps(result))
    else:
        print(json.dumps(demo(args.base_url, args.model, args.crashes, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

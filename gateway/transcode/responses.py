"""Responses API: typed events <-> one `response` object.

Assembling takes the `response` of `response.completed`: OpenAI puts the whole answer there.
When that response's `output` is empty but `response.output_item.done` events carried items
(some compatible servers send a bare terminal event), those items are the output.

Disassembling emits what OpenAI emits for the same response: `response.created` and
`response.in_progress` (the response with `status: in_progress`, no output, no usage), then
per output item `response.output_item.added` (the item in progress: no content / arguments
yet), for a message per content part `response.content_part.added` (empty part), text or
refusal deltas in pieces, their `.done`, `response.content_part.done`; for a function call
one `response.function_call_arguments.delta` with all the arguments and `.done`; then
`response.output_item.done` with the whole item, and the terminal event matching the status
(`response.completed`, `.incomplete` or `.failed`) with the whole response.
`sequence_number` counts from 0. Other item types (reasoning, tool calls run by OpenAI) get
only their `added` / `done` pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson

from .wire import pieces, typed_event

_TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
_FAILED = frozenset({"error", "response.failed", "response.incomplete"})

Emit = Callable[..., None]


class Assembly:
    """The events folded as they come: the finished items, then the terminal response."""

    __slots__ = ("failed", "items", "response")

    def __init__(self) -> None:
        self.items: dict[int, Any] = {}
        self.response: dict[str, Any] | None = None  # set by response.completed: the end
        self.failed = False

    def add(self, name: str, data: bytes) -> None:
        """One event; raises orjson.JSONDecodeError or a shape error on a broken one."""
        if self.response is not None or self.failed:
            return
        event = orjson.loads(data)
        if not isinstance(event, dict):
            self.failed = True
            return
        kind = event.get("type") or name
        if kind in _FAILED or name in _FAILED:
            self.failed = True
        elif kind == "response.output_item.done":
            self.items[event["output_index"]] = event["item"]
        elif kind == "response.completed":
            response = event["response"]
            if not isinstance(response, dict) or response.get("status") != "completed":
                self.failed = True
                return
            if not response.get("output") and self.items:
                response["output"] = [self.items[i] for i in sorted(self.items)]
            self.response, self.items = response, {}

    def body(self) -> dict[str, Any] | None:
        return None if self.failed else self.response  # None: no terminal event


def disassemble(doc: dict[str, Any]) -> bytes:
    terminal = _TERMINAL.get(doc["status"])
    if terminal is None:
        raise ValueError(f"a response with status {doc['status']!r} has not ended")
    numbers = itertools.count()
    out: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append(typed_event({"type": kind, "sequence_number": next(numbers), **fields}))

    started = {**doc, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in doc:
        started["completed_at"] = None
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(doc["output"]):
        _item(emit, index, item)
    emit(terminal, response=doc)
    return b"".join(out)


def _item(emit: Emit, index: int, item: dict[str, Any]) -> None:
    kind = item["type"]
    opened = {**item, "status": "in_progress"} if "status" in item else dict(item)
    at = {"item_id": item.get("id", ""), "output_index": index}
    if kind == "message":
        emit("response.output_item.added", output_index=index, item={**opened, "content": []})
        for position, part in enumerate(item["content"]):
            _part(emit, at, position, part)
    elif kind == "function_call":
        emit("response.output_item.added", output_index=index, item={**opened, "arguments": ""})
        if item["arguments"]:
            emit("response.function_call_arguments.delta", **at, delta=item["arguments"])
        emit(
            "response.function_call_arguments.done",
            **at,
            name=item["name"],
            arguments=item["arguments"],
        )
    else:
        emit("response.output_item.added", output_index=index, item=opened)
    emit("response.output_item.done", output_index=index, item=item)


def _part(emit: Emit, at: dict[str, Any], position: int, part: dict[str, Any]) -> None:
    where = {**at, "content_index": position}
    kind = part["type"]
    if kind == "output_text":
        empty = {**part, "text": "", "annotations": [], "logprobs": []}
        emit("response.content_part.added", **where, part=empty)
        for piece in pieces(part["text"]):
            emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        logprobs = part.get("logprobs") or []
        emit("response.output_text.done", **where, text=part["text"], logprobs=logprobs)
    elif kind == "refusal":
        emit("response.content_part.added", **where, part={**part, "refusal": ""})
        for piece in pieces(part["refusal"]):
            emit("response.refusal.delta", **where, delta=piece)
        emit("response.refusal.done", **where, refusal=part["refusal"])
    else:
        emit("response.content_part.added", **where, part=part)
    emit("response.content_part.done", **where, part=part)

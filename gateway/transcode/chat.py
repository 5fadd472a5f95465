"""Chat Completions and legacy Completions: `data:` chunks <-> one `chat.completion` /
`text_completion` body.

Assembling: content, refusal and (legacy) text deltas concatenate per choice `index`; tool
calls assemble by their own `index` (the first fragment brings id, type and name, later ones
append arguments); list fields of `logprobs` concatenate; usage comes from the chunk that has
it. A message's `content` is None when no delta carried text, or when it carried only "" and
the message has tool calls (what OpenAI returns non-streamed for a tool call).

Disassembling emits choices one after another, each as: a role chunk (`content: ""`, or
None when the body's content is None), content pieces, refusal pieces, one delta per tool call
with its full arguments, then a chunk with an empty delta, the `finish_reason` and the choice's
logprobs. With `include_usage`, every chunk has `usage: null` and a last chunk with
`choices: []` has the usage (if the body has any); without, no chunk has a `usage` key.
"""

from __future__ import annotations

from typing import Any

import orjson

from .wire import DONE, data_event, pieces

_EXTRA = ("service_tier", "system_fingerprint")


class _Choice:
    """What the chunks have said so far about one choice."""

    __slots__ = ("annotations", "finish", "logprobs", "refusal", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] | None = None  # None: no chunk carried text
        self.refusal: list[str] | None = None
        self.tools: dict[int, tuple[dict[str, Any], list[str]]] = {}  # index -> call, arguments
        self.annotations: list[Any] = []
        self.finish: str | None = None
        self.logprobs: dict[str, Any] | None = None

    def add(self, choice: dict[str, Any], legacy: bool) -> None:
        delta = choice if legacy else choice.get("delta") or {}
        text = delta.get("text" if legacy else "content")
        if isinstance(text, str):
            self.text = _joined(self.text if self.text is not None else [], text)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self.refusal = _joined(self.refusal if self.refusal is not None else [], refusal)
        for fragment in delta.get("tool_calls") or ():
            self._tool(fragment)
        self.annotations.extend(delta.get("annotations") or ())
        self.finish = choice.get("finish_reason") or self.finish
        self._logprobs(choice.get("logprobs"))

    def _tool(self, fragment: dict[str, Any]) -> None:
        function = fragment.get("function") or {}
        index = fragment["index"]
        if index not in self.tools:
            call: dict[str, Any] = {"id": None, "type": "function"}
            call["function"] = {"name": None, "arguments": ""}
            self.tools[index] = (call, [])
        call, arguments = self.tools[index]
        call["id"] = fragment.get("id") or call["id"]
        call["type"] = fragment.get("type") or call["type"]
        call["function"]["name"] = call["function"]["name"] or function.get("name")
        arguments.append(function.get("arguments") or "")

    def _logprobs(self, more: object) -> None:
        if not isinstance(more, dict):
            return
        merged = self.logprobs = self.logprobs or {}
        for key, value in more.items():
            have = merged.get(key)
            if isinstance(have, list) and isinstance(value, list):
                have.extend(value)
            elif have is None:
                merged[key] = list(value) if isinstance(value, list) else value

    def body(self, index: int, legacy: bool) -> dict[str, Any] | None:
        """The choice as the non-streamed body has it; None if it never finished."""
        if self.finish is None:
            return None
        text = None if self.text is None else "".join(self.text)
        if legacy:
            return _choice(index, "text", text or "", self.finish, self.logprobs)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
            message["content"] = text or None
        message["annotations"] = self.annotations
        if self.tools:
            calls = [self._call(position) for position in sorted(self.tools)]
            if any(call is None for call in calls):
                return None
            message["tool_calls"] = calls
            message["content"] = text or None
        return _choice(index, "message", message, self.finish, self.logprobs)

    def _call(self, position: int) -> dict[str, Any] | None:
        call, arguments = self.tools[position]
        if not isinstance(call["id"], str) or not isinstance(call["function"]["name"], str):
            return None  # no fragment named the call: the stream is broken
        call["function"]["arguments"] = "".join(arguments)
        return call


def _joined(pieces: list[str], more: str) -> list[str]:
    """`pieces` + `more`, joined into one string every 32 pieces: a stream held open keeps
    its text, not a small string object (about 50 bytes of overhead) per chunk."""
    pieces.append(more)
    return ["".join(pieces)] if len(pieces) >= 32 else pieces


def _choice(index: int, key: str, value: Any, finish: str | None, logprobs: Any) -> dict[str, Any]:
    return {"index": index, key: value, "logprobs": logprobs, "finish_reason": finish}


class Assembly:
    """The chunks folded as they come: what the body needs of them, not the chunks."""

    __slots__ = ("choices", "done", "extra", "failed", "head", "legacy", "usage")

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.head: dict[str, Any] | None = None  # id, created, model of the first chunk
        self.extra: dict[str, Any] = {}
        self.usage: Any = None
        self.choices: dict[int, _Choice] = {}
        self.done = False  # [DONE] came: later events are not part of the answer
        self.failed = False

    def add(self, name: str, data: bytes) -> None:
        """One event; raises orjson.JSONDecodeError or a shape error on a broken one."""
        if self.done or self.failed:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        chunk = orjson.loads(data)
        if name == "error" or not isinstance(chunk, dict) or chunk.get("error") is not None:
            self.failed = True
            return
        if self.head is None and chunk:
            self.head = {key: chunk[key] for key in ("id", "created", "model")}
        self.extra.update((k, chunk[k]) for k in _EXTRA if chunk.get(k) is not None)
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            self.choices.setdefault(choice["index"], _Choice()).add(choice, self.legacy)

    def body(self) -> dict[str, Any] | None:
        if self.failed or not self.done:  # no [DONE]: the stream did not end
            return None
        if self.head is None or not self.choices:
            return None
        bodies = [self.choices[i].body(i, self.legacy) for i in sorted(self.choices)]
        if any(b is None for b in bodies):
            return None
        doc = {
            "id": self.head["id"],
            "object": "text_completion" if self.legacy else "chat.completion",
            "created": self.head["created"],
            "model": self.head["model"],
            "choices": bodies,
            **self.extra,
        }
        if self.usage is not None:
            doc["usage"] = self.usage
        return doc


def disassemble(doc: dict[str, Any], include_usage: bool, legacy: bool) -> bytes:
    base = {
        "id": doc["id"],
        "object": "text_completion" if legacy else "chat.completion.chunk",
        "created": doc["created"],
        "model": doc["model"],
        **{k: doc[k] for k in _EXTRA if k in doc},
    }
    key = "text" if legacy else "delta"
    out: list[bytes] = []

    def emit(choices: list[dict[str, Any]], usage: object = None) -> None:
        payload = {**base, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        out.append(data_event(payload))

    for choice in doc["choices"]:
        index = choice["index"]
        changes = pieces(choice["text"]) if legacy else _deltas(choice["message"])
        for change in changes:
            emit([_choice(index, key, change, None, None)])
        finish, logprobs = choice["finish_reason"], choice.get("logprobs")
        emit([_choice(index, key, "" if legacy else {}, finish, logprobs)])
    if include_usage and doc.get("usage") is not None:
        emit([], doc["usage"])
    out.append(DONE)
    return b"".join(out)


def _deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": "" if isinstance(content, str) else None}
    ]
    deltas += ({"content": piece} for piece in pieces(content or ""))
    deltas += ({"refusal": piece} for piece in pieces(message.get("refusal") or ""))
    if message.get("annotations"):
        deltas.append({"annotations": message["annotations"]})
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
        fragment = {"index": position, "id": call["id"], "type": call["type"], "function": function}
        deltas.append({"tool_calls": [fragment]})
    return deltas

"""Deterministic answer content: words from a hash of the conversation, JSON placeholders
that satisfy a JSON schema (tool arguments, structured outputs), token estimates.

Pure functions of their arguments, stable across machines and Python versions (SHAKE-256,
not `hash()`): identical requests get identical text, different ones different text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

_HEADS = tuple(c + v for c in "bdkp" for v in "aeio")  # 16 syllables
_TAILS = tuple(c + v for c in "lmnr" for v in "aiou")  # 16 other syllables
VOCABULARY: tuple[str, ...] = tuple(h + t for h in _HEADS for t in _TAILS)  # 256 distinct words
_MAX_DEPTH = 8


def word_pieces(seed: bytes, count: int) -> tuple[str, ...]:
    """`count` words picked by the hash of `seed`; each but the first has a leading space."""
    picks = hashlib.shake_256(seed).digest(count) if count else b""
    return tuple((" " if i else "") + VOCABULARY[b] for i, b in enumerate(picks))


def split_evenly(text: str, parts: int) -> tuple[str, ...]:
    """`text` in min(parts, len(text)) pieces of near-equal length; one piece if empty."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return tuple(pieces)


def estimate_tokens(nbytes: int) -> int:
    """About four bytes of JSON per token, at least one."""
    return max(1, (nbytes + 3) // 4)


def placeholder(schema: object, root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that satisfies the common JSON-schema shapes: enum, const, $ref, anyOf, objects
    (their required properties), arrays (minItems), strings, numbers, booleans, null."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return "mock"
    root = schema if root is None else root
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(schema.get("$ref"), str):
        return placeholder(_resolve(schema["$ref"], root), root, depth + 1)
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            usable = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return placeholder((usable or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        names = required if isinstance(required, list) else []
        return {
            n: placeholder(properties.get(n), root, depth + 1) for n in names if isinstance(n, str)
        }
    if kind == "array":
        count = schema.get("minItems")
        count = count if isinstance(count, int) and 0 < count <= 16 else 0
        return [placeholder(schema.get("items"), root, depth + 1) for _ in range(count)]
    return _SCALARS.get(kind if isinstance(kind, str) else "string", "mock")


_SCALARS: dict[str, Any] = {
    "string": "mock",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "null": None,
}


def _resolve(ref: str, root: Mapping[str, Any]) -> object:
    if not ref.startswith("#/"):
        return None
    node: object = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def json_text(schema: object) -> str:
    """Compact JSON text of `placeholder(schema)`, as a model writes tool arguments."""
    return orjson.dumps(placeholder(schema)).decode()


def answer_pieces(
    seed: bytes, chunks: int, kind: object = "text", schema: object = None
) -> tuple[str, ...]:
    """The answer's content chunks: words, or JSON for `json_object` / `json_schema` formats."""
    if kind == "json_schema":
        return split_evenly(json_text(schema), chunks)
    words = word_pieces(seed, chunks)
    if kind == "json_object":
        return split_evenly(orjson.dumps({"answer": "".join(words)}).decode(), chunks)
    return words

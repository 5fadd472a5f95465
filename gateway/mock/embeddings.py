"""`POST /v1/embeddings`: deterministic unit vectors, one per input.

`input` is a string, strings, a token list or token lists. Each vector is drawn from
SHAKE-256 of its input, normalised to length 1 and rounded to float32, so `float` lists and
`base64` (little-endian float32, what the openai SDK asks for by default) carry the same
numbers. Its size is the request's `dimensions`, else the `dimensions` knob.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

from .plan import Body, Call, InvalidRequest
from .synth import estimate_tokens

_MAX_DIMENSIONS = 16_384


def _inputs(value: object) -> list[tuple[bytes, int]]:
    """(hash key, token count) per input; token lists hash apart from the same digits as text."""
    if isinstance(value, str):
        return [(value.encode(), estimate_tokens(len(value.encode())))]
    if isinstance(value, list) and value:
        if all(isinstance(t, int) for t in value):
            return [(b"tokens:" + orjson.dumps(value), len(value))]
        if all(isinstance(s, str) for s in value):
            return [(s.encode(), estimate_tokens(len(s.encode()))) for s in value]
        if all(isinstance(ts, list) and ts and all(isinstance(t, int) for t in ts) for ts in value):
            return [(b"tokens:" + orjson.dumps(ts), len(ts)) for ts in value]
    raise InvalidRequest(
        "'input' must be a string, strings, a token array or token arrays, and not empty.",
        "input",
    )


def vector(key: bytes, dimensions: int) -> bytes:
    """A unit vector as little-endian float32 bytes."""
    raw = struct.unpack(f"<{dimensions}H", hashlib.shake_256(key).digest(2 * dimensions))
    values = [u / 32767.5 - 1.0 for u in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in values))


def plan_embeddings(call: Call) -> Body:
    body = call.body
    dimensions = body.get("dimensions")
    dimensions = call.dimensions if dimensions is None else dimensions
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 0 < dimensions <= _MAX_DIMENSIONS
    ):
        raise InvalidRequest(f"'dimensions' must be an integer 1-{_MAX_DIMENSIONS}.", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, (key, count) in enumerate(_inputs(body.get("input"))):
        packed = vector(key, dimensions)
        embedding: object = (
            base64.b64encode(packed).decode()
            if encoding == "base64"
            else list(struct.unpack(f"<{dimensions}f", packed))
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens += count
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    answer = {"object": "list", "data": data, "model": call.model, "usage": usage}
    return Body(orjson.dumps(answer), (tokens, 0))

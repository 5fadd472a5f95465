"""`GET /v1/models` and `GET /v1/models/{id}`: the models the mock lists.

The mock serves every model name it is asked for, so retrieving any id succeeds; the list
holds the built-in names plus those of the `models` knob.
"""

from __future__ import annotations

from typing import Any

BUILT_IN = ("mock-gpt", "mock-gpt-large", "mock-embed")
OWNER = "savepoint-mock"
CREATED = 1_700_000_000  # fixed, so listings are byte-identical across runs


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": OWNER}


def model_list(extra: tuple[str, ...]) -> dict[str, Any]:
    names = dict.fromkeys(BUILT_IN + extra)  # ordered and without duplicates
    return {"object": "list", "data": [model_object(name) for name in names]}

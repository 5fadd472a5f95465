"""Which function tool the mock calls, and with which arguments. Pure.

Both tool shapes are read: Chat Completions nests the function
(`{"type": "function", "function": {"name", "parameters"}}`), the Responses API does not
(`{"type": "function", "name", "parameters"}`); `tool_choice` likewise
(`{"type": "function", "function": {"name"}}` or `{"type": "function", "name"}`).
`tool_choice: "none"` means no call; a named choice picks that function; otherwise the first
function tool is called. Arguments hold a placeholder for each required property.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .synth import json_text


@dataclass(frozen=True, slots=True)
class FunctionCall:
    name: str
    arguments: str  # JSON text


def _function(tool: object) -> Mapping[str, Any] | None:
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        return None
    nested = tool.get("function")
    spec = nested if isinstance(nested, Mapping) else tool
    return spec if isinstance(spec.get("name"), str) else None


def _chosen_name(tool_choice: object) -> str | None:
    if not isinstance(tool_choice, Mapping):
        return None
    nested = tool_choice.get("function")
    name = nested.get("name") if isinstance(nested, Mapping) else tool_choice.get("name")
    return name if isinstance(name, str) else None


def choose_function(tools: object, tool_choice: object) -> FunctionCall | None:
    """The call to make, or None when the answer should be text."""
    if not isinstance(tools, list) or tool_choice == "none":
        return None
    functions = [f for f in map(_function, tools) if f is not None]
    if not functions:
        return None
    wanted = _chosen_name(tool_choice)
    spec = next((f for f in functions if f["name"] == wanted), functions[0])
    return FunctionCall(spec["name"], json_text(spec.get("parameters") or {"type": "object"}))

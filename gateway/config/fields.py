"""Reading YAML values with their place in the file: typed readers that report problems
located as `line: path: message` and keep going, so every problem is reported at once."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from gateway.config.schema import Timeouts

Path = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Patterns are used with fullmatch: `$` would also accept a trailing newline (a YAML `|` block).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_SIZE = re.compile(r"\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20,
               "GB": 10**9, "GiB": 2**30}  # fmt: skip
TIMEOUT_KEYS = ("connect", "first_byte", "idle", "total")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class Problems:
    def __init__(self, lines: dict[Path, int], env: Mapping[str, str]):
        self.lines = lines
        self.env = env
        self._found: list[tuple[int, str]] = []

    def problem(self, path: Path, message: str) -> None:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        prefix = f"{line}:" if line is not None else ""
        self._found.append((line or 0, f"{prefix} {format_path(path)}: {message}"))

    @property
    def problems(self) -> list[str]:
        """In the order of the file."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]


def collect_lines(
    node: yaml.Node, path: Path, out: dict[Path, int], duplicates: list[Path]
) -> None:
    """The line of every value (a mapping entry: the line of its key), and repeated keys,
    which YAML would otherwise resolve silently by keeping the last."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*path, key.value)
                if child in out:
                    duplicates.append(child)
                out[child] = key.start_mark.line + 1
                collect_lines(value, child, out, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            collect_lines(item, (*path, i), out, duplicates)


def interpolate(ctx: Problems, value: Any, path: Path) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            found = ctx.env.get(name)
            if default is not None:  # like the shell: `:-` also replaces an empty value
                return found or default
            if found is not None:
                return found
            ctx.problem(
                path,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to make it optional)",
            )
            return ""

        return _ENV_REF.sub(sub, value) if "$" in value else value
    if isinstance(value, dict):
        return {k: interpolate(ctx, v, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(ctx, v, (*path, i)) for i, v in enumerate(value)]
    return value


def show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else ("null" if value is None else repr(value))


def mapping(ctx: Problems, value: Any, path: Path, known: tuple[str, ...] = ()) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.problem(path, f"expected a mapping, got {show(value)}")
        return {}
    for key in value:
        if not isinstance(key, str):
            ctx.problem(path, f"keys must be strings, got {show(key)}")
        elif known and key not in known:
            ctx.problem((*path, key), f"unknown key; expected one of: {', '.join(known)}")
    return value


def string(
    ctx: Problems, m: dict[str, Any], key: str, path: Path, default: str | None
) -> str | None:
    value = m.get(key, default)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    ctx.problem((*path, key), f"expected a string, got {show(value)}")
    return default


def boolean(ctx: Problems, m: dict[str, Any], key: str, path: Path, default: bool) -> bool:
    value = m.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # from a ${VAR}
    if isinstance(value, bool):
        return value
    ctx.problem((*path, key), f"expected true or false, got {show(value)}")
    return default


def integer(
    ctx: Problems,
    m: dict[str, Any],
    key: str,
    path: Path,
    default: int,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value = m.get(key, default)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)  # from a ${VAR}
    in_range = isinstance(value, int) and value >= minimum and value <= (maximum or value)
    if in_range and not isinstance(value, bool):
        return int(value)
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    ctx.problem((*path, key), f"expected an integer {bounds}, got {show(value)}")
    return default


def number(
    ctx: Problems, m: dict[str, Any], key: str, path: Path, default: float | None
) -> float | None:
    """A number >= 0 (an int, a float, or one from a ${VAR})."""
    value = m.get(key, default)
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.strip())  # from a ${VAR}
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    ctx.problem((*path, key), f"expected a number >= 0, got {show(value)}")
    return default


def seconds(ctx: Problems, m: dict[str, Any], key: str, path: Path, default: float) -> float:
    value = m.get(key, default)
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or not 0 < seconds < math.inf:
        ctx.problem((*path, key), f"expected seconds (e.g. 30, 500ms, 2m, 7d), got {show(value)}")
        return default
    return seconds


def size(ctx: Problems, m: dict[str, Any], key: str, path: Path, default: int) -> int:
    value = m.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)) and int(match.group(1)) > 0:
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    ctx.problem((*path, key), f"expected a size in bytes (e.g. 1048576, 32MiB), got {show(value)}")
    return default


def name(ctx: Problems, name: Any, path: Path, what: str) -> bool:
    if isinstance(name, str) and _NAME.fullmatch(name):
        return True
    ctx.problem(path, f"{show(name)} is not a valid {what} name (letters, digits, _ . : -)")
    return False


def timeouts(ctx: Problems, value: Any, path: Path, base: Timeouts) -> Timeouts:
    """Timeouts set here, the rest inherited from `base` and capped at the total: setting
    `total: 10s` alone is enough for a short deadline; an explicit longer phase is an error."""
    m = mapping(ctx, value, path, TIMEOUT_KEYS)
    total = seconds(ctx, m, "total", path, base.total)
    phases: list[float] = []
    for k in ("connect", "first_byte", "idle"):
        phase = seconds(ctx, m, k, path, getattr(base, k))
        if k in m and phase > total:
            ctx.problem((*path, k), f"{phase:g}s is longer than total ({total:g}s)")
        phases.append(min(phase, total))
    connect, first_byte, idle = phases
    return Timeouts(connect=connect, first_byte=first_byte, idle=idle, total=total)

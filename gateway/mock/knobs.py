"""The mock's knobs: the value type, its defaults, and the one table that parses them.

Knobs arrive two ways, both read from `_SPECS`, so each knob has one name, one parser, one
default and one help text:

- command-line flags: `add_knob_arguments(parser)` then `knobs_from_args(namespace)`;
- the per-request `x-mock` header: `parse_knob_header(value, base)`, which overrides `base`.

Header syntax: `key=value` pairs separated by `;`, e.g.
`x-mock: status=503;fail_nth=1,2;retry_after=1;scope=t42`. Keys may be spelled with `_` or
`-`. A flag knob may stand bare (`hang` means `hang=true`). `none` (any case) or an empty
value resets an optional knob, so a request can switch off a fault the server was started
with (`x-mock: status=none`). Unknown keys and bad values raise `KnobError`, naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass


class KnobError(ValueError):
    """An unknown knob or a knob value that does not parse; the message names the knob."""


@dataclass(frozen=True, slots=True)
class Knobs:
    # Shape: applies to every request.
    delay: float = 0.0  # seconds before the response headers are sent
    chunk_delay: float = 0.0  # seconds between two stream events
    chunks: int = 8  # content chunks in a stream, words in an answer
    dimensions: int = 16  # embedding size when the request names none
    scope: str = ""  # name of the request counter; parallel tests use their own
    models: tuple[str, ...] = ()  # extra model ids listed by GET /v1/models
    # Faults: apply to the requests the selector picks.
    status: int | None = None  # answer with this HTTP status and an OpenAI error body
    retry_after: float | None = None  # seconds, sent as `retry-after` on error answers
    retry_after_ms: int | None = None  # sent as `retry-after-ms` on error answers
    hang: bool = False  # never answer; end when the client goes away
    cut_after: int | None = None  # abort the connection after this many content chunks
    malformed: bool = False  # invalid JSON body, or one invalid JSON event in a stream
    truncate: bool = False  # end a stream cleanly without finish chunk and terminator
    # Selector: which requests of the scope get the fault (1-based request numbers).
    fail_nth: tuple[int, ...] = ()
    fail_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    parse: Callable[[str], object]
    help: str
    flag: bool = False  # a boolean: `--hang` on the command line, bare `hang` in the header
    optional: bool = False  # `none` or an empty value means "not set"


def _number(text: str, kind: type[int] | type[float], lo: float, hi: float, what: str) -> float:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"expected {what}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    return float(_number(text, float, 0.0, 86400.0, "seconds >= 0"))


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        return int(_number(text, int, lo, hi, what))

    return parse


def _ratio(text: str) -> float:
    return float(_number(text, float, 0.0, 1.0, "a ratio between 0 and 1"))


def _request_numbers(text: str) -> tuple[int, ...]:
    one = _int_in(1, 10**9, "request numbers >= 1, comma-separated")
    return tuple(one(part) for part in text.split(",") if part.strip())


_SCOPE = re.compile(r"[A-Za-z0-9_.:-]{0,64}")


def _scope(text: str) -> str:
    text = text.strip()
    if not _SCOPE.fullmatch(text):
        raise ValueError(f"expected up to 64 of A-Z a-z 0-9 _ . : -, got {text!r}")
    return text


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_SPECS: tuple[_Spec, ...] = (
    _Spec("delay", _seconds, "seconds to wait before sending the response headers"),
    _Spec("chunk_delay", _seconds, "seconds to wait between two stream events"),
    _Spec("chunks", _int_in(0, 100_000, "an integer 0-100000"), "content chunks per answer"),
    _Spec("dimensions", _int_in(1, 16_384, "an integer 1-16384"), "default embedding size"),
    _Spec("scope", _scope, "name of the request counter (so parallel tests do not share one)"),
    _Spec("models", _names, "extra model ids for GET /v1/models, comma-separated"),
    _Spec(
        "status",
        _int_in(400, 599, "an HTTP status 400-599"),
        "fault: answer with this HTTP status and an OpenAI-shaped error body",
        optional=True,
    ),
    _Spec("retry_after", _seconds, "seconds sent as retry-after on faults", optional=True),
    _Spec(
        "retry_after_ms",
        _int_in(0, 86_400_000, "milliseconds >= 0"),
        "milliseconds sent as retry-after-ms on faults",
        optional=True,
    ),
    _Spec("hang", _flag, "fault: accept the request and never answer", flag=True),
    _Spec(
        "cut_after",
        _int_in(0, 100_000, "a chunk count >= 0"),
        "fault: abort the connection after this many content chunks (mid-body when not streaming)",
        optional=True,
    ),
    _Spec("malformed", _flag, "fault: invalid JSON body, or one invalid stream event", flag=True),
    _Spec(
        "truncate", _flag, "fault: end a stream cleanly without finish chunk or [DONE]", flag=True
    ),
    _Spec("fail_nth", _request_numbers, "select the faults for these request numbers, e.g. 1,2"),
    _Spec(
        "fail_ratio",
        _ratio,
        "select the faults for this share of requests, spread evenly (deterministic)",
        optional=True,
    ),
)
_BY_KEY: dict[str, _Spec] = {spec.name: spec for spec in _SPECS}


def _parse_value(spec: _Spec, text: str) -> object:
    if spec.optional and text.strip().lower() in ("", "none", "null"):
        return None
    return spec.parse(text)


def parse_knob_header(value: str, base: Knobs) -> Knobs:
    """`base` with the knobs named in an `x-mock` header value replaced."""
    changes: dict[str, object] = {}
    for pair in value.split(";"):
        if not pair.strip():
            continue
        key, eq, text = pair.partition("=")
        key = key.strip().lower().replace("-", "_")
        spec = _BY_KEY.get(key)
        if spec is None:
            known = ", ".join(_BY_KEY)
            raise KnobError(f"unknown mock knob {key!r} (known: {known})")
        if not eq and not spec.flag:
            raise KnobError(f"mock knob {key!r} needs a value: {key}=...")
        try:
            changes[key] = _parse_value(spec, text) if eq else True
        except ValueError as e:
            raise KnobError(f"mock knob {key!r}: {e}") from None
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


def _argument_type(spec: _Spec) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return _parse_value(spec, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = spec.name
    return convert


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per knob (`--fail-nth 1,2`, `--hang`); unset flags keep the defaults."""
    defaults = Knobs()
    group = parser.add_argument_group("mock knobs (also per request: x-mock: key=value;...)")
    for spec in _SPECS:
        option = "--" + spec.name.replace("_", "-")
        if spec.flag:
            group.add_argument(option, action="store_true", default=None, help=spec.help)
            continue
        default = getattr(defaults, spec.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{spec.help} (default: {shown if shown not in (None, '') else 'unset'})"
        group.add_argument(option, type=_argument_type(spec), default=None, help=help_text)


def knobs_from_args(ns: argparse.Namespace) -> Knobs:
    """The knobs given on the command line; a flag that was not given keeps its default."""
    changes = {s.name: getattr(ns, s.name) for s in _SPECS if getattr(ns, s.name, None) is not None}
    return dataclasses.replace(Knobs(), **changes)

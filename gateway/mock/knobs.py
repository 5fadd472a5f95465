"""The mock's knobs: the value type, its defaults, and the one table that parses them.

Knobs arrive three ways, all read from `_SPECS`, so each knob has one name, one parser, one
default and one help text:

- command-line flags: `add_knob_arguments(parser)` then `knobs_from_args(namespace)`;
- the per-request `x-mock` header: `parse_knob_header(value, base)`, which overrides `base`;
- a JSON object (`POST /_mock/knobs`): `parse_knob_mapping(mapping, base)`, same rules, with
  JSON values (`null`, `true`, numbers, lists) where the header has text.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson


class KnobError(ValueError):
    """An unknown knob or a knob value that does not parse; the message names the knob, and
    `knob` is its name (None when the whole value is unusable)."""

    def __init__(self, message: str, knob: str | None = None) -> None:
        super().__init__(message)
        self.knob = knob


@dataclass(frozen=True, slots=True)
class Knobs:
    # Shape: applies to every request.
    delay: float = 0.0  # seconds before the response headers are sent
    chunk_delay: float = 0.0  # seconds between two stream events
    chunks: int = 8  # content chunks in a stream, words in an answer
    dimensions: int = 16  # embedding size when the request names none
    scope: str = ""  # name of the request counter; parallel tests use their own
    models: tuple[str, ...] = ()  # extra model ids listed by GET /v1/models
    no_usage: bool = False  # streams never report usage (stream_options is ignored)
    # Faults: apply to the requests the selector picks.
    status: int | None = None  # answer with this HTTP status and an OpenAI error body
    retry_after: float | None = None  # seconds, sent as `retry-after` on error answers
    retry_after_ms: int | None = None  # sent as `retry-after-ms` on error answers
    error_code: str | None = None  # the error body's `code` (e.g. context_length_exceeded)
    hang: bool = False  # never answer; end when the client goes away
    cut_after: int | None = None  # abort the connection after this many content chunks
    stall_after: int | None = None  # a stream goes silent after this many content chunks
    error_event_after: int | None = None  # a stream ends with an error event after this many
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


_CODE = re.compile(r"[a-z0-9_]{1,64}")


def _code(text: str) -> str:
    text = text.strip()
    if not _CODE.fullmatch(text):
        raise ValueError(f"expected an error code like context_length_exceeded, got {text!r}")
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
    _Spec("no_usage", _flag, "chat and completions streams never report usage", flag=True),
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
    _Spec(
        "error_code",
        _code,
        "the `code` of a fault's error body, e.g. context_length_exceeded, content_filter, "
        "insufficient_quota",
        optional=True,
    ),
    _Spec("hang", _flag, "fault: accept the request and never answer", flag=True),
    _Spec(
        "cut_after",
        _int_in(0, 100_000, "a chunk count >= 0"),
        "fault: abort the connection after this many content chunks (mid-body when not streaming)",
        optional=True,
    ),
    _Spec(
        "stall_after",
        _int_in(0, 100_000, "a chunk count >= 0"),
        "fault: a stream goes silent after this many content chunks, until the client leaves",
        optional=True,
    ),
    _Spec(
        "error_event_after",
        _int_in(0, 100_000, "a chunk count >= 0"),
        "fault: a stream ends with an error event (chat: then [DONE]) after this many content "
        "chunks",
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


def _spec_for(key: str) -> _Spec:
    spec = _BY_KEY.get(key)
    if spec is None:
        known = ", ".join(_BY_KEY)
        raise KnobError(f"unknown mock knob {key!r} (known: {known})", key)
    return spec


def parse_knob_header(value: str, base: Knobs) -> Knobs:
    """`base` with the knobs named in an `x-mock` header value replaced."""
    changes: dict[str, object] = {}
    for pair in value.split(";"):
        if not pair.strip():
            continue
        key, eq, text = pair.partition("=")
        key = key.strip().lower().replace("-", "_")
        spec = _spec_for(key)
        if not eq and not spec.flag:
            raise KnobError(f"mock knob {key!r} needs a value: {key}=...", key)
        try:
            changes[key] = _parse_value(spec, text) if eq else True
        except ValueError as e:
            raise KnobError(f"mock knob {key!r}: {e}", key) from None
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


def _json_text(value: object) -> str | None:
    """A JSON value as the header's text (`null` -> `none`, `true` -> `true`, `[1, 2]` ->
    `1,2`), or None when no knob takes a value of its kind (an object, a list of lists)."""
    if value is None:
        return "none"
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int | float) for v in items):
        return None
    return ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in items)


def parse_knob_mapping(mapping: Mapping[str, object], base: Knobs) -> Knobs:
    """`base` with the knobs named in a JSON object replaced: `{"status": 503, "fail_nth":
    [1, 2], "hang": true, "retry_after": null}`. Keys as in the header."""
    changes: dict[str, object] = {}
    for raw_key, value in mapping.items():
        key = raw_key.strip().lower().replace("-", "_")
        spec = _spec_for(key)
        text = _json_text(value)
        if text is None:
            kind = type(value).__name__
            raise KnobError(f"mock knob {key!r}: expected a string, a number, true/false, null "
                            f"or a list of those, got {kind}", key)  # fmt: skip
        try:
            changes[key] = _parse_value(spec, text)
        except ValueError as e:
            raise KnobError(f"mock knob {key!r}: {e}", key) from None
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


def parse_knob_body(data: bytes, content_type: str, base: Knobs) -> Knobs:
    """`base` changed as a `POST /_mock/knobs` body says: a JSON object when the content type
    is JSON or the text starts with `{`, else the `x-mock` header syntax."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise KnobError("the body must be UTF-8: knobs as in x-mock, or a JSON object") from None
    if content_type != "application/json" and not text.lstrip().startswith("{"):
        return parse_knob_header(text, base)
    try:
        mapping = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise KnobError("the body is not valid JSON") from None
    if not isinstance(mapping, dict):
        raise KnobError(f"expected a JSON object of knobs, got {type(mapping).__name__}")
    return parse_knob_mapping(mapping, base)


def knobs_to_json(knobs: Knobs) -> dict[str, object]:
    """Every knob by name, as `GET /_mock/knobs` shows them (tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(knobs, f.name), tuple) else v
        for f in dataclasses.fields(knobs)
    }


class ServerKnobs:
    """The knobs a mock app answers with when a request names none: those it was started
    with until `POST /_mock/knobs` replaces them. One per app; a request reads `current` once,
    when it arrives, so a change never alters a request already in progress."""

    __slots__ = ("current", "started")

    def __init__(self, started: Knobs) -> None:
        self.started = started
        self.current = started


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

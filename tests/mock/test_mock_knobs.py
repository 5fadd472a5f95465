"""Knobs from the `x-mock` header, command-line flags and JSON objects: one table, one set of
rules."""

from __future__ import annotations

import argparse

import pytest

from gateway.mock import (
    KnobError,
    Knobs,
    add_knob_arguments,
    knobs_from_args,
    parse_knob_header,
    parse_knob_mapping,
)
from gateway.mock.knobs import parse_knob_body


@pytest.mark.parametrize(
    ("header", "base", "expected"),
    [
        (
            "status=503;fail_nth=1,2;retry_after=1;scope=t42",
            Knobs(),
            Knobs(status=503, fail_nth=(1, 2), retry_after=1.0, scope="t42"),
        ),
        ("hang", Knobs(), Knobs(hang=True)),
        ("cut-after=3", Knobs(), Knobs(cut_after=3)),
        (" delay = 0.5 ; chunk_delay=0.01 ;", Knobs(), Knobs(delay=0.5, chunk_delay=0.01)),
        ("status=none", Knobs(status=503), Knobs()),
        ("status=None;retry_after=", Knobs(status=503, retry_after=2.0), Knobs()),
        ("fail_nth=", Knobs(fail_nth=(1,)), Knobs()),
        ("malformed=false", Knobs(malformed=True), Knobs()),
        ("truncate=true;retry_after_ms=250", Knobs(), Knobs(truncate=True, retry_after_ms=250)),
        ("models=a, b", Knobs(), Knobs(models=("a", "b"))),
        (
            "fail_ratio=0.25;chunks=0;dimensions=3",
            Knobs(),
            Knobs(fail_ratio=0.25, chunks=0, dimensions=3),
        ),
        ("scope=tenant-1.run:2", Knobs(status=500), Knobs(status=500, scope="tenant-1.run:2")),
        ("", Knobs(chunks=2), Knobs(chunks=2)),
    ],
)
def test_header_overrides_base_knobs(header: str, base: Knobs, expected: Knobs) -> None:
    assert parse_knob_header(header, base) == expected


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("bogus=1", "'bogus'"),
        ("status=200", "'status'"),
        ("status=abc", "'status'"),
        ("status", "'status'"),
        ("chunks=-1", "'chunks'"),
        ("chunks=1.5", "'chunks'"),
        ("fail_ratio=1.5", "'fail_ratio'"),
        ("fail_nth=0,1", "'fail_nth'"),
        ("delay=nan", "'delay'"),
        ("retry_after=inf", "'retry_after'"),
        ("scope=a b", "'scope'"),
        ("hang=maybe", "'hang'"),
        ("dimensions=0", "'dimensions'"),
    ],
)
def test_header_with_a_bad_knob_is_rejected_naming_it(header: str, named: str) -> None:
    with pytest.raises(KnobError, match=named):
        parse_knob_header(header, Knobs())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    return parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], Knobs()),
        (
            ["--delay", "0.5", "--fail-nth", "1,2", "--hang", "--status", "503", "--scope", "x"],
            Knobs(delay=0.5, fail_nth=(1, 2), hang=True, status=503, scope="x"),
        ),
        (["--cut-after", "3", "--chunks", "4"], Knobs(cut_after=3, chunks=4)),
        (
            ["--fail-ratio", "0.1", "--retry-after-ms", "20"],
            Knobs(fail_ratio=0.1, retry_after_ms=20),
        ),
        (
            ["--malformed", "--truncate", "--models", "m1,m2"],
            Knobs(malformed=True, truncate=True, models=("m1", "m2")),
        ),
    ],
)
def test_flags_give_the_same_knobs_as_the_header(argv: list[str], expected: Knobs) -> None:
    assert knobs_from_args(_parser().parse_args(argv)) == expected


def test_bad_flag_value_stops_the_command_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--status", "200"])
    assert "--status: expected an HTTP status 400-599, got '200'" in capsys.readouterr().err


def test_every_knob_has_a_flag_with_help() -> None:
    text = _parser().format_help()
    for name in Knobs.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text


@pytest.mark.parametrize(
    ("mapping", "base", "expected"),
    [
        ({"status": 503, "retry_after": 1}, Knobs(), Knobs(status=503, retry_after=1.0)),
        ({"fail_nth": [1, 2], "hang": True}, Knobs(), Knobs(fail_nth=(1, 2), hang=True)),
        ({"fail-nth": "3,4", "cut_after": 0}, Knobs(), Knobs(fail_nth=(3, 4), cut_after=0)),
        ({"status": None, "malformed": False}, Knobs(status=500, malformed=True), Knobs()),
        ({"models": ["a", "b"], "delay": 0.5}, Knobs(), Knobs(models=("a", "b"), delay=0.5)),
        ({}, Knobs(chunks=2), Knobs(chunks=2)),
    ],
)
def test_json_object_overrides_base_knobs_like_the_header(
    mapping: dict[str, object], base: Knobs, expected: Knobs
) -> None:
    assert parse_knob_mapping(mapping, base) == expected


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        ({"bogus": 1}, "bogus"),
        ({"status": 200}, "status"),
        ({"status": {"code": 503}}, "status"),
        ({"fail_nth": [[1]]}, "fail_nth"),
        ({"hang": None}, "hang"),
        ({"chunks": 2.5}, "chunks"),
    ],
)
def test_json_object_with_a_bad_knob_is_rejected_naming_it(
    mapping: dict[str, object], named: str
) -> None:
    with pytest.raises(KnobError, match=f"'{named}'") as bad:
        parse_knob_mapping(mapping, Knobs())
    assert bad.value.knob == named


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"status=503;delay=2", "text/plain", Knobs(status=503, delay=2.0)),
        (
            b"cut_after=2;chunks=20",
            "application/x-www-form-urlencoded",
            Knobs(cut_after=2, chunks=20),
        ),
        (b' {"status": 429}', "text/plain", Knobs(status=429)),
        (b'{"hang": true}', "application/json", Knobs(hang=True)),
        (b"", "", Knobs()),
    ],
)
def test_knobs_body_is_json_when_it_says_so_or_looks_like_it(
    body: bytes, content_type: str, expected: Knobs
) -> None:
    assert parse_knob_body(body, content_type, Knobs()) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"status": 503', "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "expected a JSON object of knobs, got list"),
        (b"\xff\xfe", "text/plain", "must be UTF-8"),
        (b"status=503;bogus", "text/plain", "unknown mock knob 'bogus'"),
    ],
)
def test_unusable_knobs_body_is_rejected_with_a_reason(
    body: bytes, content_type: str, message: str
) -> None:
    with pytest.raises(KnobError, match=message):
        parse_knob_body(body, content_type, Knobs())

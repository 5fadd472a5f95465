"""Which fault the mock picks for request n, and what it does to the bytes: no sockets."""

from __future__ import annotations

import pytest

from gateway.mock.faults import (
    Cut,
    Fail,
    Fault,
    Hang,
    Healthy,
    Malformed,
    Script,
    Truncate,
    decide,
    is_picked,
    script_body,
    script_events,
)
from gateway.mock.knobs import Knobs
from gateway.mock.plan import Body, Events


@pytest.mark.parametrize(
    ("knobs", "n", "expected"),
    [
        (Knobs(), 1, Healthy()),
        (Knobs(delay=1.0, chunks=3, scope="s"), 7, Healthy()),
        (Knobs(status=503), 1, Fail(503)),
        (Knobs(status=503), 99, Fail(503)),
        (Knobs(status=429, retry_after=1.5, retry_after_ms=1500), 1, Fail(429, 1.5, 1500)),
        (Knobs(retry_after=2.0), 1, Healthy()),
        (Knobs(status=503, fail_nth=(1, 2)), 1, Fail(503)),
        (Knobs(status=503, fail_nth=(1, 2)), 2, Fail(503)),
        (Knobs(status=503, fail_nth=(1, 2)), 3, Healthy()),
        (Knobs(fail_nth=(2,)), 2, Fail(500)),
        (Knobs(fail_nth=(2,)), 1, Healthy()),
        (Knobs(status=500, fail_ratio=0.0), 1, Healthy()),
        (Knobs(status=500, fail_ratio=0.5), 1, Healthy()),
        (Knobs(status=500, fail_ratio=0.5), 2, Fail(500)),
        (Knobs(status=500, fail_nth=(1,), fail_ratio=0.5), 1, Fail(500)),
        (Knobs(hang=True), 1, Hang()),
        (Knobs(hang=True, status=503, cut_after=1), 1, Hang()),
        (Knobs(status=503, cut_after=1, malformed=True), 1, Fail(503)),
        (Knobs(cut_after=3), 1, Cut(3)),
        (Knobs(cut_after=0, malformed=True), 1, Cut(0)),
        (Knobs(malformed=True, truncate=True), 1, Malformed()),
        (Knobs(truncate=True), 1, Truncate()),
        (Knobs(truncate=True, fail_nth=(3,)), 2, Healthy()),
    ],
)
def test_decide_picks_the_fault_for_request_n(knobs: Knobs, n: int, expected: Fault) -> None:
    assert decide(knobs, n) == expected


@pytest.mark.parametrize(
    ("ratio", "first", "picked"),
    [
        (0.0, 100, []),
        (1.0, 5, [1, 2, 3, 4, 5]),
        (0.5, 6, [2, 4, 6]),
        (0.25, 12, [4, 8, 12]),
        (0.3, 10, [4, 7, 10]),
        (0.1, 30, [10, 20, 30]),
    ],
)
def test_fail_ratio_spreads_picks_evenly(ratio: float, first: int, picked: list[int]) -> None:
    assert [n for n in range(1, first + 1) if is_picked(n, (), ratio)] == picked


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.29, 0.3, 0.33, 0.57, 0.7, 0.99])
def test_fail_ratio_picks_exactly_its_share_of_a_hundred_requests(ratio: float) -> None:
    assert sum(is_picked(n, (), ratio) for n in range(1, 101)) == round(100 * ratio)


EVENTS = Events(head=(b"H",), content=(b"c1", b"c2", b"c3"), tail=(b"F", b"D"), malformed=b"X")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Healthy(), Script((b"H", b"c1", b"c2", b"c3", b"F", b"D"))),
        (Cut(2), Script((b"H", b"c1", b"c2"), abort=True)),
        (Cut(0), Script((b"H",), abort=True)),
        (Cut(10), Script((b"H", b"c1", b"c2", b"c3"), abort=True)),
        (Malformed(), Script((b"H", b"c1", b"X", b"c2", b"c3", b"F", b"D"))),
        (Truncate(), Script((b"H", b"c1", b"c2", b"c3"))),
    ],
)
def test_stream_script_under_each_fault(fault: Fault, expected: Script) -> None:
    assert script_events(EVENTS, fault) == expected


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Healthy(), Script((b"0123456789",), declared_length=10)),
        (Truncate(), Script((b"0123456789",), declared_length=10)),
        (Cut(3), Script((b"01234",), abort=True, declared_length=10)),
        (Malformed(), Script((b"01234",), declared_length=5)),
    ],
)
def test_body_script_under_each_fault(fault: Fault, expected: Script) -> None:
    assert script_body(Body(b"0123456789"), fault) == expected

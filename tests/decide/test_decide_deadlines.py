import math

import pytest

from gateway.config.schema import Timeouts
from gateway.decide.deadlines import attempt_timeouts, chain_budget, client_budget

CONFIGURED = Timeouts(connect=5, first_byte=60, idle=60, total=600)


@pytest.mark.parametrize(
    ("client_timeout", "budget"),
    [(None, math.inf), (0.0, math.inf), (600.0, 595.0), (20.0, 18.0), (2.0, 1.8)],
)
def test_gateway_gives_up_before_its_client_does(
    client_timeout: float | None, budget: float
) -> None:
    assert client_budget(client_timeout) == budget


def test_chain_budget_is_the_route_deadline_or_the_clients_whichever_is_shorter() -> None:
    assert chain_budget(120.0, 600.0) == 120.0
    assert chain_budget(600.0, 20.0) == 18.0
    assert chain_budget(600.0, None) == 600.0


@pytest.mark.parametrize(
    ("client_timeout", "stream", "remaining", "expected"),
    [
        (None, False, 1000.0, CONFIGURED),
        (None, False, 30.0, Timeouts(5, 30, 30, 30)),  # what is left of the chain bounds it
        (None, False, 2.0, Timeouts(2, 2, 2, 2)),
        (None, True, 1000.0, CONFIGURED),
        (None, True, 30.0, Timeouts(5, 30, 60, 600)),  # first byte within the chain budget
        (20.0, True, 18.0, Timeouts(5, 18, 18, 600)),  # gaps within the client's read timeout
        (None, True, 3.0, Timeouts(3, 3, 60, 600)),
    ],
)
def test_attempt_timeouts(
    client_timeout: float | None, stream: bool, remaining: float, expected: Timeouts
) -> None:
    assert attempt_timeouts(CONFIGURED, client_timeout, stream, remaining) == expected

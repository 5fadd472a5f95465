import pytest

from gateway.config.schema import Timeouts
from gateway.decide.deadlines import effective_timeouts

CONFIGURED = Timeouts(connect=5, first_byte=60, idle=60, total=600)


@pytest.mark.parametrize(
    ("client_timeout", "stream", "expected"),
    [
        (None, False, CONFIGURED),
        (None, True, CONFIGURED),
        (600.0, False, Timeouts(5, 60, 60, 595)),  # margin capped at 5 s
        (600.0, True, CONFIGURED),  # a stream's read timeout bounds gaps, not the total
        (20.0, True, Timeouts(5, 18, 18, 600)),  # margin is a tenth below 50 s
        (20.0, False, Timeouts(5, 60, 60, 18)),
        (1000.0, False, CONFIGURED),  # never longer than configured
    ],
)
def test_gateway_gives_up_before_its_client_does(
    client_timeout: float | None, stream: bool, expected: Timeouts
) -> None:
    assert effective_timeouts(CONFIGURED, client_timeout, stream) == expected

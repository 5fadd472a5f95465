"""Fixtures of the store contract suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import OwnRedis


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server of our own, started; stopped at the end whatever the test did to it."""
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()

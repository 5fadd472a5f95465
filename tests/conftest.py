"""Session fixtures; the machinery lives in `harness.py` so test modules can import it."""

from harness import gateway, gateways, mock, own_redis

__all__ = ["gateway", "gateways", "mock", "own_redis"]

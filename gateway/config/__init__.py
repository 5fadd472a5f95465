"""The policy file: schema (frozen dataclasses with defaults) and the one load step."""

from gateway.config.load import PolicyError, load_policy, parse_policy
from gateway.config.schema import Policy

__all__ = ["Policy", "PolicyError", "load_policy", "parse_policy"]

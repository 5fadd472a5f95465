"""Savepoint: a resilient, OpenAI-compatible LLM gateway for AI agents."""

__version__ = "0.1.0"

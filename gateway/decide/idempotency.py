"""`Idempotency-Key`: what a key may look like, and which answers are kept for replay.

A key is the header's value: an sf-string (`"..."`, as the IETF draft writes it) or a bare
token, 1-255 visible ASCII characters. It is scoped to the client that sent it: two clients
sending the same key never share a record.

Kept (replayed to every retry for the retention time): a complete 2xx answer, and the
deterministic 4xx answers of an upstream (400, 404, 413, 422: the same request gets the same
answer). Not kept, so a retry executes again and can succeed: 408, 409, 429, 5xx, timeouts,
open breakers, streams cut or ended by an error, and everything the gateway refused before
executing (bad JSON, unknown model, auth), as Stripe does.
"""

from __future__ import annotations

import re

from gateway.decide.keys import digest

_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")
DETERMINISTIC = frozenset({400, 404, 413, 422})


def parse_key(header: str) -> str | None:
    """The key a header carries, or None if it is not a valid key."""
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if _TOKEN.fullmatch(value) and '"' not in value else None


def record_key(client: str, key: str) -> str:
    """The store's name for a client's key (a digest: keys are never stored as sent)."""
    return digest("idempotency", client, key)


def kept(status: int, complete: bool) -> bool:
    """Whether an answer is kept for replay: a complete 2xx, or a deterministic 4xx (whole,
    within the size limit)."""
    return complete and (200 <= status < 300 or status in DETERMINISTIC)

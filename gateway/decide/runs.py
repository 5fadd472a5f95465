"""What a durable run's headers may hold: `X-Savepoint-Run` and `X-Savepoint-Attempt`."""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def check_run_headers(run: str | None, attempt: str | None) -> None:
    """Raise `InvalidRequest` naming the header that is not a valid id."""
    for header, value in (("X-Savepoint-Run", run), ("X-Savepoint-Attempt", attempt)):
        if value is not None and not _ID.fullmatch(value):
            raise InvalidRequest(
                f"`{header}` must be 1-128 characters of A-Z a-z 0-9 _ . : -",
                param=header,
                code="invalid_header",
            )

"""What one mock app has served: counts, the per-scope request numbers the fault selector
reads, and a ring buffer of the last `LOG_SIZE` requests (`/_mock/stats`, `/_mock/requests`).

Invariants: `total` and `by_path` count every `/v1` request; `by_model` and `by_scope` count
the numbered ones (generation endpoints), so `by_scope[s]` is the last request number handed
out in scope `s`. `reset()` clears counts, numbers and log, but not the id serial, which keeps
answer ids unique for the life of the app. One `Ledger` per app; nothing here is global.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOG_SIZE = 200
BILLED_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class Seen:
    path: str
    model: str | None
    scope: str
    n: int | None  # request number within the scope; None for endpoints that are not counted
    headers: Mapping[str, str]  # the request's immutable header view; copied only when shown
    body: Any  # the parsed JSON body, None when absent or not JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model": self.model,
            "scope": self.scope,
            "n": self.n,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": self.body,
        }


class Ledger:
    __slots__ = ("_billed", "_billed_totals", "_by_model", "_by_path", "_log", "_numbers",
                 "_prefix", "_serial", "_total")  # fmt: skip

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._serial = 0
        self._total = 0
        self._by_path: Counter[str] = Counter()
        self._by_model: Counter[str] = Counter()
        self._numbers: Counter[str] = Counter()
        self._log: deque[Seen] = deque(maxlen=LOG_SIZE)
        self._billed: dict[str, tuple[int, int]] = {}  # the last BILLED_SIZE, by request id
        self._billed_totals = [0, 0]

    def next_ident(self) -> str:
        """A suffix for answer ids, unique within this app (`chatcmpl-<ident>`)."""
        self._serial += 1
        return f"{self._prefix}{self._serial:06d}"

    def number(
        self, path: str, model: str | None, scope: str, headers: Mapping[str, str], body: Any
    ) -> int:
        """Count a generation request; its number within `scope`, from 1."""
        self._numbers[scope] += 1
        n = self._numbers[scope]
        if model is not None:
            self._by_model[model] += 1
        self._count(Seen(path, model, scope, n, headers, body))
        return n

    def note(self, path: str, scope: str, headers: Mapping[str, str]) -> None:
        """Count a `/v1` request that gets no number (models, unknown paths)."""
        self._count(Seen(path, None, scope, None, headers, None))

    def _count(self, seen: Seen) -> None:
        self._total += 1
        self._by_path[seen.path] += 1
        self._log.append(seen)

    def bill(self, request_id: str, usage: tuple[int, int]) -> None:
        """Note the usage an answer reported, under the caller's request id
        (`X-Client-Request-Id`, which the gateway sends), else the mock's own."""
        if len(self._billed) >= BILLED_SIZE:
            del self._billed[next(iter(self._billed))]
        self._billed[request_id] = usage
        self._billed_totals[0] += usage[0]
        self._billed_totals[1] += usage[1]

    def billed(self) -> dict[str, Any]:
        prompt, completion = self._billed_totals
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "by_request": {k: list(v) for k, v in self._billed.items()}}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "by_path": dict(self._by_path),
            "by_model": dict(self._by_model),
            "by_scope": dict(self._numbers),
        }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` requests, oldest first."""
        start = max(0, len(self._log) - limit)
        return [seen.to_json() for i, seen in enumerate(self._log) if i >= start]

    def reset(self) -> None:
        self._total = 0
        self._by_path.clear()
        self._by_model.clear()
        self._numbers.clear()
        self._log.clear()
        self._billed.clear()
        self._billed_totals = [0, 0]

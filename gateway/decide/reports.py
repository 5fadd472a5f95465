"""Usage reports: what a query asks for, and the report made from ledger rows.

A query covers [start, end) in epoch seconds, with filters (client, model, target, run) and a
grouping (any of client, model, target, day, run). Times are given as a UTC day
(`2026-11-26`: from its start; as `to`, to its end), an ISO 8601 time, or epoch seconds;
`since` is relative: `12h`, `30m` (that long ago), or `7d` (the last 7 UTC days, today
included, so that it can be answered from the daily aggregates).

A query whose start and end fall on UTC midnights (or whose end is now) and that neither
filters nor groups by run is answered from the daily aggregates; any other from the entries.
Both give the same sums; the entries can be cut at any time, and know runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.decide.ledger import (
    GROUPS,
    Entry,
    add,
    counters,
    day_of,
    fold,
    group_value,
    summary,
)
from gateway.errors import InvalidRequest

_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
DEFAULT_GROUPS = ("client", "model")


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: float
    end: float
    open_end: bool  # `end` is now: the current day counts whole
    by: tuple[str, ...] = DEFAULT_GROUPS
    client: str | None = None
    model: str | None = None
    target: str | None = None
    run: str | None = None

    @property
    def daily(self) -> bool:
        """Whether the daily aggregates can answer it."""
        aligned = self.start % 86400 == 0 and (self.open_end or self.end % 86400 == 0)
        return aligned and self.run is None and "run" not in self.by

    @property
    def days(self) -> tuple[str, str]:
        last = self.end - 1 if not self.open_end else self.end
        return day_of(self.start), day_of(max(self.start, last))


def parse_query(params: Mapping[str, str], now: float) -> UsageQuery:
    """A query from `from`, `to`, `since`, `client`, `model`, `target`, `run`, `group_by`;
    a 400 that names the parameter to fix otherwise. Default: today, by client and model."""
    known = {"from", "to", "since", "client", "model", "target", "run", "group_by"}
    for name in params:
        if name not in known:
            raise InvalidRequest(
                f"unknown parameter `{name}`; use {', '.join(sorted(known))}", param=name
            )
    if "since" in params and "from" in params:
        raise InvalidRequest("give `since` or `from`, not both", param="since")
    end, open_end = now, True
    if "to" in params:
        end, open_end = _time(params["to"], "to", end_of_day=True), False
    if "since" in params:
        start = _since(params["since"], now)
    elif "from" in params:
        start = _time(params["from"], "from", end_of_day=False)
    else:
        start = _midnight(now)
    if start >= end:
        raise InvalidRequest(f"`from` ({_iso(start)}) must be before `to` ({_iso(end)})",
                             param="from")  # fmt: skip
    by = tuple(g.strip() for g in params.get("group_by", ",".join(DEFAULT_GROUPS)).split(","))
    by = tuple(g for g in by if g)
    for g in by:
        if g not in GROUPS:
            raise InvalidRequest(
                f"cannot group by `{g}`; use any of {', '.join(GROUPS)}", param="group_by"
            )
    return UsageQuery(start, end, open_end, by, params.get("client"), params.get("model"),
                      params.get("target"), params.get("run"))  # fmt: skip


def entry_rows(
    q: UsageQuery, entries: Iterable[Entry]
) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """The entries that match the query, as (group values, counters)."""
    for e in entries:
        if not q.start <= e.ts < q.end and not (q.open_end and e.ts >= q.start):
            continue
        if (q.client is not None and e.client != q.client) or (
            q.model is not None and e.model != q.model) or (
            q.target is not None and e.target != q.target) or (
            q.run is not None and not _same_run(e.run, q.run)
        ):  # fmt: skip
            continue
        yield {g: group_value(e, g) for g in q.by}, counters(e)


def daily_rows(
    q: UsageQuery, rows: Iterable[tuple[tuple[str, str, str, str], Mapping[str, int]]]
) -> Iterator[tuple[dict[str, str], Mapping[str, int]]]:
    """The daily aggregates that match the query, as (group values, counters)."""
    for (day, client, model, target), c in rows:
        values = {"day": day, "client": client, "model": model, "target": target}
        if any(
            wanted is not None and values[name] != wanted
            for name, wanted in (("client", q.client), ("model", q.model), ("target", q.target))
        ):
            continue
        yield values, c


def report(
    q: UsageQuery, rows: Iterable[tuple[Mapping[str, str], Mapping[str, int]]], source: str
) -> dict[str, Any]:
    groups = fold(rows, q.by)
    total: dict[str, int] = {}
    out = []
    for key in sorted(groups):
        add(total, groups[key])
        out.append({**dict(zip(q.by, key, strict=True)), **summary(groups[key])})
    filters = {"client": q.client, "model": q.model, "target": q.target, "run": q.run}
    return {
        "from": _iso(q.start),
        "to": _iso(q.end),
        "group_by": list(q.by),
        "filters": {k: v for k, v in filters.items() if v is not None},
        "source": source,
        "groups": out,
        "total": summary(total),
    }


def _same_run(run: str | None, wanted: str) -> bool:
    """`wanted` is a run id, or `<client>/<run id>` as entries keep it."""
    return run is not None and (run == wanted or run.partition("/")[2] == wanted)


def _since(text: str, now: float) -> float:
    match = _RELATIVE.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(f"`since` must be a number and a unit (30m, 12h, 7d), got {text!r}",
                             param="since")  # fmt: skip
    n, unit = int(match.group(1)), match.group(2)
    if n < 1:
        raise InvalidRequest("`since` must be at least 1", param="since")
    if unit == "d":  # whole UTC days, today included
        return _midnight(now) - (n - 1) * 86400
    return now - n * _UNITS[unit]


def _time(text: str, param: str, end_of_day: bool) -> float:
    text = text.strip()
    if _DAY.fullmatch(text):
        try:
            start = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise InvalidRequest(f"`{param}` is not a date: {text!r}", param=param) from None
        return start + 86400 if end_of_day else start
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"`{param}` must be a UTC day (2026-11-26), an ISO 8601 time "
            f"(2026-11-26T10:00:00Z) or epoch seconds, got {text!r}",
            param=param,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # a time without a zone is UTC
    return parsed.timestamp()


def _midnight(ts: float) -> float:
    return float(int(ts) - int(ts) % 86400)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

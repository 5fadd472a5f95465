"""`savepoint usage`: the usage report, read from the policy's store (a running gateway is not
needed), printed as a table, CSV or JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.app import build_store
from gateway.config.schema import Policy
from gateway.decide.reports import parse_query
from gateway.errors import InvalidRequest
from gateway.ledger import usage_report
from gateway.stores.base import StoreUnavailable

_COLUMNS = (  # (heading, field of a report row, format)
    ("requests", "requests", "{:,}"),
    ("ok %", "success_rate", "{:.1%}"),
    ("tokens", "total_tokens", "{:,}"),
    ("cost $", "cost_usd", "{:.4f}"),
    ("saved tok", "saved_tokens", "{:,}"),
    ("saved $", "saved_usd", "{:.4f}"),
    ("wasted tok", "wasted_tokens", "{:,}"),
    ("wasted $", "wasted_usd", "{:.4f}"),
    ("fallbacks", "fallbacks", "{:,}"),
    ("loops", "loops", "{:,}"),
    ("p50 ms", "latency_ms.p50", "{:,.0f}"),
    ("p95 ms", "latency_ms.p95", "{:,.0f}"),
    ("ttfb p50", "ttfb_ms.p50", "{:,.0f}"),
    ("$/req", "cost_per_request_usd", "{:.6f}"),
)


_FLAGS = {"from": "--from", "to": "--to", "since": "--since", "group_by": "--by"}


def run(policy: Policy, params: Mapping[str, str], output: str) -> tuple[int, str]:
    """(exit status, text to print)."""
    try:
        query = parse_query(params, time.time())
    except InvalidRequest as e:
        message = e.message  # it names the API's parameters: say the flags instead
        for param, flag in _FLAGS.items():
            message = message.replace(f"`{param}`", flag)
        return 2, f"savepoint usage: {message}"
    try:
        report = asyncio.run(_report(policy, query))
    except StoreUnavailable as e:
        return 1, f"savepoint usage: cannot read the usage ledger: {e}"
    if output == "json":
        return 0, orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    if output == "csv":
        return 0, render_csv(report)
    return 0, render_table(report)


async def _report(policy: Policy, query: Any) -> dict[str, Any]:
    store = build_store(policy)
    await store.open()
    try:
        return await usage_report(store, query)
    finally:
        await store.close()


def _field(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def render_table(report: Mapping[str, Any]) -> str:
    by = list(report["group_by"])
    head = [*by, *(h for h, _, _ in _COLUMNS)]
    rows = [[*(str(g[b]) for b in by), *_cells(g)] for g in report["groups"]]
    rows.append([*(["total"] + [""] * (len(by) - 1) if by else []), *_cells(report["total"])])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    n = len(by)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < n else c.rjust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()  # fmt: skip

    title = f"usage {report['from']} .. {report['to']} (from the {report['source']})"
    return "\n".join([title, line(head), *(line(r) for r in rows)])


def _cells(row: Mapping[str, Any]) -> list[str]:
    cells = []
    for _, path, fmt in _COLUMNS:
        value = _field(row, path)
        cells.append("-" if value is None else fmt.format(value))
    return cells


def render_csv(report: Mapping[str, Any]) -> str:
    by = list(report["group_by"])
    fields = [
        "requests", *(f"outcome_{o}" for o in report["total"]["outcomes"]), "success_rate",
        "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens",
        "total_tokens", "cost_usd", "saved_tokens", "saved_usd", "wasted_tokens",
        "wasted_usd", "estimated_requests", "fallbacks", "loops", "latency_p50_ms",
        "latency_p95_ms", "ttfb_p50_ms", "ttfb_p95_ms", "cost_per_request_usd",
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*by, *fields])
    for group in report["groups"]:
        flat = {
            **group,
            **{f"outcome_{o}": n for o, n in group["outcomes"].items()},
            **{f"latency_{q}_ms": v for q, v in group["latency_ms"].items()},
            **{f"ttfb_{q}_ms": v for q, v in group["ttfb_ms"].items()},
        }
        writer.writerow([*(group[b] for b in by), *("" if flat[f] is None else flat[f]
                                                    for f in fields)])  # fmt: skip
    return out.getvalue().rstrip("\n")

"""The usage ledger on Redis: one script call applies a batch, once.

- `sp:{usage}:batch:<id>`: a batch already applied (kept a day), so that a batch whose write
  was reported as failed but did land is not counted twice when it is sent again.
- `sp:{usage}:log:<day>`: the day's entries (opaque bytes, each holding its time), a list in
  append order, expiring `retention` after the day ends.
- `sp:{usage}:day:<day>`: the day's aggregates, a hash of counters whose fields are
  `client\\x1fmodel\\x1ftarget\\x1fcounter`, expiring `daily_retention` after the day ends.

All keys share the `{usage}` hash tag, so a batch is one atomic script on one shard of a
Redis Cluster (which then carries every replica's ledger writes: one script per replica per
flush interval, not per request).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

# KEYS[1] the batch marker, then the log keys, then the day keys.
# ARGV: batch ttl (ms), number of log keys, then per log key: expire-at (ms), n, n entries;
# then per day key: expire-at (ms), n, n (field, increment) pairs.
APPEND = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) == false then
  return 0
end
local logs, a, k = tonumber(ARGV[2]), 3, 2
for _ = 1, logs do
  local expire_at, n = ARGV[a], tonumber(ARGV[a + 1])
  for i = 1, n, 1000 do
    redis.call('RPUSH', KEYS[k], unpack(ARGV, a + 1 + i, a + 1 + math.min(i + 999, n)))
  end
  redis.call('PEXPIREAT', KEYS[k], expire_at)
  a, k = a + 2 + n, k + 1
end
while k <= #KEYS do
  local expire_at, n = ARGV[a], tonumber(ARGV[a + 1])
  for i = 0, n - 1 do
    redis.call('HINCRBY', KEYS[k], ARGV[a + 2 + 2 * i], ARGV[a + 3 + 2 * i])
  end
  redis.call('PEXPIREAT', KEYS[k], expire_at)
  a, k = a + 2 + 2 * n, k + 1
end
return 1
"""

_SEP = "\x1f"
_BATCH_MEMORY_MS = 86_400_000
_CHUNK = 5000  # entries read per LRANGE

Daily = Mapping[tuple[str, str, str, str], Mapping[str, int]]


def _log_key(day: str) -> str:
    return f"sp:{{usage}}:log:{day}"


def _day_key(day: str) -> str:
    return f"sp:{{usage}}:day:{day}"


def _end_ms(day: str, keep: float) -> int:
    """When a day's keys expire: `keep` seconds after the day ends (UTC)."""
    start = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return int((start + 86400 + keep) * 1000)


def days(first: str, last: str) -> list[str]:
    start = calendar.timegm(time.strptime(first, "%Y-%m-%d"))
    end = calendar.timegm(time.strptime(last, "%Y-%m-%d"))
    return [time.strftime("%Y-%m-%d", time.gmtime(t)) for t in range(start, end + 1, 86400)]


async def append(
    script: AsyncScript,
    batch: str,
    records: Sequence[tuple[float, bytes]],
    daily: Daily,
    retention: float,
    daily_retention: float,
) -> bool:
    by_day: dict[str, list[bytes]] = {}
    for ts, data in records:
        by_day.setdefault(time.strftime("%Y-%m-%d", time.gmtime(ts)), []).append(data)
    fields: dict[str, list[Any]] = {}
    for (day, client, model, target), counters in daily.items():
        pairs = fields.setdefault(day, [])
        for name, value in counters.items():
            pairs += [_SEP.join((client, model, target, name)), value]
    keys = [f"sp:{{usage}}:batch:{batch}"]
    args: list[Any] = [_BATCH_MEMORY_MS, len(by_day)]
    for day, entries in by_day.items():
        keys.append(_log_key(day))
        args += [_end_ms(day, retention), len(entries), *entries]
    for day, pairs in fields.items():
        keys.append(_day_key(day))
        args += [_end_ms(day, daily_retention), len(pairs) // 2, *pairs]
    return bool(await script(keys=keys, args=args))


async def records(client: aioredis.Redis, since: float, until: float) -> list[bytes]:
    first = time.strftime("%Y-%m-%d", time.gmtime(since))
    last = time.strftime("%Y-%m-%d", time.gmtime(until))
    out: list[bytes] = []
    for day in days(first, last):
        start = 0
        while True:
            chunk = await client.lrange(_log_key(day), start, start + _CHUNK - 1)
            out += [e for e in chunk if isinstance(e, bytes)]
            if len(chunk) < _CHUNK:
                break
            start += _CHUNK
    return out  # filtered by time by the caller, which parses them anyway


async def daily_rows(
    client: aioredis.Redis, first: str, last: str
) -> list[tuple[tuple[str, str, str, str], dict[str, int]]]:
    wanted = days(first, last)
    async with client.pipeline(transaction=False) as pipe:
        for day in wanted:
            pipe.hgetall(_day_key(day))
        replies = await pipe.execute()
    out: dict[tuple[str, str, str, str], dict[str, int]] = {}
    for day, hash_ in zip(wanted, replies, strict=True):
        for field, value in hash_.items():
            client_, model, target, name = field.decode().split(_SEP)
            out.setdefault((day, client_, model, target), {})[name] = int(value)
    return list(out.items())

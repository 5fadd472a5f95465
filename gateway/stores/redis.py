"""The shared store for many replicas: Redis.

The request path's commands (cache and journal reads, every script: limits, cache puts,
idempotency, runs, ejections) go through `stores.resp`, one connection on which they
pipeline; the rest (multi-command transactions, the ledger, reports) through redis.asyncio's
pool (hiredis parser). Every operation is one round trip. Key names carry a hash tag, so keys
that one operation touches together live in one Redis Cluster slot:

- `sp:{ejections}:<target>`: a breaker ejection, expiring with it.
- `sp:{cache:<group>}:<key>`: a cached value (bytes), with its TTL.
- `sp:{cache:<group>}:index`: the group's sorted set of value key names, scored by put time
  (server clock, microseconds), which eviction trims to `max_entries`.
- `sp:{run:<run>}:step:<step>`: a journal answer (bytes).
- `sp:{run:<run>}:steps`: the list of the run's step metas, in put order.
- `sp:{run:<run>}:stepkeys`: the set of the run's answer key names, so that a put can refresh
  them all and a drop can delete them.
- `sp:{run:<run>}:counters`: the hash of the run's counters.

- `sp:{idem:<key>}`: an idempotency record, a hash (fp, owner, state, meta, lease: the
  server's clock in ms), and `sp:{idem:<key>}:log`, its log, a string that writes APPEND to.

- `sp:{limits}:rate:<key>`: a rate's TAT (ms, a string), expiring when the bucket is full
  again (`PX` = TAT - now), so an idle bucket vanishes.
- `sp:{limits}:slots:<key>`: a slots limit's sorted set of request ids scored by lease expiry
  (ms), reaped with ZREMRANGEBYSCORE, expiring with its longest lease.
- `sp:{limits}:quota:<key>`: a quota's hash (used, expires: the end of its period in ms),
  expiring at the end of its period (PEXPIREAT).

All of a run's keys share its deadline: a put sets the same TTL on every one of them. Leases
are timed by the server's clock, so replicas with skewed clocks agree on them.

Limits: one script call admits a request through all of its limits (client, model and
deployment scopes alike), so all limit keys share one hash tag, `{limits}`: on Redis Cluster
every limit lives in one slot, hence on one shard, which then carries all admission traffic
(tens of thousands of scripts a second; enough until a deployment outgrows one shard). A
tag per client would spread them, but limits shared between clients (a model's, a
deployment's) would then sit in other slots, out of reach of one atomic script: that takes
a reserve in each slot and a compensating release on refusal, which this does not do yet.
The scripts do the arithmetic of `gateway.decide.limits` in the same order of operations,
with the server's clock; numbers travel as strings ('%.17g', which round-trip a double),
since Redis would truncate a Lua number in a reply to an integer and `tostring` keeps only
14 digits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.decide import limits
from gateway.decide.ledger import DayKey
from gateway.decide.limits import Kind, Quota, Rate, Slots, Status, Verdict
from gateway.stores import redis_usage
from gateway.stores.base import IdemRecord, StoreUnavailable
from gateway.stores.resp import Address, RespClient, Script

# KEYS[1] value key, KEYS[2] the group's index; ARGV value, ttl (ms), max_entries.
#
# Index members whose value has expired are not looked for: the index is trimmed by count, so
# it never holds more than `max_entries` names, and its own TTL (the longest TTL put into it)
# drops it once the whole group has expired. With one TTL per group, as the gateway uses,
# values expire in put order, so expired names are always the oldest and are trimmed first;
# with mixed TTLs a group can hold fewer than `max_entries` live entries for a while, which
# the contract ("at most") allows.
#
# The trimmed value keys are not in KEYS, which Redis Cluster tolerates because they share
# the group's hash tag, hence its slot.
# Create the ejection, or only lengthen it: a shorter ejection never cuts a longer one. The
# value is the publisher's wall time, so a replica can ignore ejections older than itself.
_EJECT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
"""

_CACHE_PUT = """
local ttl, max_entries = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], t[1] * 1000000 + t[2], KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - max_entries
if excess > 0 then
  local evicted = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  for i = 1, #evicted, 1000 do  -- DEL in slices: unpack() has a stack limit
    redis.call('DEL', unpack(evicted, i, math.min(i + 999, #evicted)))
  end
end
local left = redis.call('PTTL', KEYS[2])
if left < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
"""

# KEYS[1] answer key, KEYS[2] steps list, KEYS[3] step keys set, KEYS[4] counters hash;
# ARGV value, meta, ttl (ms). Every key of the run gets the TTL, so they expire together; the
# answer keys are not in KEYS, which Redis Cluster tolerates as they share the run's hash tag.
_JOURNAL_PUT = """
local ttl = ARGV[3]
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('PEXPIRE', name, ttl)
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
"""

# KEYS[1] step keys set, then the run's other keys; returns how many answers existed.
_JOURNAL_DROP = """
local names = redis.call('SMEMBERS', KEYS[1])
local dropped = 0
for i = 1, #names, 1000 do  -- DEL in slices: unpack() has a stack limit
  dropped = dropped + redis.call('DEL', unpack(names, i, math.min(i + 999, #names)))
end
redis.call('DEL', unpack(KEYS))
return dropped
"""

# KEYS[1] the record, KEYS[2] its log. The time of the Redis server in ms, for leases.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV fingerprint, owner, lease (ms), ttl (ms). Returns the record holding the key, or false
# (nil in Python) once the key is ours.
_IDEM_CLAIM = (
    _NOW
    + """
local r = redis.call('HMGET', KEYS[1], 'fp', 'owner', 'state', 'meta', 'lease')
if r[1] and (r[3] == 'done' or (r[3] == 'running' and tonumber(r[5]) > now)) then
  return {r[1], r[2], r[3], r[4], redis.call('GET', KEYS[2]) or '', tonumber(r[5]) - now}
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'state', 'running', 'meta', '',
           'lease', now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return false
"""
)

# ARGV offset.
_IDEM_READ = (
    _NOW
    + """
local r = redis.call('HMGET', KEYS[1], 'fp', 'owner', 'state', 'meta', 'lease')
if not r[1] then
  return false
end
return {r[1], r[2], r[3], r[4], redis.call('GETRANGE', KEYS[2], ARGV[1], -1), tonumber(r[5]) - now}
"""
)

# ARGV owner, then (write) meta, data, lease (ms), at or (end) state, meta, data, ttl (ms), at.
# `at` ('' for none): where `data` starts in the log; what the log already holds is skipped.
_IDEM_OWNED = """
local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
if r[1] ~= ARGV[1] or r[2] ~= 'running' then
  return 0
end
local function tail(data, at)
  if at == '' then
    return data
  end
  local have = redis.call('STRLEN', KEYS[2]) - tonumber(at)
  if have < 0 then
    return nil
  end
  return string.sub(data, have + 1)
end
"""

_IDEM_WRITE = (
    _NOW
    + _IDEM_OWNED
    + """
local data = tail(ARGV[3], ARGV[5])
if data == nil then
  return 0
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'meta', ARGV[2])
end
local lease = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'lease', now + lease)
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
if data ~= '' then
  redis.call('APPEND', KEYS[2], data)
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
end
return 1
"""
)

_IDEM_END = (
    _IDEM_OWNED
    + """
local data = tail(ARGV[4], ARGV[6])
if data == nil then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'meta', ARGV[3])
if data ~= '' then
  redis.call('APPEND', KEYS[2], data)
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""
)


# The clock: ARGV[1] (ms) when given, for tests that compare with the pure decision; else the
# server's. `num` formats a number so that it round-trips (redis.call would use '%.14g');
# `ms` an integer of ms, rounded up, for PX and PEXPIREAT.
_LIMITS_PRELUDE = """
local MINUTE, GRID = 60000, 1024
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function on_grid(x)
  return math.floor(x * GRID) / GRID
end
local grid_now = on_grid(now)
local function charge(t, cost)
  local x = math.floor(t * math.abs(cost) * GRID) / GRID
  if cost < 0 then
    return -x
  end
  return x
end
local function num(x)
  return string.format('%.17g', x)
end
local function ms(x)
  return string.format('%d', math.ceil(x))
end
local function backlog(key)
  return math.max((tonumber(redis.call('GET', key)) or grid_now) - grid_now, 0)
end
"""

# KEYS: the rates' TATs, the slots' sorted sets, the quotas' hashes. ARGV: now ('' for the
# server's), request id, lease (ms), #rates, #slots, #quotas, then per rate: per_minute, cost;
# per slots: limit; per quota: limit, cost, expires (ms). Returns {allowed, blocked (index
# from 1; 0: none), exceeds, retry (ms), then per limit: remaining, reset (ms)}.
_LIMITS_ADMIT = (
    _LIMITS_PRELUDE
    + """
local SLOTS_RETRY = 1000
local rid, lease = ARGV[2], tonumber(ARGV[3])
local nr, ns, nq = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local stands, admitted, writes = {}, {}, {}
local blocked, retry, exceeds = 0, 0, 0
local function refuse(i, wait, never)
  if exceeds == 1 then
    return
  end
  if blocked == 0 or never or wait > retry then
    blocked, retry, exceeds = i, wait, never and 1 or 0
  end
end
-- limit i's remaining and reset (ms) as it stands, and once this request is admitted
local function put(i, remaining, reset, remaining_after, reset_after)
  stands[2 * i - 1], stands[2 * i] = remaining, reset
  admitted[2 * i - 1], admitted[2 * i] = remaining_after, reset_after
end
local function units(ahead, t)
  return math.max(math.floor((MINUTE - ahead) / t), 0)
end
local a = 7
for i = 1, nr do
  local per_minute, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  if per_minute <= 0 then
    put(i, 0, 0, 0, 0)
    refuse(i, math.huge, true)
  else
    local t = MINUTE / per_minute
    local c = charge(t, cost)
    local ahead = backlog(KEYS[i])
    local after = ahead + c
    put(i, units(ahead, t), ahead, units(after, t), after)
    if after <= MINUTE then
      writes[i] = after
    else
      refuse(i, after - MINUTE, c > MINUTE)
    end
  end
end
for i = nr + 1, nr + ns do
  local limit = tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', num(now))
  local held = redis.call('ZCARD', KEYS[i])
  local others = held - (redis.call('ZSCORE', KEYS[i], rid) and 1 or 0)
  put(i, math.max(limit - held, 0), 0, limit - others - 1, 0)
  if others >= limit then
    if limit < 1 then
      refuse(i, math.huge, true)
    else
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      refuse(i, math.min(SLOTS_RETRY, tonumber(first[2]) - now), false)
    end
  end
end
for i = nr + ns + 1, nr + ns + nq do
  local limit, cost, expires = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local r = redis.call('HMGET', KEYS[i], 'used', 'expires')
  local used = 0
  if r[1] and tonumber(r[2]) > now then
    used = tonumber(r[1])
  end
  local reset = math.max(expires - now, 0)
  put(i, math.max(limit - used, 0), reset, math.max(limit - (used + cost), 0), reset)
  if used + cost <= limit then
    writes[i] = used + cost
  else
    refuse(i, reset, cost > limit)
  end
end
local out = blocked == 0 and admitted or stands
if blocked == 0 then
  for i = 1, nr do
    if writes[i] > 0 then
      redis.call('SET', KEYS[i], num(grid_now + writes[i]), 'PX', ms(writes[i]))
    else
      redis.call('DEL', KEYS[i])
    end
  end
  for i = nr + 1, nr + ns do
    redis.call('ZADD', KEYS[i], num(now + lease), rid)
    if redis.call('PTTL', KEYS[i]) < lease then
      redis.call('PEXPIRE', KEYS[i], ms(lease))
    end
  end
  a = 7 + 2 * nr + ns
  for i = nr + ns + 1, nr + ns + nq do
    redis.call('HSET', KEYS[i], 'used', num(writes[i]), 'expires', ARGV[a + 2])
    redis.call('PEXPIREAT', KEYS[i], ms(tonumber(ARGV[a + 2])))
    a = a + 3
  end
end
for i = 1, #out do
  out[i] = num(out[i])
end
return {blocked == 0 and 1 or 0, blocked, exceeds, num(retry), unpack(out)}
"""
)

# KEYS: the rates' TATs, the quotas' hashes, the slots' sorted sets. ARGV: now ('' for the
# server's), request id, #rates, #quotas, #slots, then per rate: per_minute, delta; per
# quota: delta, expires (ms).
_LIMITS_SETTLE = (
    _LIMITS_PRELUDE
    + """
local rid = ARGV[2]
local nr, nq, ns = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local a = 6
for i = 1, nr do
  local per_minute, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  if per_minute > 0 then
    local ahead = math.max(backlog(KEYS[i]) + charge(MINUTE / per_minute, delta), 0)
    if ahead > 0 then
      redis.call('SET', KEYS[i], num(grid_now + ahead), 'PX', ms(ahead))
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
for i = nr + 1, nr + nq do
  local delta, expires = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  if expires > now then
    local r = redis.call('HMGET', KEYS[i], 'used', 'expires')
    local used = 0
    if r[1] and tonumber(r[2]) > now then
      used = tonumber(r[1])
    end
    redis.call('HSET', KEYS[i], 'used', num(math.max(used + delta, 0)), 'expires', num(expires))
    redis.call('PEXPIREAT', KEYS[i], ms(expires))
  end
end
for i = nr + nq + 1, nr + nq + ns do
  redis.call('ZREM', KEYS[i], rid)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', num(now))
end
"""
)


_SCRIPTS = {
    name: Script(source)
    for name, source in (
        ("cache_put", _CACHE_PUT), ("eject", _EJECT), ("journal_put", _JOURNAL_PUT),
        ("journal_drop", _JOURNAL_DROP), ("claim", _IDEM_CLAIM), ("read", _IDEM_READ),
        ("write", _IDEM_WRITE), ("end", _IDEM_END), ("admit", _LIMITS_ADMIT),
        ("settle", _LIMITS_SETTLE),
    )
}  # fmt: skip


class RedisStore:
    def __init__(self, url: str):
        self._url = url
        self._address = Address.parse(url)
        if self._address is None:
            raise ValueError(f"not a Redis URL this store reads: {_without_password(url)}")
        self._client: aioredis.Redis | None = None
        self._fast: RespClient | None = None
        self._usage_append: AsyncScript | None = None

    def describe(self) -> str:
        return f"redis {_without_password(self._url)}"

    async def open(self) -> None:
        # A blocking pool: under load a call waits (briefly) for a free connection instead of
        # failing with "Too many connections", redis-py's default pool behaviour.
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=_MAX_CONNECTIONS,
            timeout=2.0,
            socket_connect_timeout=2.0,
            socket_timeout=2.0,
            health_check_interval=30,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        # both connect lazily: a Redis that is down at start is reported by /readyz, not fatal
        assert self._address is not None
        self._fast = RespClient(self._address, _without_password(self._url), timeout=2.0)
        # EVALSHA, loading the script on the first NOSCRIPT (a new or restarted server)
        self._usage_append = self._client.register_script(redis_usage.APPEND)

    async def ping(self) -> None:
        await self._open_fast().call("PING")

    async def eject(self, target: str, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        await self._run("eject", [_ejection_key(target)], [ms, repr(time.time())])

    async def ejections(self, targets: Sequence[str], since: float) -> dict[str, float]:
        if not targets:
            return {}
        client = self._open_client()
        with self._translated():
            async with client.pipeline(transaction=False) as pipe:  # one round trip
                for target in targets:
                    pipe.get(_ejection_key(target))
                    pipe.pttl(_ejection_key(target))
                replies = await pipe.execute()
        found = {}
        for i, target in enumerate(targets):
            published, ms = replies[2 * i], replies[2 * i + 1]
            if published is not None and ms > 0 and float(published) >= since:
                found[target] = ms / 1000
        return found

    async def cache_get(self, key: str, group: str) -> bytes | None:
        value = await self._open_fast().call("GET", _cache_key(group, key))
        assert value is None or isinstance(value, bytes)  # the client does not decode
        return value

    async def cache_put(
        self, key: str, value: bytes, ttl: float, group: str, max_entries: int
    ) -> None:
        keys = [_cache_key(group, key), _cache_index(group)]
        await self._run("cache_put", keys, [value, max(1, int(ttl * 1000)), max_entries])

    async def cache_delete(self, key: str, group: str) -> None:
        client = self._open_client()
        name = _cache_key(group, key)
        with self._translated():
            async with client.pipeline(transaction=True) as pipe:  # one round trip
                pipe.delete(name)
                pipe.zrem(_cache_index(group), name)  # frees its place in the group
                await pipe.execute()

    async def journal_get(self, run: str, step: str) -> bytes | None:
        value = await self._open_fast().call("GET", _run_key(run, f"step:{step}"))
        assert value is None or isinstance(value, bytes)
        return value

    async def journal_put(self, run: str, step: str, value: bytes, meta: bytes, ttl: float) -> None:
        keys = [_run_key(run, f"step:{step}"), *_run_keys(run)]
        await self._run("journal_put", keys, [value, meta, max(1, int(ttl * 1000))])

    async def journal_steps(self, run: str) -> list[bytes]:
        client = self._open_client()
        with self._translated():
            metas = await client.lrange(_run_key(run, "steps"), 0, -1)
        return [meta for meta in metas if isinstance(meta, bytes)]  # the client does not decode

    async def journal_count(self, run: str, counter: str, ttl: float) -> int:
        client = self._open_client()
        name = _run_key(run, "counters")
        with self._translated():
            async with client.pipeline(transaction=True) as pipe:  # one round trip
                pipe.hincrby(name, counter, 1)
                pipe.pexpire(name, max(1, int(ttl * 1000)))
                count, _ = await pipe.execute()
        return int(count)

    async def journal_drop(self, run: str) -> int:
        steps, stepkeys, counters = _run_keys(run)
        return int(await self._run("journal_drop", [stepkeys, steps, counters], []))

    async def idem_claim(
        self, key: str, fingerprint: str, owner: str, lease: float, ttl: float
    ) -> IdemRecord | None:
        args = [fingerprint, owner, _ms(lease), _ms(ttl)]
        return _record(await self._idem_call("claim", key, args))

    async def idem_read(self, key: str, offset: int) -> IdemRecord | None:
        return _record(await self._idem_call("read", key, [offset]))

    async def idem_write(
        self,
        key: str,
        owner: str,
        meta: bytes,
        data: bytes,
        lease: float,
        at: int | None = None,
    ) -> bool:
        args = [owner, meta, data, _ms(lease), "" if at is None else at]
        return bool(await self._idem_call("write", key, args))

    async def idem_end(
        self,
        key: str,
        owner: str,
        state: str,
        meta: bytes,
        data: bytes,
        ttl: float,
        at: int | None = None,
    ) -> bool:
        args = [owner, state, meta, data, _ms(ttl), "" if at is None else at]
        return bool(await self._idem_call("end", key, args))

    async def limits_admit(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
    ) -> Verdict:
        return await self._limits_admit(rates, slots, quotas, request_id, lease, None)

    async def _limits_admit(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
        now_ms: float | None,
    ) -> Verdict:
        """`limits_admit`, on the clock `now_ms` if given (tests), else the server's."""
        limits.check_distinct(rates, slots, quotas)
        if not (rates or slots or quotas):
            return Verdict(True, ())
        keys = [
            *(_limit_key("rate", r.key) for r in rates),
            *(_limit_key("slots", s.key) for s in slots),
            *(_limit_key("quota", q.key) for q in quotas),
        ]
        args: list[str | int] = [_clock(now_ms), request_id, repr(lease * 1000)]
        args += [len(rates), len(slots), len(quotas)]
        for rate in rates:
            args += [repr(float(rate.per_minute)), repr(float(rate.cost))]
        args += [slot.limit for slot in slots]
        for quota in quotas:
            args += [
                repr(float(quota.limit)),
                repr(float(quota.cost)),
                repr(float(quota.expires_ms)),
            ]
        reply = await self._run("admit", keys, args)
        allowed, blocked, exceeds, retry, *numbers = (float(x) for x in reply)
        given = [(r.key, Kind.RATE, r.per_minute) for r in rates]
        given += [(s.key, Kind.SLOTS, s.limit) for s in slots]
        given += [(q.key, Kind.QUOTA, q.limit) for q in quotas]
        statuses = tuple(
            Status(key, kind, limit, numbers[2 * i], numbers[2 * i + 1] / 1000)
            for i, (key, kind, limit) in enumerate(given)
        )
        if allowed:
            return Verdict(True, statuses)
        never = exceeds == 1
        retry_after = math.inf if never else max(retry, 0.0) / 1000
        return Verdict(False, statuses, retry_after, statuses[int(blocked) - 1], never)

    async def limits_settle(
        self,
        rates: Sequence[Rate],
        quotas: Sequence[Quota],
        slots: Sequence[Slots],
        request_id: str,
    ) -> None:
        await self._limits_settle(rates, quotas, slots, request_id, None)

    async def _limits_settle(
        self,
        rates: Sequence[Rate],
        quotas: Sequence[Quota],
        slots: Sequence[Slots],
        request_id: str,
        now_ms: float | None,
    ) -> None:
        limits.check_distinct(rates, slots, quotas)
        if not (rates or slots or quotas):
            return
        keys = [
            *(_limit_key("rate", r.key) for r in rates),
            *(_limit_key("quota", q.key) for q in quotas),
            *(_limit_key("slots", s.key) for s in slots),
        ]
        args: list[str | int] = [_clock(now_ms), request_id, len(rates), len(quotas), len(slots)]
        for rate in rates:
            args += [repr(float(rate.per_minute)), repr(float(rate.cost))]
        for quota in quotas:
            args += [repr(float(quota.cost)), repr(float(quota.expires_ms))]
        await self._run("settle", keys, args)

    async def usage_append(
        self,
        batch: str,
        records: Sequence[tuple[float, bytes]],
        daily: Mapping[DayKey, Mapping[str, int]],
        retention: float,
        daily_retention: float,
    ) -> bool:
        script = self._open_script(self._usage_append)
        with self._translated():
            return await redis_usage.append(
                script, batch, records, daily, retention, daily_retention
            )

    async def usage_records(self, since: float, until: float) -> list[bytes]:
        client = self._open_client()
        with self._translated():
            return await redis_usage.records(client, since, until)

    async def usage_daily(self, first: str, last: str) -> list[tuple[DayKey, dict[str, int]]]:
        client = self._open_client()
        with self._translated():
            return await redis_usage.daily_rows(client, first, last)

    async def _idem_call(self, name: str, key: str, args: list[Any]) -> Any:
        return await self._run(name, [f"sp:{{idem:{key}}}", f"sp:{{idem:{key}}}:log"], args)

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._open_fast().run(_SCRIPTS[script], keys, args)

    def _open_fast(self) -> RespClient:
        if self._fast is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._fast

    def _open_script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise StoreUnavailable("the Redis store is not open")
        return script

    def _open_client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("the Redis store is not open")
        return self._client

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"Redis at {_without_password(self._url)}: {e}") from None

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
            self._fast = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._usage_append = None


_MAX_CONNECTIONS = 256


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _record(reply: Any) -> IdemRecord | None:
    if not reply:
        return None
    fp, owner, state, meta, data, lease_ms = reply
    return IdemRecord(fp.decode(), owner.decode(), state.decode(), meta, data, lease_ms / 1000)


def _ejection_key(target: str) -> str:
    # One hash tag for all ejections: a replica reads them all in one pipeline, and on Redis
    # Cluster they live in one slot.
    return f"sp:{{ejections}}:{target}"


def _cache_key(group: str, key: str) -> str:
    # A group name holding `}` ends the hash tag early; the tag is still the same for every key
    # of that group, so its keys still share a slot. Keys are hex, never "index".
    return f"sp:{{cache:{group}}}:{key}"


def _cache_index(group: str) -> str:
    return f"sp:{{cache:{group}}}:index"


def _run_key(run: str, suffix: str) -> str:
    # Run ids are `[A-Za-z0-9_.:-]`: never a `}` that would end the hash tag early.
    return f"sp:{{run:{run}}}:{suffix}"


def _run_keys(run: str) -> tuple[str, str, str]:
    """The run's steps list, step keys set and counters hash."""
    return _run_key(run, "steps"), _run_key(run, "stepkeys"), _run_key(run, "counters")


def _limit_key(kind: str, key: str) -> str:
    # One hash tag for every limit: one script checks limits of every scope (module docstring).
    return f"sp:{{limits}}:{kind}:{key}"


def _clock(now_ms: float | None) -> str:
    return "" if now_ms is None else repr(float(now_ms))


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest

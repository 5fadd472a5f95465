"""The shared store for many replicas: Redis through redis.asyncio (hiredis parser, pooled).

Every operation is one round trip. Key names carry a hash tag, so keys that one operation
touches together live in one Redis Cluster slot:

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

All of a run's keys share its deadline: a put sets the same TTL on every one of them. Leases
are timed by the server's clock, so replicas with skewed clocks agree on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.stores.base import IdemRecord, StoreUnavailable

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


class RedisStore:
    def __init__(self, url: str):
        self._url = url
        self._client: aioredis.Redis | None = None
        self._cache_put: AsyncScript | None = None
        self._eject: AsyncScript | None = None
        self._journal_put: AsyncScript | None = None
        self._journal_drop: AsyncScript | None = None
        self._idem: dict[str, AsyncScript] = {}

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
        # connects lazily: a Redis that is down at start is reported by /readyz, not fatal
        # EVALSHA, loading the script on the first NOSCRIPT (a new or restarted server)
        self._cache_put = self._client.register_script(_CACHE_PUT)
        self._eject = self._client.register_script(_EJECT)
        self._journal_put = self._client.register_script(_JOURNAL_PUT)
        self._journal_drop = self._client.register_script(_JOURNAL_DROP)
        self._idem = {
            name: self._client.register_script(source)
            for name, source in (("claim", _IDEM_CLAIM), ("read", _IDEM_READ),
                                 ("write", _IDEM_WRITE), ("end", _IDEM_END))
        }  # fmt: skip

    async def ping(self) -> None:
        client = self._open_client()
        with self._translated():
            await client.ping()

    async def eject(self, target: str, seconds: float) -> None:
        script = self._eject
        if script is None:
            raise StoreUnavailable("the Redis store is not open")
        with self._translated():
            ms = max(1, int(seconds * 1000))
            await script(keys=[_ejection_key(target)], args=[ms, repr(time.time())])

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
        client = self._open_client()
        with self._translated():
            value = await client.get(_cache_key(group, key))
        assert value is None or isinstance(value, bytes)  # the client does not decode
        return value

    async def cache_put(
        self, key: str, value: bytes, ttl: float, group: str, max_entries: int
    ) -> None:
        script = self._cache_put
        if script is None:
            raise StoreUnavailable("the Redis store is not open")
        keys = [_cache_key(group, key), _cache_index(group)]
        with self._translated():
            await script(keys=keys, args=[value, max(1, int(ttl * 1000)), max_entries])

    async def cache_delete(self, key: str, group: str) -> None:
        client = self._open_client()
        name = _cache_key(group, key)
        with self._translated():
            async with client.pipeline(transaction=True) as pipe:  # one round trip
                pipe.delete(name)
                pipe.zrem(_cache_index(group), name)  # frees its place in the group
                await pipe.execute()

    async def journal_get(self, run: str, step: str) -> bytes | None:
        client = self._open_client()
        with self._translated():
            value = await client.get(_run_key(run, f"step:{step}"))
        assert value is None or isinstance(value, bytes)
        return value

    async def journal_put(self, run: str, step: str, value: bytes, meta: bytes, ttl: float) -> None:
        script = self._open_script(self._journal_put)
        keys = [_run_key(run, f"step:{step}"), *_run_keys(run)]
        with self._translated():
            await script(keys=keys, args=[value, meta, max(1, int(ttl * 1000))])

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
        script = self._open_script(self._journal_drop)
        steps, stepkeys, counters = _run_keys(run)
        with self._translated():
            dropped = await script(keys=[stepkeys, steps, counters])
        return int(dropped)

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

    async def _idem_call(self, name: str, key: str, args: list[Any]) -> Any:
        script = self._open_script(self._idem.get(name))
        with self._translated():
            return await script(keys=[f"sp:{{idem:{key}}}", f"sp:{{idem:{key}}}:log"], args=args)

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
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._cache_put = None
            self._eject = None
            self._journal_put = None
            self._journal_drop = None
            self._idem = {}


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


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest

"""What a request's `Cache-Control` asks of the response cache.

Cache-Control        look up   store    x-savepoint-cache
(none)               yes       yes      hit | miss
no-cache             no        yes      refresh   (skip the cache, store the new answer)
no-store             yes       no       hit | miss
no-cache, no-store   no        no       bypass
"""

from __future__ import annotations

from gateway.values import value


@value
class CacheMode:
    lookup: bool
    store: bool
    label: str  # the header value when nothing is found (a hit is always "hit")


def cache_mode(cache_control: str | None) -> CacheMode:
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    no_cache, no_store = "no-cache" in directives, "no-store" in directives
    if no_cache and no_store:
        return CacheMode(lookup=False, store=False, label="bypass")
    if no_cache:
        return CacheMode(lookup=False, store=True, label="refresh")
    return CacheMode(lookup=True, store=not no_store, label="miss")

"""The leases this worker holds on busy limits (`decide.leases`): what is left of each, the
recent demand that sizes the next one, and what the store last said about the limit.

Two calls make the protocol: `take` and `settle`. A request's rates and budget quotas are
first taken from the leases; those a lease cannot cover go to the store with the request,
each with a top-up when the limit is busy enough (`_plan`). What the store admitted is added
to the leases (`_admitted`); what it refused is put back (`_undo`). A settlement's credit (a
request that took fewer tokens than it reserved) goes back into a live lease instead of a
store write (`_credit`). What is left of a lease goes back
to the store once the lease lapses (`LEASE_TTL` after its last top-up; a sweep every
`LEASE_TTL` returns the lapsed ones, so within twice that), and at shutdown (`close`).

The answer's `x-ratelimit-remaining-*` for a leased limit is what the store said was left
plus what this worker still holds (at most the limit: a rate refills meanwhile): exact with
one worker, and within the other workers' unused leases otherwise.

A lease is topped up before it runs out: the request that finds it half used (or half way to
`LEASE_TTL`) goes to the store with the top-up, and the requests meanwhile are admitted from
what is left. A key has at most one top-up in flight; requests meanwhile that the lease cannot
cover go to the store with their own cost only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import TypeVar

from gateway.decide.admission import Limits
from gateway.decide.leases import HORIZON, LEASE_TTL, lease_size, leased_quota
from gateway.decide.limits import Kind, Quota, Rate, Slots, Status, Verdict
from gateway.stages.guard import StoreGuard
from gateway.stores.base import Store
from gateway.values import value

L = TypeVar("L", Rate, Quota)
_IDLE = 60.0  # seconds without a request after which a limit's record is forgotten
# Plans between two looks for idle records: a budget's key changes with its period, so the
# records of past periods (and of limits never leased) would otherwise stay for good.
_PRUNE_EVERY = 10_000


class _Held:
    """One limit as this worker sees it."""

    __slots__ = ("balance", "expires", "last", "limit", "previous", "slot", "status", "topping",
                 "used")  # fmt: skip

    def __init__(self, limit: Rate | Quota):
        self.limit = limit  # the latest seen: what a return is written with
        self.balance = 0.0  # units leased and not used yet
        self.expires = 0.0  # loop time when the balance goes back
        self.status: Status | None = None  # what the store last said (without the balance)
        self.topping = False  # a top-up is in flight
        self.slot = self.last = 0.0  # demand: units used since `slot` began, and before it
        self.used = self.previous = 0.0

    def use(self, cost: float, now: float) -> None:
        if now - self.slot >= HORIZON:
            self.previous = self.used if now - self.slot < 2 * HORIZON else 0.0
            self.slot, self.used = now, 0.0
        self.used += cost
        self.last = now

    def demand(self) -> float:
        return max(self.used, self.previous)

    def low(self, now: float) -> bool:
        """Whether to top the lease up now, before it runs out (half of it used, or half of
        its time), so that the requests meanwhile are still admitted from it."""
        return self.balance < self.demand() / 2 or self.expires - now < LEASE_TTL / 2


@value
class Plan:
    """How a request's leasable limits are admitted: from leases, or in the store."""

    local: tuple[tuple[str, float], ...]  # (key, cost) taken from a lease
    rates: tuple[Rate, ...]  # for the store, costs including their top-ups
    quotas: tuple[Quota, ...]
    top_ups: tuple[tuple[str, float], ...]  # (key, units) taken beyond the request's cost


class Leases:
    def __init__(self, store: Store, guard: StoreGuard):
        self._store = store
        self._guard = guard
        self._held: dict[str, _Held] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._returning: asyncio.Task[None] | None = None
        self._plans = 0

    def _plan(self, rates: Sequence[Rate], quotas: Sequence[Quota]) -> Plan:
        """Take what leases cover (for good: `undo` puts it back) and say what the store must
        admit; quotas that are not leasable go to the store as they are."""
        now = asyncio.get_running_loop().time()
        self._plans += 1
        if self._plans % _PRUNE_EVERY == 0:
            self._prune(now)
        local: list[tuple[str, float]] = []
        top_ups: list[tuple[str, float]] = []
        remote_rates: list[Rate] = []
        remote_quotas: list[Quota] = []
        every: list[Rate | Quota] = [*rates, *quotas]
        for limit in every:
            if isinstance(limit, Quota) and not leased_quota(limit.key):
                remote_quotas.append(limit)
                continue
            held = self._held.get(limit.key)
            if held is None:
                held = self._held[limit.key] = _Held(limit)
            held.limit = limit
            held.use(limit.cost, now)
            covered = held.balance >= limit.cost and held.expires > now
            size = 0.0
            if not held.topping and held.status is not None and (not covered or held.low(now)):
                size = lease_size(held.demand(), limit.cost, held.status.remaining)
            if covered and not size:
                held.balance -= limit.cost
                local.append((limit.key, limit.cost))
                continue
            if size:
                held.topping = True
                top_ups.append((limit.key, size))
                limit = dataclasses.replace(limit, cost=limit.cost + size)
            if isinstance(limit, Rate):
                remote_rates.append(limit)
            else:
                remote_quotas.append(limit)
        return Plan(tuple(local), tuple(remote_rates), tuple(remote_quotas), tuple(top_ups))

    async def take(
        self,
        rates: Sequence[Rate],
        slots: Sequence[Slots],
        quotas: Sequence[Quota],
        request_id: str,
        lease: float,
    ) -> tuple[Verdict | None, bool]:
        """Admit a request through its limits, from leases where they cover it and in the
        store otherwise: (the verdict, whether the store was asked). Admitted, the verdict's
        statuses count what this worker holds; refused, it is the store's, and nothing is
        taken; None when the store could not be asked (fail open)."""
        plan = self._plan(rates, quotas)
        if not (plan.rates or plan.quotas or slots):
            return Verdict(True, self._admitted(plan, None)), False
        while True:
            admit = self._store.limits_admit(plan.rates, slots, plan.quotas, request_id, lease)
            ok, verdict = await self._guard.call(admit)
            if not ok or verdict is None:
                self._failed(plan)
                return None, True
            if verdict.allowed:
                return Verdict(True, self._admitted(plan, verdict)), True
            if not plan.top_ups:
                self._undo(plan)
                return verdict, True
            plan = self._without_top_ups(plan)  # refused with a lease: try without

    async def settle(self, fix: Limits, request_id: str) -> None:
        """Write a settlement (`decide.admission.settlement`): credits to live leases join
        them; slots are given back before this returns, token corrections in the
        background; nothing when nothing is left to write."""
        rates, quotas = self._credit(fix.rates, fix.quotas)
        if not (rates or quotas or fix.slots):
            return
        write = self._store.limits_settle(rates, quotas, fix.slots, request_id)
        if fix.slots:
            await self._guard.call(write)
        else:
            self._guard.later(write)

    def _without_top_ups(self, plan: Plan) -> Plan:
        """The same request without its top-ups (the store refused it with them)."""
        extra = dict(plan.top_ups)
        self._done_topping(plan)

        def own(limit: L) -> L:
            size = extra.get(limit.key)
            return dataclasses.replace(limit, cost=limit.cost - size) if size else limit

        return Plan(plan.local, tuple(map(own, plan.rates)), tuple(map(own, plan.quotas)), ())

    def _undo(self, plan: Plan) -> None:
        """The request was refused: what it took from leases goes back into them."""
        for key, cost in plan.local:
            held = self._held.get(key)
            if held is not None:
                held.balance += cost
        self._done_topping(plan)

    def _admitted(self, plan: Plan, verdict: Verdict | None) -> tuple[Status, ...]:
        """The request was admitted (`verdict`: the store's, None if it was not asked): the
        top-ups join their leases. The statuses of every limit, leased ones counting what
        this worker holds."""
        now = asyncio.get_running_loop().time()
        for key, size in plan.top_ups:
            held = self._held[key]
            held.topping = False
            held.balance += size
            held.expires = now + LEASE_TTL
            self._sweep_later()
        statuses: list[Status] = []
        for status in verdict.limits if verdict is not None else ():
            leased = self._held.get(status.key) if status.kind is not Kind.SLOTS else None
            if leased is None:
                statuses.append(status)
            else:
                leased.status = status
        for key in (*(k for k, _ in plan.local), *(r.key for r in plan.rates),
                    *(q.key for q in plan.quotas)):  # fmt: skip
            mine = self._held.get(key)
            known = mine.status if mine is not None else None
            if mine is not None and known is not None:
                # a rate refills: the store may say it is full while this worker holds units
                left = min(known.remaining + mine.balance, known.limit)
                statuses.append(Status(key, known.kind, known.limit, left, known.reset))
        return tuple(statuses)

    def _failed(self, plan: Plan) -> None:
        """The store could not be asked: the request goes through (fail open), no top-up."""
        self._done_topping(plan)

    def _credit(
        self, rates: Sequence[Rate], quotas: Sequence[Quota]
    ) -> tuple[tuple[Rate, ...], tuple[Quota, ...]]:
        """A settlement's corrections: credits to limits with a live lease join it; the rest
        (debits, and limits without one) are returned, for the store."""
        now = asyncio.get_running_loop().time()

        def kept(limit: Rate | Quota) -> bool:
            held = self._held.get(limit.key)
            if limit.cost < 0 and held is not None and held.expires > now:
                held.balance -= limit.cost
                return False
            return True

        return tuple(r for r in rates if kept(r)), tuple(q for q in quotas if kept(q))

    async def close(self) -> None:
        """Give back every lease."""
        if self._sweep is not None:
            self._sweep.cancel()
        if self._returning is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._returning
        await self._give_back(everything=True)

    def _prune(self, now: float) -> None:
        """Forget the limits idle for `_IDLE` seconds that hold nothing."""
        for key in [k for k, h in self._held.items() if h.balance <= 0 and not h.topping
                    and now - h.last > _IDLE]:  # fmt: skip
            del self._held[key]

    def _done_topping(self, plan: Plan) -> None:
        for key, _ in plan.top_ups:
            self._held[key].topping = False

    def _sweep_later(self) -> None:
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(LEASE_TTL, self._start_return)

    def _start_return(self) -> None:
        self._sweep = None
        if self._returning is None or self._returning.done():
            self._returning = asyncio.get_running_loop().create_task(self._give_back())

    async def _give_back(self, everything: bool = False) -> None:
        """Write back what is left of the leases that lapsed (or of all of them), in one
        store call; sweep again while leases are held."""
        now = asyncio.get_running_loop().time()
        rates: list[Rate] = []
        quotas: list[Quota] = []
        for held in self._held.values():
            if held.balance > 0 and (everything or held.expires <= now):
                if isinstance(held.limit, Rate):
                    rates.append(dataclasses.replace(held.limit, cost=-held.balance))
                else:
                    quotas.append(dataclasses.replace(held.limit, cost=-held.balance))
                held.balance = 0.0
        if rates or quotas:
            await self._guard.call(self._store.limits_settle(rates, quotas, (), ""))
        if not everything and any(h.balance > 0 for h in self._held.values()):
            self._sweep_later()

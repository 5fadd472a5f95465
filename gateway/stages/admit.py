"""The admission stage: rate limits, concurrency limits and budgets, checked all at once.

Before a request goes on, every limit that applies to it (its client, its client on its
model, its model; its client's budget) is checked in one atomic store call: a request is
admitted through all of them or refused by one (429, OpenAI's body and headers) and charged
nothing. Token limits and budgets reserve an estimate (the prompt counted with tiktoken, plus
the output cap); once the request is over, `settle` corrects the reservation to the usage the
provider reported and frees the request's concurrency slots, in the background.

A store that cannot be reached lets requests through (fail open: an outage of the limits'
store must not become an outage of the gateway), logged once per outage; the answer says
`x-savepoint-degraded: store`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from gateway.breakers import EventSink
from gateway.config.schema import ClientSpec, GuardSpec, LimitSpec, ModelSpec, Policy
from gateway.decide.admission import (
    MICRO,
    Limits,
    Reservation,
    budget_used,
    guard_limits,
    limits_for,
    looping,
    needs_tokens,
    ratelimit_headers,
    refusal,
    settlement,
)
from gateway.decide.cost import cost_usd, deployment_prices
from gateway.decide.keys import fingerprint
from gateway.decide.limits import Status, Verdict
from gateway.model import Call, Principal, Trace, Usage
from gateway.stages.guard import StoreGuard
from gateway.stages.leases import Leases
from gateway.stages.repeats import Counting, Repeats
from gateway.stores.base import Store
from gateway.tokens import Tokenizer
from gateway.values import value

DEFAULT_OUTPUT = 1024  # tokens reserved for the answer of a request that sets no output cap
_LEASE_MARGIN = 60.0  # a concurrency lease outlives the route's deadline by this much
_WARNED_MAX = 10_000  # counters logged once each; forgotten wholesale past this many


@value
class Ticket:
    """An admitted request's reservation, to settle once it is over."""

    limits: Limits
    reservation: Reservation
    request_id: str


class Admission:
    def __init__(
        self,
        policy: Policy,
        store: Store,
        tokenizer: Tokenizer | None,
        events: EventSink,
        deployments: Mapping[str, LimitSpec],
    ):
        self._deployments = deployments  # the limits of the deployments that have some
        self._policy = policy
        self._tokenizer = tokenizer
        self._events = events
        self._guard = StoreGuard("limits", events, policy.server.max_pending_writes)
        self._leases = Leases(store, self._guard)
        self._repeats = Repeats(store, self._guard)
        self._warned: set[str] = set()  # budget periods and loop counters already logged
        self._prices = deployment_prices(policy.prices, policy.models.values())
        # (counted, anything applies) by (client, model): bounded by the policy's names
        self._applies: dict[tuple[str, str], tuple[bool, bool]] = {}
        self._leased: set[tuple[str, str]] = set()  # whose last request leases admitted

    async def admit(
        self, principal: Principal, spec: ModelSpec, call: Call, run: str | None, trace: Trace
    ) -> Ticket | None:
        """Admit the request (its ticket, or None when nothing applies) or raise the 429."""
        client = self._policy.clients.get(principal.name)
        guard = self._policy.guard
        counted, limited = self._applying(principal, spec)
        if not limited:
            return None  # no store call: the guard, by default, only rides along with limits
        reservation = await self._reserve(client, spec, call, counted)
        now = time.time()
        limits = limits_for(client, spec, reservation, now)
        counting: Counting | None = None  # the guard's count of this request
        if guard.enabled or (guard.enabled is None and limits):
            request = fingerprint("POST", call.endpoint.path, call.body)
            repeat, *runs = guard_limits(guard, principal.name, request, run, reservation, now)
            counting = self._repeats.counting(repeat, guard.repeats)
            if counting.in_store:
                runs.insert(0, counting.quota)
            limits = Limits(limits.rates, limits.slots, limits.quotas + tuple(runs))
        if not limits and counting is None:  # the estimate alone, for the deployments' limits
            return Ticket(limits, reservation, trace.request_id) if counted else None
        if counting is not None and counting.over:
            seen = counting.status(now)
            raise refusal(Verdict(False, (seen,), 0.0, seen), spec.name)
        statuses = None
        try:
            statuses = await self._take(limits, spec, trace, (principal.name, spec.name))
        finally:
            if statuses is None and counting is not None:
                self._repeats.failed(counting)
        if statuses is None:
            trace.extra_headers["x-savepoint-degraded"] = "store"
            return None
        if counting is not None:
            statuses = self._repeats.counted(counting, statuses, now)
        verdict = Verdict(True, statuses)
        trace.extra_headers.update(ratelimit_headers(verdict))
        self._warn(client, verdict, trace)
        self._flag(principal, guard, verdict, trace)
        return Ticket(limits, reservation, trace.request_id)

    async def _take(
        self, limits: Limits, spec: ModelSpec, trace: Trace, who: tuple[str, str]
    ) -> tuple[Status, ...] | None:
        """Take the request's share of every limit (`Leases.take`): the limits' statuses,
        None if the store could not be asked (fail open), or raise the 429 (and take
        nothing)."""
        lease = spec.deadline + _LEASE_MARGIN
        verdict, asked = await self._leases.take(
            limits.rates, limits.slots, limits.quotas, trace.request_id, lease
        )
        if asked:
            self._leased.discard(who)
        else:
            self._leased.add(who)
        if verdict is None:
            return None
        if not verdict.allowed:
            raise refusal(verdict, spec.name)  # its code goes on the trace where rendered
        return verdict.limits

    def calls_store(self, principal: Principal, spec: ModelSpec) -> bool:
        """Whether admitting this client's request for this model is likely to take a store
        call: something applies, and the last such request was not admitted from leases."""
        return (
            self._applying(principal, spec)[1] and (principal.name, spec.name) not in self._leased
        )

    def _applying(self, principal: Principal, spec: ModelSpec) -> tuple[bool, bool]:
        """(a token estimate is needed, anything applies), worked out once per client and
        model: the policy is fixed."""
        applies = self._applies.get((principal.name, spec.name))
        if applies is None:
            client, guard = self._policy.clients.get(principal.name), self._policy.guard
            counted = needs_tokens(client, spec, guard, self._deployments)
            applies = (counted, counted or _any_limit(client, spec) or bool(guard.enabled))
            self._applies[principal.name, spec.name] = applies
        return applies

    async def settle(self, ticket: Ticket, trace: Trace) -> None:
        """Correct the reservation to what the request took: the usage the provider reported;
        nothing when no upstream call was made (a hit, a replay, a refusal); the reservation
        itself when an upstream call was made but reported no usage (a cut stream: the
        provider may well have billed it). Concurrency slots are given back before this
        returns, so that a client whose answer is out can send its next request at once;
        token corrections alone are written in the background."""
        actual = ticket.reservation
        if trace.usage is not None:
            actual = Reservation(trace.usage.total_tokens, self._micro_usd(trace.usage, trace))
        elif not trace.attempts:
            actual = Reservation(0, 0)
        await self._leases.settle(settlement(ticket.limits, actual), ticket.request_id)

    async def close(self) -> None:
        await self._leases.close()
        await self._repeats.close()
        await self._guard.close()

    async def _reserve(
        self, client: ClientSpec | None, spec: ModelSpec, call: Call, counted: bool
    ) -> Reservation:
        if not counted:
            return Reservation(1, None)
        path, body = call.endpoint.path, call.body
        assert self._tokenizer is not None, "the composition root loads it for such policies"
        tokens = await self._tokenizer.estimate(path, call.model, body, DEFAULT_OUTPUT)
        price = self._prices.get(spec.targets[0].label) if spec.targets else None
        if price is None:
            return Reservation(tokens, None)
        cap = self._tokenizer.output_cap(path, body) or DEFAULT_OUTPUT
        prompt = max(tokens - cap, 0)
        usage = Usage(prompt_tokens=prompt, completion_tokens=cap, total_tokens=tokens)
        return Reservation(tokens, round(cost_usd(usage, price) * MICRO))

    def _micro_usd(self, usage: Usage, trace: Trace) -> int:
        price = self._prices.get(trace.target)
        return round(cost_usd(usage, price) * MICRO) if price is not None else 0

    def _warn(self, client: ClientSpec | None, verdict: Verdict, trace: Trace) -> None:
        if client is None or client.budget is None:
            return
        tight = budget_used(verdict)
        if tight is None:
            return
        share = 1 - tight.remaining / tight.limit
        if share < client.budget.soft:
            return
        trace.extra_headers["x-savepoint-budget-warning"] = (
            f"{share:.0%} of the {client.budget.period}'s budget used"
        )
        if self._first_time(tight.key):
            self._events({"event": "budget_soft_limit", "client": client.name,
                          "budget": tight.key, "used_share": round(share, 3)})  # fmt: skip

    def _flag(self, principal: Principal, guard: GuardSpec, verdict: Verdict, trace: Trace) -> None:
        """A request past the loop guard's threshold, not blocked: say so, log it once."""
        loop = looping(guard, verdict)
        if loop is None:
            return
        trace.extra_headers["x-savepoint-loop"] = f"{loop.key.split('/')[0]}:{loop.count:g}"
        trace.flags.append("loop")
        if self._first_time(loop.key):
            self._events({"event": "loop_detected", "client": principal.name,
                          "counter": loop.key, "count": loop.count,
                          "threshold": loop.threshold, "blocked": False})  # fmt: skip

    def _first_time(self, key: str) -> bool:
        """Whether `key` is logged for the first time (a bounded memory: loop counters are
        per request fingerprint and window, so they never stop coming)."""
        if key in self._warned:
            return False
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add(key)
        return True


def _any_limit(client: ClientSpec | None, spec: ModelSpec) -> bool:
    if spec.limits:
        return True
    return client is not None and (
        bool(client.limits) or spec.name in client.model_limits or client.budget is not None
    )

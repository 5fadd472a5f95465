"""Limits of a deployment: each attempt at a deployment with `providers.<p>.limits` takes its
share (a request, its token estimate, a slot) first, in one store call or from this worker's
lease on a busy rate (`stages/leases.py`, as a client's limits are), and gives back what it
did not use when the attempt is over. A deployment over its limit is skipped, as one cooling
down after a 429 would be: the request moves to the next deployment of its group or route
instead of earning a 429 from the provider. A store that cannot be reached lets attempts
through (logged once per outage, like every other limit).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.breakers import EventSink
from gateway.config.schema import LimitSpec
from gateway.decide.admission import (
    Limits,
    Reservation,
    deployment_limits,
    refusal,
    settlement,
)
from gateway.errors import SavepointError
from gateway.stages.guard import MAX_PENDING, StoreGuard
from gateway.stages.leases import Leases
from gateway.stores.base import Store

_LEASE_MARGIN = 60.0  # a slot outlives the route's deadline by this much (a dead gateway's)


class DeploymentQuota:
    def __init__(
        self,
        specs: Mapping[str, LimitSpec],
        store: Store,
        events: EventSink,
        max_pending: int = MAX_PENDING,
    ):
        self._specs = specs
        self._guard = StoreGuard("limits", events, max_pending)
        self._leases = Leases(store, self._guard)

    def covers(self, label: str) -> bool:
        return label in self._specs

    async def take(
        self, label: str, tokens: int, request_id: str, deadline: float
    ) -> tuple[Limits | None, SavepointError | None]:
        """(what to give back later, None) when the attempt may go; (None, the refusal) when
        the deployment is over its limit."""
        limits = deployment_limits(label, self._specs[label], tokens)
        verdict, _ = await self._leases.take(
            limits.rates, limits.slots, (), request_id, deadline + _LEASE_MARGIN
        )
        if verdict is None:
            return None, None  # fail open; nothing to give back
        if not verdict.allowed:
            return None, refusal(verdict, label)
        return limits, None

    async def give_back(self, limits: Limits, used_tokens: int, request_id: str) -> None:
        """Once the attempt is over: its slot at once, the token correction in the background
        (or into this worker's lease)."""
        await self._leases.settle(settlement(limits, Reservation(used_tokens, None)), request_id)

    async def close(self) -> None:
        await self._leases.close()
        await self._guard.close()

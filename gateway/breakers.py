"""The health of each deployment: its circuit breaker, 429 cooldown, load and retry counts.

The only module that imports pybreaker. pybreaker keeps the state machine (consecutive
failure count, open, half-open, `success_threshold`, listeners); it is never held across an
`await` (SEMANTICS.md §4.6): an attempt runs first, and its outcome is recorded afterwards
with a synchronous `breaker.call`. Admission is ours (`decide/balance.admission`): an open
breaker is skipped without a call; once its reset timeout has passed exactly one request is
let through as the half-open probe. Each consecutive re-open doubles the reset timeout, up to
`max_reset_timeout`. A 429 does not count against the breaker: it benches the deployment for
its Retry-After instead. A client error (any other 4xx) counts as a success: the provider
answered (SEMANTICS.md §4.6). A timeout that only fired because the route's (or the client's)
deadline cut it short, and a cancelled request, count for nothing. Only the probe's own
outcome frees the probe slot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pybreaker

from gateway.config.schema import BreakerSpec
from gateway.decide.balance import Admission, admission
from gateway.model import Failure

EventSink = Callable[[dict[str, Any]], None]


class _Tripped(Exception):
    """What a failed attempt is, to pybreaker."""


def _ok() -> None:
    return None


def _fail() -> None:
    raise _Tripped()


@dataclass(slots=True)
class _Deployment:
    label: str
    breaker: pybreaker.CircuitBreaker
    opened_at: float | None = None
    reopens: int = 0
    probing: bool = False
    cooldown_until: float = 0.0
    ejected_until: float = 0.0  # by another replica (shared through the store)
    active: int = 0  # requests working on this deployment, backoff waits included
    retrying: int = 0  # of those, requests in a retry of it
    counters: dict[str, int] = field(default_factory=dict)


class Health:
    def __init__(
        self,
        spec: BreakerSpec,
        events: EventSink,
        on_open: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._spec = spec
        self._events = events
        self._on_open = on_open  # told (deployment, reset timeout) when a breaker opens here
        self._clock = clock
        self._deployments: dict[str, _Deployment] = {}

    def _get(self, label: str) -> _Deployment:
        d = self._deployments.get(label)
        if d is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=self._spec.fail_max,
                reset_timeout=self._spec.reset_timeout,
                success_threshold=self._spec.success_threshold,
                name=label,
            )
            d = self._deployments[label] = _Deployment(label, breaker)
            breaker.add_listener(_Listener(self, d))
        return d

    def admission(self, label: str) -> Admission:
        d = self._get(label)
        return admission(
            d.breaker.current_state,
            self._clock(),
            d.opened_at,
            d.breaker.reset_timeout,
            d.probing,
            max(d.cooldown_until, d.ejected_until),
        )

    def active(self, label: str) -> int:
        return self._get(label).active

    def retrying(self, label: str) -> int:
        return self._get(label).retrying

    def enter(self, label: str) -> None:
        self._get(label).active += 1

    def leave(self, label: str) -> None:
        self._get(label).active -= 1

    def begin_retry(self, label: str) -> None:
        self._get(label).retrying += 1

    def end_retry(self, label: str) -> None:
        self._get(label).retrying -= 1

    def begin_probe(self, label: str) -> None:
        self._get(label).probing = True

    def record(
        self, label: str, failure: Failure | None, retry_after: float | None, probe: bool
    ) -> None:
        """The outcome of one attempt (None: it succeeded); `probe` if it was the half-open
        probe, whose slot it then frees (no other attempt may free it)."""
        d = self._get(label)
        if probe:
            d.probing = False
        if failure is Failure.DEADLINE:
            return  # our deadline, not the provider's fault
        if failure in (Failure.RATE_LIMITED, Failure.QUOTA):
            wait = self._spec.max_cooldown if failure is Failure.QUOTA else retry_after
            wait = min(self._spec.max_cooldown, wait or self._spec.rate_limit_cooldown)
            d.cooldown_until = max(d.cooldown_until, self._clock() + wait)
            self._events({"event": "cooldown", "target": label, "seconds": round(wait, 3),
                          "reason": failure.value})  # fmt: skip
            return
        healthy = failure is None or not failure.provider_health
        if healthy and d.breaker.fail_counter == 0 and d.breaker.current_state == "closed":
            return  # the common case: a success would change nothing, skip pybreaker's lock
        # Raises when it counts a failure, or refuses a call while open (an attempt admitted
        # before the breaker opened): either way the verdict is recorded or moot.
        with contextlib.suppress(_Tripped, pybreaker.CircuitBreakerError):
            d.breaker.call(_ok if healthy else _fail)

    def no_verdict(self, label: str, probe: bool) -> None:
        """An attempt ended with nothing to say about the provider (the client went away, the
        gateway drained, a bug): if it was the probe, the probe slot is free again."""
        if probe:
            self._get(label).probing = False

    def eject(self, label: str, seconds: float) -> None:
        """Another replica opened this deployment's breaker: skip it for `seconds`."""
        d = self._get(label)
        d.ejected_until = max(d.ejected_until, self._clock() + seconds)

    def retry_wait(self, label: str) -> float | None:
        """How long before a retry of this deployment could be let through: its remaining
        429 cooldown or peer ejection (0 if none); None while its breaker is open (a retry
        would have to wait out the reset timeout: better move on)."""
        d = self._get(label)
        if d.breaker.current_state == "open":
            return None
        return max(0.0, max(d.cooldown_until, d.ejected_until) - self._clock())

    def next_chance(self, labels: list[str]) -> float:
        """Seconds until the first of these deployments may be tried again."""
        now = self._clock()
        waits = []
        for label in labels:
            d = self._get(label)
            blocked = max(d.cooldown_until, d.ejected_until) - now
            reopen = (d.opened_at + d.breaker.reset_timeout - now) if d.opened_at else 0.0
            waits.append(max(0.0, blocked, reopen if d.breaker.current_state == "open" else 0))
        return min(waits, default=0.0)

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        for label, d in sorted(self._deployments.items()):
            state = d.breaker.current_state
            out.append({
                "target": label,
                "state": state,
                "failures": d.breaker.fail_counter,
                "reset_timeout_s": d.breaker.reset_timeout,
                "retry_in_s": round(max(0.0, d.opened_at + d.breaker.reset_timeout - now), 3)
                if state == "open" and d.opened_at is not None else 0.0,
                "cooldown_s": round(max(0.0, d.cooldown_until - now), 3),
                "ejected_by_peer_s": round(max(0.0, d.ejected_until - now), 3),
                "active": d.active,
            })  # fmt: skip
        return out

    def changed(self, d: _Deployment, old: str, new: str) -> None:
        if new == "open":
            d.opened_at = self._clock()
            d.reopens = d.reopens + 1 if old == "half-open" else 0
            d.breaker.reset_timeout = min(
                self._spec.max_reset_timeout, self._spec.reset_timeout * 2.0**d.reopens
            )
            if self._on_open is not None:
                self._on_open(d.label, d.breaker.reset_timeout)
        elif new == "closed":
            d.opened_at = None
            d.reopens = 0
            d.breaker.reset_timeout = self._spec.reset_timeout
        self._events({"event": "breaker", "target": d.label, "from": old, "to": new,
                      "reset_timeout_s": d.breaker.reset_timeout})  # fmt: skip


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, health: Health, deployment: _Deployment):
        self._health = health
        self._d = deployment

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else "closed"
        self._health.changed(self._d, old, new_state.name)

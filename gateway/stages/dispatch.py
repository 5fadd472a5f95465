"""Dispatch: walk the route until a deployment answers, then relay the answer.

    for each group of the chain, from the first:
        choose an available deployment of the group     (decide/balance.py)
        attempt it; record the outcome on its health    (breakers.py)
        success -> relay it (for a stream: the commit point)
        failure -> retry it, switch, move to the next group, or give up   (decide/retry.py)

Everything before the commit point may be retried or sent elsewhere; the client sees only
the final answer, with `x-savepoint-target`, `x-savepoint-attempts` and
`x-savepoint-fallback`. Giving up returns the last failure with `x-should-retry: false`: the
gateway has retried already, and the SDK must not multiply that by three.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.breakers import Health
from gateway.config.schema import ModelSpec, TargetSpec
from gateway.decide.balance import Admission, Candidate, choose
from gateway.decide.calls import upstream_body
from gateway.decide.deadlines import attempt_timeouts, chain_budget
from gateway.decide.failures import classify_error, classify_reply, retry_after
from gateway.decide.retry import (
    GiveUp,
    NextGroup,
    RetrySame,
    Situation,
    backoff,
    budget_ok,
    next_group,
    next_step,
)
from gateway.downstream import Downstream
from gateway.errors import (
    NoHealthyTarget,
    SavepointError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.lifecycle import Drain
from gateway.model import Attempt, Call, Failure, Trace
from gateway.providers.base import Provider, UpstreamReply, UpstreamRequest
from gateway.stages.capture import Capture
from gateway.stages.quota import DeploymentQuota
from gateway.stages.relay import relay_error, relay_stream, relay_whole, reply_headers

_GIVE_UP = {"x-should-retry": "false"}


@dataclass(slots=True)
class _Outcome:
    reply: UpstreamReply | None
    error: UpstreamError | None
    failure: Failure | None  # None: success
    retry_after: float | None = None
    parsed: Any = None  # a whole answer's JSON, parsed once
    probe: bool = False  # this attempt was its deployment's half-open probe


@dataclass(slots=True)
class _Walk:
    """Where one request is along its route."""

    deadline: float
    group: int = 0
    current: str | None = None  # the deployment it is working on (counted active there)
    force: TargetSpec | None = None  # retry this one next
    retrying: str | None = None  # counted as retrying there until that retry has run
    excluded: set[str] = field(default_factory=set)  # failed in this group: do not go back
    tried: dict[str, int] = field(default_factory=dict)
    last: _Outcome | None = None
    last_target: TargetSpec | None = None
    limited: SavepointError | None = None  # the last deployment limit that refused it


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        health: Health,
        drain: Drain,
        quota: DeploymentQuota | None = None,
        rng: random.Random | None = None,
    ):
        self._providers = providers
        self._health = health
        self._drain = drain
        self._quota = quota
        self._rng = rng or random.Random()

    async def dispatch(
        self,
        spec: ModelSpec,
        call: Call,
        raw: bytes,
        trace: Trace,
        downstream: Downstream,
        capture: Capture | None = None,
        tokens: int = 1,
    ) -> None:
        """`tokens`: the request's estimate (prompt and output cap), for deployment limits."""
        walk = _Walk(deadline=time.monotonic() + chain_budget(spec.deadline, call.read_timeout))
        try:
            while True:
                target, probe = self._pick(spec, walk)
                if target is None:
                    if walk.group + 1 < len(spec.groups):
                        walk.group, walk.excluded = walk.group + 1, set()
                        continue
                    return await self._give_up(spec, walk, trace, downstream, capture)
                self._move_to(walk, target.label)
                remaining = walk.deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(
                        f"the route of `{spec.name}` ran out of time after "
                        f"{len(trace.attempts)} attempts (models.{spec.name}.deadline is "
                        f"{spec.deadline:g}s; the client's own timeout may be shorter)",
                        code="deadline_exceeded",
                        headers=dict(_GIVE_UP),
                    )
                held = None
                if self._quota is not None and self._quota.covers(target.label):
                    held, walk.limited = await self._quota.take(
                        target.label, tokens, trace.request_id, spec.deadline
                    )
                    if walk.limited is not None:  # over its own limit: skip it, as if cooling
                        walk.excluded.add(target.label)
                        trace.flags.append(f"limited:{target.label}")
                        continue
                try:
                    outcome = await self._attempt(target, probe, call, raw, remaining, trace)
                    self._end_retry(walk)
                    walk.tried[target.label] = walk.tried.get(target.label, 0) + 1
                    walk.last, walk.last_target = outcome, target
                    trace.fallback = walk.group > 0
                    if outcome.failure is None:
                        return await self._answer(target, outcome, call, trace, downstream, capture)
                finally:
                    if held is not None:  # what the attempt took at the deployment
                        assert self._quota is not None
                        used = trace.usage.total_tokens if trace.usage is not None else 0
                        await self._quota.give_back(held, used, trace.request_id)
                if not await self._after_failure(spec, walk, target, outcome):
                    return await self._give_up(spec, walk, trace, downstream, capture)
        finally:
            self._end_retry(walk)
            if walk.current is not None:
                self._health.leave(walk.current)

    def _end_retry(self, walk: _Walk) -> None:
        if walk.retrying is not None:
            self._health.end_retry(walk.retrying)
            walk.retrying = None

    def _pick(self, spec: ModelSpec, walk: _Walk) -> tuple[TargetSpec | None, bool]:
        """The next deployment to try, and whether it is its breaker's half-open probe."""
        if walk.force is not None:
            target, walk.force = walk.force, None
            verdict = self._health.admission(target.label)
            if verdict is not Admission.SKIP:
                return target, verdict is Admission.PROBE
        group = spec.groups[walk.group]
        if len(group.targets) == 1:  # the common case: nothing to balance
            only = group.targets[0]
            verdict = self._verdict(spec, walk, only)
            return (
                (None, False) if verdict is Admission.SKIP else (only, verdict is Admission.PROBE)
            )
        verdicts = [self._verdict(spec, walk, t) for t in group.targets]
        candidates = [
            Candidate(t.weight, self._health.active(t.label), verdict is not Admission.SKIP)
            for t, verdict in zip(group.targets, verdicts, strict=True)
        ]
        index = choose(candidates, spec.balance, self._rng.random())
        if index is None:
            return None, False
        return group.targets[index], verdicts[index] is Admission.PROBE

    def _verdict(self, spec: ModelSpec, walk: _Walk, target: TargetSpec) -> Admission:
        """Whether this request may try `target` now: not if it already failed there in this
        group or used up its attempts on it, else as its breaker and cooldown say."""
        if target.label in walk.excluded:
            return Admission.SKIP
        if walk.tried.get(target.label, 0) >= spec.retries.attempts_per_target:
            return Admission.SKIP
        return self._health.admission(target.label)

    def _move_to(self, walk: _Walk, label: str) -> None:
        if walk.current != label:
            if walk.current is not None:
                self._health.leave(walk.current)
            self._health.enter(label)
            walk.current = label

    async def _attempt(
        self,
        target: TargetSpec,
        probe: bool,
        call: Call,
        raw: bytes,
        remaining: float,
        trace: Trace,
    ) -> _Outcome:
        label = target.label
        provider = self._providers[target.provider]
        request = UpstreamRequest(
            endpoint=call.endpoint,
            body=upstream_body(call, raw, target.model),
            stream=call.stream,
            timeouts=attempt_timeouts(target.timeouts, call.read_timeout, call.stream, remaining),
            request_id=trace.request_id,
        )
        if probe:
            self._health.begin_probe(label)
        started = time.monotonic()
        try:
            reply = await provider.send(request)
        except UpstreamError as error:
            outcome = _Outcome(None, error, _judge_error(error, request, target, remaining))
        except BaseException:  # cancelled (the client left), or a bug: no verdict
            self._health.no_verdict(label, probe)
            raise
        else:
            outcome = _judge(provider, reply)
        outcome.probe = probe
        if outcome.failure is not None or reply is None or reply.events is None:
            self._health.record(label, outcome.failure, outcome.retry_after, probe)
        # else: a stream gets one verdict, when it ends (see _answer)
        ms = round((time.monotonic() - started) * 1000, 2)
        trace.attempts.append(
            Attempt(label, outcome.failure.value if outcome.failure else "ok", ms)
        )
        return outcome

    async def _after_failure(
        self, spec: ModelSpec, walk: _Walk, target: TargetSpec, outcome: _Outcome
    ) -> bool:
        """Carry out what `next_step` decides; False means give up."""
        assert outcome.failure is not None
        label, retries = target.label, spec.retries
        attempts_here = walk.tried[label]
        # A deployment benched by this very failure cannot be retried before it is back:
        # wait out a cooldown (never less), but do not wait for an open breaker.
        wait = self._health.retry_wait(label)
        max_attempts = attempts_here if wait is None else retries.attempts_per_target
        other = any(
            t.label != label and self._verdict(spec, walk, t) is not Admission.SKIP
            for t in spec.groups[walk.group].targets
        )
        step = next_step(
            Situation(
                failure=outcome.failure,
                attempts_here=attempts_here,
                max_attempts=max_attempts,
                other_target=other,
                next_group=next_group(spec.groups, walk.group, outcome.failure, target),
                fallback_on=spec.fallback_on,
                retry_after=max(outcome.retry_after or 0.0, wait or 0.0),
                backoff=backoff(
                    attempts_here - 1, retries.backoff_base, retries.backoff_cap, self._rng.random()
                ),
                remaining=walk.deadline - time.monotonic(),
                budget_ok=budget_ok(
                    self._health.active(label),
                    self._health.retrying(label),
                    retries.budget_ratio,
                    retries.budget_min,
                ),
            )
        )
        if isinstance(step, GiveUp):
            return False
        if isinstance(step, RetrySame):
            self._health.begin_retry(label)  # until the retry has run (see dispatch)
            walk.retrying, walk.force = label, target
            # by time.monotonic, the deployment's cooldown clock: uvloop's timers run on a
            # clock read at the start of each loop iteration, and may fire a few ms early
            until = time.monotonic() + step.delay
            await asyncio.sleep(step.delay)
            if (left := until - time.monotonic()) > 0:
                await asyncio.sleep(left + 0.001)
        elif isinstance(step, NextGroup):
            walk.group, walk.excluded = step.index, set()
        else:  # SwitchTarget
            walk.excluded.add(label)
        return True

    async def _answer(
        self,
        target: TargetSpec,
        outcome: _Outcome,
        call: Call,
        trace: Trace,
        downstream: Downstream,
        capture: Capture | None,
    ) -> None:
        reply = outcome.reply
        assert reply is not None
        trace.target = target.label
        trace.upstream_request_id = reply.headers.get("x-request-id")
        headers = reply_headers(reply, trace, _route_headers(target, trace))
        if reply.events is None:
            return await relay_whole(reply, outcome.parsed, headers, trace, downstream, capture)

        verdict = False

        def ended(error: UpstreamError | None) -> None:  # the stream's one verdict
            nonlocal verdict
            verdict = True
            failure = classify_error(error) if error else None
            self._health.record(target.label, failure, None, outcome.probe)

        try:
            await relay_stream(call, reply, headers, trace, downstream, self._drain, ended, capture)
        finally:
            if not verdict:
                self._health.no_verdict(target.label, outcome.probe)

    async def _give_up(
        self,
        spec: ModelSpec,
        walk: _Walk,
        trace: Trace,
        downstream: Downstream,
        capture: Capture | None,
    ) -> None:
        last, target = walk.last, walk.last_target
        if (last is None or target is None) and walk.limited is not None:
            raise walk.limited  # every deployment it could use is at its own limit
        if last is None or target is None:
            labels = [t.label for t in spec.targets]
            wait = self._health.next_chance(labels)
            headers = {"x-should-retry": "true" if wait <= 60 else "false",
                       "retry-after": str(max(1, round(wait))),
                       "retry-after-ms": str(round(wait * 1000))}  # fmt: skip
            raise NoHealthyTarget(
                f"no deployment of `{spec.name}` can take requests right now (open circuit "
                f"breakers, rate-limit cooldowns, or ejected by another replica: "
                f"{', '.join(labels)}); retry in {wait:.1f}s",
                headers=headers,
            )
        extra = {**_route_headers(target, trace), **_GIVE_UP}
        trace.target = target.label
        if last.failure is not None:
            trace.error_code = last.failure.value
        if last.error is not None:
            last.error.headers.update(extra)
            raise last.error
        assert last.reply is not None
        trace.upstream_request_id = last.reply.headers.get("x-request-id")
        provider = self._providers[target.provider]
        await relay_error(provider, last.reply, reply_headers(last.reply, trace, extra), trace,
                          downstream, capture)  # fmt: skip


def _judge_error(
    error: UpstreamError, request: UpstreamRequest, target: TargetSpec, remaining: float
) -> Failure:
    """The failure of an attempt that raised. A timeout is the provider's fault only if it
    fired on the target's own timeouts; one that only fired because what was left of the
    route's (or the client's) deadline cut them short is the deadline's."""
    failure = classify_error(error)
    t, own = request.timeouts, target.timeouts
    if failure is Failure.FIRST_BYTE_TIMEOUT and t.first_byte < own.first_byte:
        return Failure.DEADLINE
    if failure is Failure.DEADLINE and t.total < remaining:
        # the target's own `total` ran out, not the route's: like a first byte that never
        # came, another attempt (or deployment) may still make it in time
        return Failure.FIRST_BYTE_TIMEOUT
    return failure


def _judge(provider: Provider, reply: UpstreamReply) -> _Outcome:
    if reply.events is not None:
        return _Outcome(reply, None, None)
    failure = classify_reply(reply.status, reply.body)
    if failure is not None:
        return _Outcome(reply, None, failure, retry_after(reply.headers, time.time()))
    try:
        parsed = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        error = UpstreamBadResponse(
            f"provider `{provider.name}` answered 200 with a body that is not JSON",
            code="upstream_bad_response",
        )
        return _Outcome(None, error, Failure.SERVER_ERROR)
    return _Outcome(reply, None, None, parsed=parsed)


def _route_headers(target: TargetSpec, trace: Trace) -> dict[str, str]:
    return {
        "x-savepoint-target": target.label,
        "x-savepoint-attempts": str(len(trace.attempts)),
        "x-savepoint-fallback": "true" if trace.fallback else "false",
    }

"""The composition root: the one place that builds the application from a loaded policy.

Stores, provider clients, the in-process mock, the access log, the metrics and the pipeline
are created here and nowhere else; each resource is opened and closed as a pair in a cleanup
context. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.admin import add_admin_routes
from gateway.breakers import EventSink, Health
from gateway.config.schema import Policy, ProviderSpec
from gateway.decide.admission import deployment_specs
from gateway.ejections import EjectionSync
from gateway.ledger import UsageLedger
from gateway.lifecycle import Drain
from gateway.metrics import Metrics
from gateway.mock import Knobs, build_mock_app, parse_knob_header
from gateway.pipeline import Pipeline
from gateway.providers.base import Provider
from gateway.providers.openai import OpenAIProvider
from gateway.server import (
    DRAIN,
    HEALTH,
    LEDGER,
    METRICS,
    PEERS,
    PIPELINE,
    POLICY,
    RECORDS,
    RUNS,
    STARTED_AT,
    STORE,
    Records,
    add_routes,
)
from gateway.stages.admit import Admission
from gateway.stages.cache import ResponseCache
from gateway.stages.dispatch import Dispatcher
from gateway.stages.idempotency import Idempotency
from gateway.stages.quota import DeploymentQuota
from gateway.stages.runs import RunJournal
from gateway.stores.base import Store, StoreUnavailable
from gateway.stores.redis import RedisStore
from gateway.stores.sqlite import SqliteStore
from gateway.tokens import Tokenizer
from gateway.workers import Peers


def build_app(
    policy: Policy,
    tokenizer: Tokenizer | None = None,
    log_stream: TextIO | None = None,
    peers: Peers | None = None,
) -> web.Application:
    """The application. `tokenizer`: loaded by the caller off the event loop (it takes half a
    second), needed when the policy has token limits or budgets (see `needs_tokenizer`).
    `peers`: this process is one of the workers of `serve --workers N`."""
    app = web.Application(client_max_size=policy.server.max_body_bytes)
    providers = {name: OpenAIProvider(spec) for name, spec in policy.providers.items()}
    drain = Drain(policy.server.max_in_flight)
    store = build_store(policy)
    worker = peers.index if peers is not None else None
    access_log = AccessLog(log_stream, worker, policy.server.max_log_backlog)
    metrics = Metrics(policy)
    ledger = UsageLedger(policy, store, access_log.event)
    records = Records(access_log, metrics, ledger)
    app[POLICY] = policy
    app[DRAIN] = drain
    app[STORE] = store
    app[RECORDS] = records
    app[METRICS] = metrics
    app[LEDGER] = ledger
    if peers is not None:
        app[PEERS] = peers
        app.cleanup_ctx.append(_publishing(peers, metrics))
    app[STARTED_AT] = int(time.time())
    targets = sorted({t.label for m in policy.models.values() for t in m.targets})
    ejections = EjectionSync(store, targets, access_log.event)
    health = Health(policy.breakers, access_log.event, on_open=ejections.opened)
    app[HEALTH] = health
    pending = policy.server.max_pending_writes
    cache = ResponseCache(store, access_log.event, pending)
    runs = RunJournal(store, access_log.event, policy.runs.retention, pending)
    app[RUNS] = runs
    idempotency = Idempotency(store, access_log.event, policy.idempotency, pending)
    deployments = deployment_specs(policy.providers, policy.models.values())
    admission = Admission(policy, store, tokenizer, access_log.event, deployments)
    quota = DeploymentQuota(deployments, store, access_log.event, pending) if deployments else None
    dispatcher = Dispatcher(providers, health, drain, quota)
    pipeline = Pipeline(
        policy, admission, idempotency, runs, cache, dispatcher, drain, access_log.event,
        records.write,
    )  # fmt: skip
    app[PIPELINE] = pipeline
    app.cleanup_ctx.append(_opened(access_log))
    app.cleanup_ctx.append(_opened_store(store, access_log.event))
    app.cleanup_ctx.append(_writing(ledger))
    features = (admission, idempotency, cache, runs, *((quota,) if quota else ()))
    app.cleanup_ctx.append(_flushed(pipeline, features))
    if tokenizer is not None:
        app.cleanup_ctx.append(_closed(tokenizer))
    app.cleanup_ctx.append(_sharing_ejections(ejections, health))
    for name, spec in policy.providers.items():
        app.cleanup_ctx.append(_started_provider(spec, providers[name]))
    add_routes(app)
    add_admin_routes(app)
    return app


def needs_tokenizer(policy: Policy) -> bool:
    """Whether requests must be counted: a token limit or a budget somewhere."""
    models, guard = policy.models.values(), policy.guard
    return (
        any(m.limits.tpm for m in models)
        or any(lim.tpm for p in policy.providers.values() for lim in p.limits.values())
        or (guard.enabled is not False and guard.run_usd is not None)
        or any(
            c.budget is not None or c.limits.tpm or any(lim.tpm for lim in c.model_limits.values())
            for c in policy.clients.values()
        )
    )


def counted_models(policy: Policy) -> list[str]:
    """The model names whose requests may be counted: the policy's and their deployments'
    (the tokenizer loads only the encodings these use)."""
    models = policy.models.values()
    return [name for m in models for name in (m.name, *(t.model for t in m.targets))]


Feature = Admission | Idempotency | ResponseCache | RunJournal | DeploymentQuota


def build_store(policy: Policy) -> Store:
    if policy.store.kind == "redis":
        return RedisStore(policy.store.url)
    return SqliteStore(policy.store.path)


def _opened(access_log: AccessLog) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        access_log.start()
        yield
        access_log.stop()

    return ctx


def _opened_store(
    store: Store, events: EventSink
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            await store.open()
        except StoreUnavailable as e:  # never fatal: the gateway serves without its store
            events({"event": "store_unavailable", "purpose": "open", "error": str(e)})
        yield
        await store.close()

    return ctx


def _flushed(
    pipeline: Pipeline, features: tuple[Feature, ...]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await pipeline.close()  # detached calls first: they write to the journal
        # then pending writes, before the ledger's last write and the store closes (contexts
        # unwind in reverse order)
        for feature in features:
            await feature.close()

    return ctx


def _writing(ledger: UsageLedger) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        ledger.start()
        yield
        await ledger.close()  # after the detached calls have ended: they write entries too

    return ctx


def _publishing(peers: Peers, metrics: Metrics) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(peers.publish(metrics))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def _closed(tokenizer: Tokenizer) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        tokenizer.close()

    return ctx


def _sharing_ejections(
    ejections: EjectionSync, health: Health
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        poller = asyncio.get_running_loop().create_task(ejections.run(health))
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await ejections.stop()

    return ctx


def _started_provider(
    spec: ProviderSpec, provider: OpenAIProvider
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        mock_runner = await _start_mock(spec) if spec.kind == "mock" else None
        base_url = None
        if mock_runner is not None:
            host, port = mock_runner.addresses[0][:2]
            base_url = f"http://{host}:{port}/v1"
        await provider.start(base_url)
        yield
        await provider.close()
        if mock_runner is not None:
            await mock_runner.cleanup()

    return ctx


async def _start_mock(spec: ProviderSpec) -> web.AppRunner:
    """The built-in mock, served in this process on an ephemeral loopback port, so the `mock`
    provider goes through exactly the same HTTP path as a real one."""
    runner = web.AppRunner(build_mock_app(parse_knob_header(spec.mock, Knobs())), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


__all__ = ["Provider", "build_app"]

"""The admin API: what the gateway knows about its deployments.

    GET /admin/breakers       every deployment's breaker state, cooldown and load
    GET /admin/runs/{run}     a durable run's steps (?client=NAME; default anonymous)
    DELETE /admin/runs/{run}  drop a run's journal
    GET /admin/usage          the usage report (?from, to, since, client, model, target, run,
                              group_by)

Guarded by the admin key (`admin:` in the policy). Without one, the admin API answers only
when authentication is off altogether (a gateway on loopback with no clients); otherwise it
is refused with a 403 that says how to configure a key.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.decide.auth import authenticate
from gateway.decide.reports import parse_query
from gateway.errors import AdminNotConfigured, RunNotFound, StoreUnavailableError
from gateway.ledger import usage_report
from gateway.metrics import CONTENT_TYPE
from gateway.model import ANONYMOUS, Principal
from gateway.server import (
    HEALTH,
    LEDGER,
    METRICS,
    PEERS,
    POLICY,
    RUNS,
    SCRAPE,
    STORE,
    TRACE,
    request_key,
)
from gateway.stages.runs import run_key
from gateway.stores.base import StoreUnavailable

ADMIN = Principal("admin", frozenset())


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/breakers", breakers)
    app.router.add_get("/admin/runs/{run}", run_steps)
    app.router.add_delete("/admin/runs/{run}", drop_run)
    app.router.add_get("/admin/usage", usage)
    app.router.add_get(SCRAPE, metrics)


def _check_admin(request: web.Request, what: str = "the admin API") -> None:
    policy = request.app[POLICY]
    if not policy.admin_key_hashes:
        if policy.auth_enabled:
            raise AdminNotConfigured(
                f"{what} needs an admin key: add `admin: {{key_env: SAVEPOINT_ADMIN_KEY}}` "
                "to the policy"
            )
    else:
        admins = {key_hash: ADMIN for key_hash in policy.admin_key_hashes}
        authenticate(admins, request_key(request))
    request[TRACE].client = ADMIN.name


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics, behind the admin API's rule: they show each client's spend and
    every breaker, which `/admin/breakers` guards too (Prometheus sends the key with
    `authorization: {credentials: ...}`)."""
    _check_admin(request, "/metrics")
    metrics = request.app[METRICS]
    peers = request.app.get(PEERS)
    if peers is not None:  # one of several workers: add up the others' latest snapshots
        metrics = metrics.merged(await peers.others())
    body = metrics.render(request.app[HEALTH].snapshot())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def breakers(request: web.Request) -> web.Response:
    _check_admin(request)
    return web.json_response({"breakers": request.app[HEALTH].snapshot()})


def _run(request: web.Request) -> str:
    """The run of `?client=` (default: `anonymous`, the only client when auth is off)."""
    return run_key(request.query.get("client", ANONYMOUS.name), request.match_info["run"])


async def run_steps(request: web.Request) -> web.Response:
    """A durable run's steps: time, model, tokens, replayed or live."""
    _check_admin(request)
    steps = await request.app[RUNS].steps(_run(request))
    if steps is None:
        raise StoreUnavailableError("the store is unavailable; try again")
    if not steps:
        raise RunNotFound(f"no run `{request.match_info['run']}` for client "
                          f"`{request.query.get('client', ANONYMOUS.name)}`")  # fmt: skip
    return web.json_response({"run": request.match_info["run"], "steps": steps})


async def drop_run(request: web.Request) -> web.Response:
    _check_admin(request)
    dropped = await request.app[RUNS].drop(_run(request))
    if dropped is None:
        raise StoreUnavailableError("the store is unavailable; try again")
    return web.json_response({"run": request.match_info["run"], "dropped_steps": dropped})


async def usage(request: web.Request) -> web.Response:
    """The usage report (docs/usage.md): spent, saved and wasted tokens and cost, grouped."""
    _check_admin(request)
    query = parse_query(dict(request.query), time.time())
    await request.app[LEDGER].flush()  # this gateway's latest entries count too
    try:
        report = await usage_report(request.app[STORE], query)
    except StoreUnavailable as e:
        raise StoreUnavailableError(f"the store is unavailable ({e}); try again") from None
    return web.json_response(report)

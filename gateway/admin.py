"""The admin API: what the gateway knows about its deployments.

    GET /admin/breakers    every deployment's breaker state, cooldown and load

Guarded by the admin key (`admin:` in the policy). Without one, the admin API answers only
when authentication is off altogether (a gateway on loopback with no clients); otherwise it
is refused with a 403 that says how to configure a key.
"""

from __future__ import annotations

from aiohttp import web

from gateway.decide.auth import authenticate
from gateway.errors import AdminNotConfigured
from gateway.model import Principal
from gateway.server import HEALTH, POLICY, TRACE, request_key

ADMIN = Principal("admin", frozenset())


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/breakers", breakers)


def _check_admin(request: web.Request) -> None:
    policy = request.app[POLICY]
    if not policy.admin_key_hashes:
        if policy.auth_enabled:
            raise AdminNotConfigured(
                "the admin API needs an admin key: add `admin: {key_env: SAVEPOINT_ADMIN_KEY}` "
                "to the policy"
            )
    else:
        admins = {key_hash: ADMIN for key_hash in policy.admin_key_hashes}
        authenticate(admins, request_key(request))
    request[TRACE].client = ADMIN.name


async def breakers(request: web.Request) -> web.Response:
    _check_admin(request)
    return web.json_response({"breakers": request.app[HEALTH].snapshot()})

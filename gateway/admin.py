"""The admin API: what the gateway knows about its deployments.

    GET /admin/breakers    every deployment's breaker state, cooldown and load

Guarded by the admin key (`admin:` in the policy). Without one, the admin API answers only
when authentication is off altogether (a gateway on loopback with no clients); otherwise it
is refused with a 403 that says how to configure a key.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from gateway.decide.auth import key_from_headers
from gateway.errors import AdminNotConfigured, AuthenticationFailed
from gateway.server import HEALTH, POLICY, TRACE


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/breakers", breakers)


def _check_admin(request: web.Request) -> None:
    policy = request.app[POLICY]
    request[TRACE].client = "admin"
    if not policy.admin_key_hashes:
        if policy.auth_enabled:
            raise AdminNotConfigured(
                "the admin API needs an admin key: add `admin: {key_env: SAVEPOINT_ADMIN_KEY}` "
                "to the policy"
            )
        return
    key = key_from_headers(request.headers.get("Authorization"), request.headers.get("x-api-key"))
    if key is None or hashlib.sha256(key.encode()).hexdigest() not in policy.admin_key_hashes:
        raise AuthenticationFailed("the admin API needs the admin key as `Authorization: Bearer`")


async def breakers(request: web.Request) -> web.Response:
    _check_admin(request)
    return web.json_response({"breakers": request.app[HEALTH].snapshot()})

"""Which model spec serves a call, and whether this client may use it."""

from __future__ import annotations

from gateway.config.schema import ModelSpec, Policy
from gateway.errors import ModelNotAllowed, ModelNotFound
from gateway.model import Principal


def resolve_model(policy: Policy, principal: Principal, model: str) -> ModelSpec:
    spec = policy.models.get(model)
    if spec is None:
        reason = policy.unavailable.get(model)
        if reason is not None:
            raise ModelNotFound(f"the model `{model}` is not available: {reason}", param="model")
        raise ModelNotFound(
            f"the model `{model}` does not exist; GET /v1/models lists the models you can use",
            param="model",
        )
    if not may_use(principal, model):
        raise ModelNotAllowed(
            f"client `{principal.name}` may not use the model `{model}`; "
            "GET /v1/models lists the models you can use",
            param="model",
        )
    return spec


def may_use(principal: Principal, model: str) -> bool:
    return principal.models is None or model in principal.models


def visible_models(policy: Policy, principal: Principal) -> list[ModelSpec]:
    return [spec for name, spec in policy.models.items() if may_use(principal, name)]

"""The one load step: YAML text -> `${ENV}` interpolation -> validated, frozen `Policy`.

Every problem is collected (not just the first) and names its place in the file, with the line:
`policy.yaml:14: models.gpt-4o.targets[1].timeouts.total: expected seconds, got "fast"`.
Environment variables are read here, once; nothing later looks at the environment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import yaml

from gateway.config import fields, governance, routes
from gateway.config.fields import Path
from gateway.config.prices import prices, shipped_prices
from gateway.config.schema import (
    BreakerSpec,
    CacheSpec,
    ClientSpec,
    IdempotencySpec,
    Policy,
    ProviderSpec,
    RetrySpec,
    RunsSpec,
    Secret,
    ServerSpec,
    StoreSpec,
    Timeouts,
    UsageSpec,
)

_CLIENT_KEYS = ("key_sha256", "key_env", "models", "limits", "model_limits", "budget")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = (
    "version", "server", "store", "providers", "models", "clients", "retries", "breakers",
    "admin", "cache", "runs", "idempotency", "prices", "guard", "usage",
)  # fmt: skip
_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class PolicyError(Exception):
    """The policy file cannot be used; `problems` are located, human-readable lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        return "\n".join(f"{self.source}:{p}" for p in self.problems)


def load_policy(path: str, env: Mapping[str, str]) -> Policy:
    """Read and validate a policy file (called once at start, before the event loop runs)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PolicyError(path, [f" cannot read the policy file: {e.strerror}"]) from None
    return parse_policy(text, path, env)


def parse_policy(text: str, source: str, env: Mapping[str, str]) -> Policy:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.line + 1}:" if mark is not None else ""
        raise PolicyError(source, [f"{where} not valid YAML: {getattr(e, 'problem', e)}"]) from None
    lines: dict[Path, int] = {}
    duplicates: list[Path] = []
    if node is not None:
        fields.collect_lines(node, (), lines, duplicates)
    ctx = fields.Problems(lines, env)
    for path in duplicates:
        ctx.problem(path, "appears twice in the same mapping; YAML would keep only the last one")
    policy = _policy(ctx, fields.interpolate(ctx, data, ()), source)
    if ctx.problems or policy is None:
        raise PolicyError(source, ctx.problems or [" the policy is empty"])
    return policy


def _policy(ctx: fields.Problems, data: Any, source: str) -> Policy | None:
    top = fields.mapping(ctx, data, (), _TOP_KEYS)
    version = top.get("version", 1)
    if version != 1 or isinstance(version, bool):
        ctx.problem(
            ("version",), f"this gateway reads version 1, got {fields.show(top['version'])}"
        )
    server = _server(ctx, top.get("server"))
    store = _store(ctx, top.get("store"))
    providers, disabled = _providers(ctx, top.get("providers"))
    default_retries = routes.retries(ctx, top.get("retries"), ("retries",), RetrySpec())
    default_cache = routes.cache(ctx, top.get("cache"), ("cache",), CacheSpec())
    models, unavailable = routes.models(
        ctx, top.get("models"), providers, disabled, default_retries, "retries" in top,
        default_cache,
    )  # fmt: skip
    clients = _clients(ctx, top.get("clients"), set(models) | set(unavailable))
    if not models and not unavailable and not ctx.problems:
        ctx.problem(("models",), "no models defined; add at least one under `models:`")
    return Policy(
        source,
        server,
        store,
        {name: spec for name, spec in providers.items() if name not in disabled},  # no pools
        models,
        clients,
        unavailable,
        disabled,
        breakers=_breakers(ctx, top.get("breakers")),
        runs=_runs(ctx, top.get("runs")),
        idempotency=_idempotency(ctx, top.get("idempotency")),
        prices=prices(ctx, top.get("prices"), ("prices",), shipped_prices()),
        guard=governance.guard(ctx, top.get("guard")),
        usage=_usage(ctx, top.get("usage")),
        admin_key_hashes=_admin(ctx, top.get("admin")),
    )


def _server(ctx: fields.Problems, value: Any) -> ServerSpec:
    path: Path = ("server",)
    m = fields.mapping(ctx, value, path, tuple(f.name for f in dataclass_fields(ServerSpec)))
    d = ServerSpec()
    return ServerSpec(
        max_body_bytes=fields.size(ctx, m, "max_body_bytes", path, d.max_body_bytes),
        drain_timeout=fields.seconds(ctx, m, "drain_timeout", path, d.drain_timeout),
        max_in_flight=fields.integer(ctx, m, "max_in_flight", path, d.max_in_flight, 1),
        max_pending_writes=fields.integer(
            ctx, m, "max_pending_writes", path, d.max_pending_writes, 1
        ),
        max_log_backlog=fields.integer(ctx, m, "max_log_backlog", path, d.max_log_backlog, 1),
    )


def _store(ctx: fields.Problems, value: Any) -> StoreSpec:
    path: Path = ("store",)
    m = fields.mapping(ctx, value, path, ("kind", "path", "url"))
    d = StoreSpec()
    kind = fields.string(ctx, m, "kind", path, d.kind)
    if kind not in ("sqlite", "redis"):
        ctx.problem((*path, "kind"), f"expected sqlite or redis, got {fields.show(kind)}")
        kind = d.kind
    url = fields.string(ctx, m, "url", path, d.url) or d.url
    if (kind == "redis" or "url" in m) and not url.startswith(("redis://", "rediss://", "unix://")):
        ctx.problem(
            (*path, "url"), f"expected a redis://, rediss:// or unix:// URL, got {fields.show(url)}"
        )
    elif set(parse_qs(urlsplit(url).query)) - {"db"}:
        ctx.problem((*path, "url"), "the URL's query may set only db (redis://host:6379?db=1); "
                    "other client options are not read")  # fmt: skip
    return StoreSpec(kind=kind, path=fields.string(ctx, m, "path", path, d.path) or d.path, url=url)  # type: ignore[arg-type]


_PROVIDER_KEYS = ("kind", "base_url", "api_key", "api_key_env", "optional", "headers", "timeouts",
                  "max_connections", "mock", "limits")  # fmt: skip


def _providers(ctx: fields.Problems, value: Any) -> tuple[dict[str, ProviderSpec], dict[str, str]]:
    providers: dict[str, ProviderSpec] = {}
    disabled: dict[str, str] = {}
    for name, spec in fields.mapping(ctx, value, ("providers",)).items():
        path: Path = ("providers", name)
        if not fields.name(ctx, name, path, "provider"):
            continue
        m = fields.mapping(ctx, spec, path, _PROVIDER_KEYS)
        kind = fields.string(ctx, m, "kind", path, None)
        if kind not in ("openai", "mock"):
            ctx.problem((*path, "kind"), f"expected openai or mock, got {fields.show(kind)}")
            continue
        only = "base_url" if kind == "mock" else "mock"
        if only in m:
            other = "openai" if kind == "mock" else "mock"
            ctx.problem((*path, only), f"only a provider of kind {other} takes `{only}`")
        default_url = _DEFAULT_OPENAI_URL if kind == "openai" else ""
        base_url = (fields.string(ctx, m, "base_url", path, default_url) or "").rstrip("/")
        if kind == "openai" and not base_url.startswith(("http://", "https://")):
            ctx.problem(
                (*path, "base_url"), f"expected an http(s) URL, got {fields.show(base_url)}"
            )
        key = _provider_key(ctx, m, path, name, disabled)
        spec = ProviderSpec(
            name=name,
            kind="openai" if kind == "openai" else "mock",
            base_url=base_url,
            api_key=key,
            headers=_headers(ctx, m.get("headers"), (*path, "headers")),
            timeouts=fields.timeouts(ctx, m.get("timeouts"), (*path, "timeouts"), Timeouts()),
            max_connections=fields.integer(ctx, m, "max_connections", path, 256, 1),
            mock=_mock_knobs(ctx, m.get("mock"), (*path, "mock")) if kind == "mock" else "",
            limits={
                model: governance.limits(ctx, spec, (*path, "limits", model))
                for model, spec in fields.mapping(ctx, m.get("limits"), (*path, "limits")).items()
            },
        )
        providers[name] = spec  # switched-off ones too: their targets are still checked
    return providers, disabled


_BREAKS: Final = re.compile("[\r\n\0]")
_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _headers(ctx: fields.Problems, value: Any, path: Path) -> dict[str, str]:
    headers = {}
    for key, raw in fields.mapping(ctx, value, path).items():
        text = fields.string(ctx, {key: raw}, key, path, None)
        if text is None:
            ctx.problem((*path, key), f"expected a header value (a string), got {fields.show(raw)}")
        elif _BREAKS.search(key + text) or not _TOKEN.fullmatch(key):
            ctx.problem((*path, key), "a header name must be letters, digits and -_.!#$%&'*+^`|~, "
                        "and neither name nor value may hold a line break or NUL")  # fmt: skip
        else:
            headers[key] = text
    return headers


def _provider_key(
    ctx: fields.Problems, m: dict[str, Any], path: Path, name: str, disabled: dict[str, str]
) -> Secret | None:
    literal = m.get("api_key")
    if literal is not None and not isinstance(literal, str):
        ctx.problem((*path, "api_key"), "expected a string (the value is not shown)")
        literal = None
    env_name = fields.string(ctx, m, "api_key_env", path, None)
    optional = fields.boolean(ctx, m, "optional", path, False)
    if literal and env_name:
        ctx.problem((*path, "api_key"), "set api_key or api_key_env, not both")
    if env_name:
        literal = ctx.env.get(env_name, "")
        if not literal:
            if optional:
                disabled[name] = f"{env_name} is not set"
            else:
                ctx.problem(
                    (*path, "api_key_env"),
                    f"environment variable {env_name} is not set "
                    "(or mark the provider `optional: true` to start without it)",
                )
    if literal and _BREAKS.search(literal):
        where = f"environment variable {env_name}" if env_name else "api_key"
        ctx.problem((*path, "api_key_env" if env_name else "api_key"),
                    f"{where} holds a line break or NUL (a trailing newline from a file?); "
                    "remove it (the value is not shown)")  # fmt: skip
        literal = None
    return Secret(literal) if literal else None


def _mock_knobs(ctx: fields.Problems, value: Any, path: Path) -> str:
    from gateway.mock import KnobError, Knobs, parse_knob_header

    pairs = []
    for key, raw in fields.mapping(ctx, value, path).items():
        text = _knob(raw)
        if text is None:
            ctx.problem(
                (*path, key), f"expected a number, a string or a list, got {fields.show(raw)}"
            )
            continue
        try:
            parse_knob_header(f"{key}={text}", Knobs())
        except KnobError as e:
            ctx.problem((*path, key), str(e))
            continue
        pairs.append(f"{key}={text}")
    return ";".join(pairs)


def _knob(value: Any) -> str | None:
    """A knob value in the mock's header syntax, or None if it cannot be one."""
    if value is None:
        return "none"  # the mock's word for "not set"
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int | float) for v in items):
        return None
    text = ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in items)
    return None if ";" in text else text


def _clients(ctx: fields.Problems, value: Any, model_names: set[str]) -> dict[str, ClientSpec]:
    clients: dict[str, ClientSpec] = {}
    owner: dict[str, str] = {}
    for name, spec in fields.mapping(ctx, value, ("clients",)).items():
        path: Path = ("clients", name)
        if not fields.name(ctx, name, path, "client"):
            continue
        m = fields.mapping(ctx, spec, path, _CLIENT_KEYS)
        hashes = _key_hashes(ctx, m, path, "a client")
        for h in hashes:
            if h in owner:
                ctx.problem(path, f"uses the same API key as client {owner[h]!r}")
            owner[h] = name
        clients[name] = ClientSpec(
            name,
            frozenset(hashes),
            _allowed(ctx, m, path, model_names),
            limits=governance.limits(ctx, m.get("limits"), (*path, "limits")),
            model_limits=governance.model_limits(
                ctx, m.get("model_limits"), (*path, "model_limits"), model_names
            ),
            budget=governance.budget(ctx, m.get("budget"), (*path, "budget")),
        )
    return clients


def _key_hashes(ctx: fields.Problems, m: dict[str, Any], path: Path, who: str) -> set[str]:
    """The sha256 digests of the keys given as `key_sha256` (one or a list) and `key_env`."""
    hashes: set[str] = set()
    raw_hashes = m.get("key_sha256", [])
    for i, h in enumerate(raw_hashes if isinstance(raw_hashes, list) else [raw_hashes]):
        where = (*path, "key_sha256", i) if isinstance(raw_hashes, list) else (*path, "key_sha256")
        if isinstance(h, str) and _SHA256.fullmatch(h.lower()):
            hashes.add(h.lower())
        else:
            # never echo it: a malformed hash is often the key itself, pasted in by mistake
            size = f"{len(h)} characters" if isinstance(h, str) else type(h).__name__
            ctx.problem(where, f"expected 64 hex digits (sha256 of the key), got {size}")
    env_name = fields.string(ctx, m, "key_env", path, None)
    if env_name:
        key = ctx.env.get(env_name, "")
        if key:
            hashes.add(hashlib.sha256(key.encode()).hexdigest())
        else:
            ctx.problem((*path, "key_env"), f"environment variable {env_name} is not set")
    elif not raw_hashes:
        ctx.problem(path, f"{who} needs key_sha256 or key_env")
    return hashes


def _admin(ctx: fields.Problems, value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    path: Path = ("admin",)
    return frozenset(_key_hashes(ctx, fields.mapping(ctx, value, path, ("key_sha256", "key_env")),
                                 path, "the admin API"))  # fmt: skip


def _runs(ctx: fields.Problems, value: Any) -> RunsSpec:
    path: Path = ("runs",)
    m = fields.mapping(ctx, value, path, ("retention",))
    return RunsSpec(retention=fields.seconds(ctx, m, "retention", path, RunsSpec().retention))


def _idempotency(ctx: fields.Problems, value: Any) -> IdempotencySpec:
    path: Path = ("idempotency",)
    m = fields.mapping(ctx, value, path, ("retention", "lease", "wait", "memory"))
    d = IdempotencySpec()
    return IdempotencySpec(
        retention=fields.seconds(ctx, m, "retention", path, d.retention),
        lease=fields.seconds(ctx, m, "lease", path, d.lease),
        wait=fields.seconds(ctx, m, "wait", path, d.wait),
        memory=fields.size(ctx, m, "memory", path, d.memory),
    )


def _usage(ctx: fields.Problems, value: Any) -> UsageSpec:
    path: Path = ("usage",)
    m = fields.mapping(ctx, value, path, tuple(f.name for f in dataclass_fields(UsageSpec)))
    d = UsageSpec()
    return UsageSpec(
        enabled=fields.boolean(ctx, m, "enabled", path, d.enabled),
        flush=fields.seconds(ctx, m, "flush", path, d.flush),
        retention=fields.seconds(ctx, m, "retention", path, d.retention),
        daily_retention=fields.seconds(ctx, m, "daily_retention", path, d.daily_retention),
        max_queued=fields.integer(ctx, m, "max_queued", path, d.max_queued, 1),
    )


def _breakers(ctx: fields.Problems, value: Any) -> BreakerSpec:
    path: Path = ("breakers",)
    m = fields.mapping(ctx, value, path, tuple(f.name for f in dataclass_fields(BreakerSpec)))
    d = BreakerSpec()
    spec = BreakerSpec(
        fail_max=fields.integer(ctx, m, "fail_max", path, d.fail_max, 1),
        reset_timeout=fields.seconds(ctx, m, "reset_timeout", path, d.reset_timeout),
        max_reset_timeout=fields.seconds(ctx, m, "max_reset_timeout", path, d.max_reset_timeout),
        success_threshold=fields.integer(ctx, m, "success_threshold", path, d.success_threshold, 1),
        rate_limit_cooldown=fields.seconds(
            ctx, m, "rate_limit_cooldown", path, d.rate_limit_cooldown
        ),
        max_cooldown=fields.seconds(ctx, m, "max_cooldown", path, d.max_cooldown),
    )
    if spec.max_reset_timeout < spec.reset_timeout:
        ctx.problem((*path, "max_reset_timeout"), "must be at least reset_timeout")
    if spec.max_cooldown < spec.rate_limit_cooldown:
        ctx.problem((*path, "max_cooldown"), "must be at least rate_limit_cooldown")
    return spec


def _allowed(
    ctx: fields.Problems, m: dict[str, Any], path: Path, model_names: set[str]
) -> frozenset[str] | None:
    raw = m.get("models", "*")
    if raw == "*" or raw == ["*"]:
        return None
    if not isinstance(raw, list):
        ctx.problem(
            (*path, "models"), f'expected a list of model names or "*", got {fields.show(raw)}'
        )
        return frozenset()
    for i, model in enumerate(raw):
        if model not in model_names:
            ctx.problem((*path, "models", i), f"unknown model {fields.show(model)}")
    return frozenset(str(x) for x in raw)

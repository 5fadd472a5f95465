"""The one load step: YAML text -> `${ENV}` interpolation -> validated, frozen `Policy`.

Every problem is collected (not just the first) and names its place in the file, with the line:
`policy.yaml:14: models.gpt-4o.targets[1].timeouts.total: expected seconds, got "fast"`.
Environment variables are read here, once; nothing later looks at the environment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml

from gateway.config.schema import (
    ClientSpec,
    ModelSpec,
    Policy,
    ProviderSpec,
    Secret,
    ServerSpec,
    StoreSpec,
    TargetSpec,
    Timeouts,
)

Path = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20,
               "GB": 10**9, "GiB": 2**30}  # fmt: skip
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TOP_KEYS = ("version", "server", "store", "providers", "models", "clients")
_TIMEOUT_KEYS = ("connect", "first_byte", "idle", "total")
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
    if node is not None:
        _collect_lines(node, (), lines)
    ctx = _Ctx(lines, env)
    policy = _policy(ctx, _interpolate(ctx, data, ()), source)
    if ctx.problems or policy is None:
        raise PolicyError(source, ctx.problems or [" the policy is empty"])
    return policy


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class _Ctx:
    def __init__(self, lines: dict[Path, int], env: Mapping[str, str]):
        self.lines = lines
        self.env = env
        self.problems: list[str] = []

    def problem(self, path: Path, message: str) -> None:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        prefix = f"{line}:" if line is not None else ""
        self.problems.append(f"{prefix} {format_path(path)}: {message}")


def _collect_lines(node: yaml.Node, path: Path, out: dict[Path, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                out[(*path, key.value)] = key.start_mark.line + 1
                _collect_lines(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, (*path, i), out)


def _interpolate(ctx: _Ctx, value: Any, path: Path) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            found = ctx.env.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            ctx.problem(
                path,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to make it optional)",
            )
            return ""

        return _ENV_REF.sub(sub, value) if "$" in value else value
    if isinstance(value, dict):
        return {k: _interpolate(ctx, v, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(ctx, v, (*path, i)) for i, v in enumerate(value)]
    return value


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else ("null" if value is None else repr(value))


def _mapping(ctx: _Ctx, value: Any, path: Path, known: tuple[str, ...] = ()) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.problem(path, f"expected a mapping, got {_show(value)}")
        return {}
    for key in value:
        if not isinstance(key, str):
            ctx.problem(path, f"keys must be strings, got {_show(key)}")
        elif known and key not in known:
            ctx.problem((*path, key), f"unknown key; expected one of: {', '.join(known)}")
    return value


def _str(ctx: _Ctx, m: dict[str, Any], key: str, path: Path, default: str | None) -> str | None:
    value = m.get(key, default)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    ctx.problem((*path, key), f"expected a string, got {_show(value)}")
    return default


def _bool(ctx: _Ctx, m: dict[str, Any], key: str, path: Path, default: bool) -> bool:
    value = m.get(key, default)
    if isinstance(value, bool):
        return value
    ctx.problem((*path, key), f"expected true or false, got {_show(value)}")
    return default


def _int(ctx: _Ctx, m: dict[str, Any], key: str, path: Path, default: int, minimum: int) -> int:
    value = m.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    ctx.problem((*path, key), f"expected an integer >= {minimum}, got {_show(value)}")
    return default


def _seconds(ctx: _Ctx, m: dict[str, Any], key: str, path: Path, default: float) -> float:
    value = m.get(key, default)
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or seconds <= 0:
        ctx.problem((*path, key), f"expected seconds (e.g. 30, 30s, 500ms, 2m), got {_show(value)}")
        return default
    return seconds


def _size(ctx: _Ctx, m: dict[str, Any], key: str, path: Path, default: int) -> int:
    value = m.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)) and int(match.group(1)) > 0:
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    ctx.problem((*path, key), f"expected a size in bytes (e.g. 1048576, 32MiB), got {_show(value)}")
    return default


def _name(ctx: _Ctx, name: Any, path: Path, what: str) -> bool:
    if isinstance(name, str) and _NAME.match(name):
        return True
    ctx.problem(path, f"{_show(name)} is not a valid {what} name (letters, digits, _ . : -)")
    return False


def _timeouts(ctx: _Ctx, value: Any, path: Path, base: Timeouts) -> Timeouts:
    """Timeouts set here, the rest inherited from `base` and capped at the total: setting
    `total: 10s` alone is enough for a short deadline; an explicit longer phase is an error."""
    m = _mapping(ctx, value, path, _TIMEOUT_KEYS)
    total = _seconds(ctx, m, "total", path, base.total)
    phases: list[float] = []
    for k in ("connect", "first_byte", "idle"):
        seconds = _seconds(ctx, m, k, path, getattr(base, k))
        if k in m and seconds > total:
            ctx.problem((*path, k), f"{seconds:g}s is longer than total ({total:g}s)")
        phases.append(min(seconds, total))
    return Timeouts(*phases, total)


def _policy(ctx: _Ctx, data: Any, source: str) -> Policy | None:
    top = _mapping(ctx, data, (), _TOP_KEYS)
    if top.get("version", 1) != 1:
        ctx.problem(("version",), f"this gateway reads version 1, got {_show(top['version'])}")
    server = _server(ctx, top.get("server"))
    store = _store(ctx, top.get("store"))
    providers, disabled = _providers(ctx, top.get("providers"))
    models, unavailable = _models(ctx, top.get("models"), providers, disabled)
    clients = _clients(ctx, top.get("clients"), set(models) | set(unavailable))
    if not models and not unavailable and not ctx.problems:
        ctx.problem(("models",), "no models defined; add at least one under `models:`")
    return Policy(source, server, store, providers, models, clients, unavailable, disabled)


def _server(ctx: _Ctx, value: Any) -> ServerSpec:
    path: Path = ("server",)
    m = _mapping(ctx, value, path, ("max_body_bytes", "drain_timeout"))
    d = ServerSpec()
    return ServerSpec(
        max_body_bytes=_size(ctx, m, "max_body_bytes", path, d.max_body_bytes),
        drain_timeout=_seconds(ctx, m, "drain_timeout", path, d.drain_timeout),
    )


def _store(ctx: _Ctx, value: Any) -> StoreSpec:
    path: Path = ("store",)
    m = _mapping(ctx, value, path, ("kind", "path", "url"))
    d = StoreSpec()
    kind = _str(ctx, m, "kind", path, d.kind)
    if kind not in ("sqlite", "redis"):
        ctx.problem((*path, "kind"), f"expected sqlite or redis, got {_show(kind)}")
        kind = d.kind
    url = _str(ctx, m, "url", path, d.url) or d.url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        ctx.problem((*path, "url"), f"expected a redis:// or rediss:// URL, got {_show(url)}")
    return StoreSpec(kind=kind, path=_str(ctx, m, "path", path, d.path) or d.path, url=url)  # type: ignore[arg-type]


_PROVIDER_KEYS = ("kind", "base_url", "api_key", "api_key_env", "optional", "headers", "timeouts",
                  "max_connections", "mock")  # fmt: skip


def _providers(ctx: _Ctx, value: Any) -> tuple[dict[str, ProviderSpec], dict[str, str]]:
    providers: dict[str, ProviderSpec] = {}
    disabled: dict[str, str] = {}
    for name, spec in _mapping(ctx, value, ("providers",)).items():
        path: Path = ("providers", name)
        if not _name(ctx, name, path, "provider"):
            continue
        m = _mapping(ctx, spec, path, _PROVIDER_KEYS)
        kind = _str(ctx, m, "kind", path, None)
        if kind not in ("openai", "mock"):
            ctx.problem((*path, "kind"), f"expected openai or mock, got {_show(kind)}")
            continue
        default_url = _DEFAULT_OPENAI_URL if kind == "openai" else ""
        base_url = (_str(ctx, m, "base_url", path, default_url) or "").rstrip("/")
        if kind == "openai" and not base_url.startswith(("http://", "https://")):
            ctx.problem((*path, "base_url"), f"expected an http(s) URL, got {_show(base_url)}")
        key = _provider_key(ctx, m, path, name, disabled)
        headers = _mapping(ctx, m.get("headers"), (*path, "headers"))
        providers[name] = ProviderSpec(
            name=name,
            kind="openai" if kind == "openai" else "mock",
            base_url=base_url,
            api_key=key,
            headers={str(k): str(v) for k, v in headers.items()},
            timeouts=_timeouts(ctx, m.get("timeouts"), (*path, "timeouts"), Timeouts()),
            max_connections=_int(ctx, m, "max_connections", path, 256, 1),
            mock=_mock_knobs(ctx, m.get("mock"), (*path, "mock")) if kind == "mock" else "",
        )
    return providers, disabled


def _provider_key(
    ctx: _Ctx, m: dict[str, Any], path: Path, name: str, disabled: dict[str, str]
) -> Secret | None:
    literal = _str(ctx, m, "api_key", path, None)
    env_name = _str(ctx, m, "api_key_env", path, None)
    optional = _bool(ctx, m, "optional", path, False)
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
    return Secret(literal) if literal else None


def _mock_knobs(ctx: _Ctx, value: Any, path: Path) -> str:
    from gateway.mock import KnobError, Knobs, parse_knob_header

    header = ";".join(f"{k}={_knob(v)}" for k, v in _mapping(ctx, value, path).items())
    try:
        parse_knob_header(header, Knobs())
    except KnobError as e:
        ctx.problem(path, str(e))
    return header


def _knob(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _models(
    ctx: _Ctx, value: Any, providers: dict[str, ProviderSpec], disabled: dict[str, str]
) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    models: dict[str, ModelSpec] = {}
    unavailable: dict[str, str] = {}
    for name, spec in _mapping(ctx, value, ("models",)).items():
        path: Path = ("models", name)
        if not _name(ctx, name, path, "model"):
            continue
        m = _mapping(ctx, spec, path, ("targets", "owned_by"))
        raw_targets = m.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            ctx.problem((*path, "targets"), "expected a non-empty list of targets")
            continue
        targets: list[TargetSpec] = []
        reasons: list[str] = []
        for i, raw in enumerate(raw_targets):
            target = _target(ctx, raw, (*path, "targets", i), name, providers, disabled)
            if isinstance(target, TargetSpec):
                targets.append(target)
            elif target:
                reasons.append(target)
        owned_by = _str(ctx, m, "owned_by", path, "savepoint") or "savepoint"
        if targets:
            models[name] = ModelSpec(name, tuple(targets), owned_by)
        elif reasons:
            unavailable[name] = "; ".join(reasons)
    return models, unavailable


def _target(
    ctx: _Ctx,
    raw: Any,
    path: Path,
    model: str,
    providers: dict[str, ProviderSpec],
    disabled: dict[str, str],
) -> TargetSpec | str | None:
    """A target, or the reason it is switched off, or None after reporting a problem."""
    if isinstance(raw, str):
        name, _, upstream_name = raw.partition("/")
        raw = {"provider": name, "model": upstream_name or model}
    m = _mapping(ctx, raw, path, ("provider", "model", "timeouts"))
    provider = _str(ctx, m, "provider", path, None)
    upstream = _str(ctx, m, "model", path, model) or model
    if provider in disabled:
        return f"provider {provider!r} is switched off: {disabled[provider]}"
    spec = providers.get(provider or "")
    if spec is None:
        known = ", ".join(sorted(providers)) or "none defined"
        ctx.problem((*path, "provider"), f"unknown provider {_show(provider)} (known: {known})")
        return None
    timeouts = _timeouts(ctx, m.get("timeouts"), (*path, "timeouts"), spec.timeouts)
    return TargetSpec(provider=spec.name, model=upstream, timeouts=timeouts)


def _clients(ctx: _Ctx, value: Any, model_names: set[str]) -> dict[str, ClientSpec]:
    clients: dict[str, ClientSpec] = {}
    owner: dict[str, str] = {}
    for name, spec in _mapping(ctx, value, ("clients",)).items():
        path: Path = ("clients", name)
        if not _name(ctx, name, path, "client"):
            continue
        m = _mapping(ctx, spec, path, ("key_sha256", "key_env", "models"))
        hashes: set[str] = set()
        raw_hashes = m.get("key_sha256", [])
        for i, h in enumerate(raw_hashes if isinstance(raw_hashes, list) else [raw_hashes]):
            where = (
                (*path, "key_sha256", i) if isinstance(raw_hashes, list) else (*path, "key_sha256")
            )
            if isinstance(h, str) and _SHA256.match(h.lower()):
                hashes.add(h.lower())
            else:
                ctx.problem(where, f"expected 64 hex digits (sha256 of the key), got {_show(h)}")
        env_name = _str(ctx, m, "key_env", path, None)
        if env_name:
            key = ctx.env.get(env_name, "")
            if key:
                hashes.add(hashlib.sha256(key.encode()).hexdigest())
            else:
                ctx.problem((*path, "key_env"), f"environment variable {env_name} is not set")
        elif not hashes:
            ctx.problem(path, "a client needs key_sha256 or key_env")
        for h in hashes:
            if h in owner:
                ctx.problem(path, f"uses the same API key as client {owner[h]!r}")
            owner[h] = name
        clients[name] = ClientSpec(name, frozenset(hashes), _allowed(ctx, m, path, model_names))
    return clients


def _allowed(
    ctx: _Ctx, m: dict[str, Any], path: Path, model_names: set[str]
) -> frozenset[str] | None:
    raw = m.get("models", "*")
    if raw == "*" or raw == ["*"]:
        return None
    if not isinstance(raw, list):
        ctx.problem((*path, "models"), f'expected a list of model names or "*", got {_show(raw)}')
        return frozenset()
    for i, model in enumerate(raw):
        if model not in model_names:
            ctx.problem((*path, "models", i), f"unknown model {_show(model)}")
    return frozenset(str(x) for x in raw)


def with_provider_url(policy: Policy, provider: str, base_url: str) -> Policy:
    """The policy with one provider's base URL set (for the in-process mock's ephemeral port)."""
    providers = dict(policy.providers)
    providers[provider] = replace(providers[provider], base_url=base_url)
    return replace(policy, providers=providers)

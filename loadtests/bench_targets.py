"""The targets of `bench.py`: what each one is, how it is started and checked, and what is
cleaned up after it.

    direct            the mock itself: the limit
    passthrough       loadtests/passthrough.py: the floor of a Python proxy
    savepoint-sqlite  `savepoint serve --workers 1` with a production policy, embedded store
    savepoint-redis   the same policy with `store: {kind: redis}`
    litellm           LiteLLM's proxy, one worker, when its executable is found

Every proxy sits on the system-under-test CPU; the mock on the load CPU. The Savepoint
policies turn on what a production policy does: authentication (one client, key `sk-bench`),
client limits far above what the run sends and a client budget (so admission and its store
calls run, and nothing is refused), the usage ledger, breakers (the defaults) and the
response cache on the model. The client and the model carry the run's nonce, so every key the
Redis target creates can be found and deleted at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import Child, ChildFailed, Children, free_port, pinned

HERE = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-bench"  # what chat.lua, replay.lua and the open-loop clients send
CHAT_PATH = "/v1/chat/completions"
# Far above anything the run sends: admission does its work, never refuses.
LIMITS = {"rpm": 100_000_000, "tpm": 100_000_000_000}
BUDGET = {"tokens": 1_000_000_000_000}  # the largest allowed
ORDER = ("direct", "passthrough", "savepoint-sqlite", "savepoint-redis", "litellm")
# LiteLLM must not reach the internet at start: the bundled cost map, no admin UI.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_ADMIN_UI": "True"}


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # one of ORDER
    url: str  # its chat completions URL
    process: Child  # whose CPU time and RSS are read (direct: the mock)
    model: str  # the model name requests ask for

    @property
    def savepoint(self) -> bool:
        return self.name.startswith("savepoint-")

    @property
    def base(self) -> str:
        return self.url.removesuffix(CHAT_PATH)


@dataclass(frozen=True, slots=True)
class Stack:
    mock: Child
    mock_url: str  # http://127.0.0.1:<port>
    targets: tuple[Target, ...]
    missing: dict[str, str]  # target -> why it is not measured
    litellm_version: str | None


@dataclass(frozen=True, slots=True)
class Names:
    """What carries the run's nonce: the Savepoint client and model."""

    nonce: str

    @property
    def client(self) -> str:
        return f"bench-{self.nonce}"

    @property
    def model(self) -> str:
        return f"bench-{self.nonce}"


def savepoint_policy(store: str, mock_port: int, work: Path, names: Names, pool: int) -> str:
    """A production policy (JSON is YAML)."""
    spec: dict[str, Any] = (
        {"path": str(work / "savepoint.db")}
        if store == "sqlite"
        else {"kind": "redis", "url": REDIS_URL}
    )
    doc = {
        "version": 1,
        "store": spec,
        "providers": {
            "up": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{mock_port}/v1",
                "api_key": "sk-x",
                # Sized for the held streams, as a deployment expecting them would be; the
                # pass-through gets the same pool.
                "max_connections": pool,
            }
        },
        "clients": {
            names.client: {
                "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "limits": LIMITS,
                "budget": BUDGET,
            }
        },
        "models": {names.model: {"targets": ["up/mock-gpt"], "cache": {"enabled": True}}},
    }
    return json.dumps(doc, indent=2)


def litellm_config(mock_port: int) -> str:
    doc = {
        "model_list": [
            {
                "model_name": "mock-gpt",
                "litellm_params": {
                    "model": "openai/mock-gpt",
                    "api_base": f"http://127.0.0.1:{mock_port}/v1",
                    "api_key": "sk-x",
                },
            }
        ],
        # Its own authentication, as Savepoint's: the same key.
        "general_settings": {"master_key": KEY},
    }
    return json.dumps(doc, indent=2)


def find_litellm(given: Path | None) -> str | None:
    if given is not None:
        return str(given) if given.exists() else None
    return shutil.which("litellm")


def litellm_version(executable: str) -> str | None:
    """From the package metadata of the interpreter next to it (`litellm --version` may try
    the network first)."""
    python = Path(executable).with_name("python")
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    try:
        out = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def start(
    children: Children,
    work: Path,
    names: Names,
    sut_cpu: int | None,
    load_cpu: int | None,
    chunks: int,
    pool: int,
    litellm: str | None,
) -> Stack:
    """Every target, listening and answering one request each."""
    python = sys.executable
    mock_port, pass_port = free_port(), free_port()
    mock_argv = [python, "-m", "gateway", "mock", "--port", str(mock_port), "--chunks", str(chunks)]
    mock = children.start("mock", pinned(load_cpu, mock_argv))
    upstream = f"http://127.0.0.1:{mock_port}"
    pass_argv = [python, str(HERE / "passthrough.py"), "--port", str(pass_port), "--upstream"]
    passthrough = children.start(
        "passthrough", pinned(sut_cpu, [*pass_argv, upstream, "--max-connections", str(pool)])
    )
    listening = [(mock, mock_port), (passthrough, pass_port)]
    targets = [
        Target("direct", f"{upstream}{CHAT_PATH}", mock, "mock-gpt"),
        Target("passthrough", f"http://127.0.0.1:{pass_port}{CHAT_PATH}", passthrough, "mock-gpt"),
    ]
    for store in ("sqlite", "redis"):
        (work / store).mkdir()
        policy = work / store / "policy.yaml"
        policy.write_text(savepoint_policy(store, mock_port, work / store, names, pool))
        port = free_port()
        argv = [python, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port)]
        # One worker, always (the default is one per CPU). Its stderr is the access log.
        child = children.start(f"savepoint-{store}", pinned(sut_cpu, [*argv, "--workers", "1"]))
        listening.append((child, port))
        targets.append(
            Target(f"savepoint-{store}", f"http://127.0.0.1:{port}{CHAT_PATH}", child, names.model)
        )
    missing: dict[str, str] = {}
    version = None
    if litellm is None:
        missing["litellm"] = "not installed (pass --litellm PATH, or put `litellm` on PATH)"
    else:
        version = litellm_version(litellm)
        config = work / "litellm.yaml"
        config.write_text(litellm_config(mock_port))
        port = free_port()
        argv = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        child = children.start(
            "litellm", pinned(sut_cpu, [*argv, "--num_workers", "1"]), env=LITELLM_ENV
        )
        listening.append((child, port))
        targets.append(Target("litellm", f"http://127.0.0.1:{port}{CHAT_PATH}", child, "mock-gpt"))
    for child, port in listening:
        child.wait_listening(port, timeout=120.0 if child.name == "litellm" else 30.0)
    for target in targets:
        if target.savepoint:
            _check_ready(target)
    for target in targets:
        check_answer(
            target, {"model": target.model, "messages": [{"role": "user", "content": "hi"}]}
        )
    return Stack(mock, upstream, tuple(targets), missing, version)


def _check_ready(target: Target) -> None:
    try:
        with urllib.request.urlopen(f"{target.base}/readyz", timeout=10) as reply:
            ready = json.load(reply)
    except (OSError, ValueError) as e:
        raise ChildFailed(f"{target.name}: /readyz failed: {e}\n{target.process.tail()}") from None
    if ready.get("store") != "ok":
        raise ChildFailed(f"{target.name}: store not ready: {ready}\n{target.process.tail()}")


def check_answer(
    target: Target, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, str]:
    """One request, which must be a 200 (a stream: ending with [DONE]); its answer headers.
    Before measuring, so a broken target fails at once with its own words."""
    request = urllib.request.Request(
        target.url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
        | (headers or {}),
    )
    for attempt in range(3):
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                text = reply.read().decode()
                answer = {k.lower(): v for k, v in reply.headers.items()}
            break
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            message = f"{target.name} answered a sample request with {e.code}: {detail}"
            raise ChildFailed(f"{message}\n{target.process.tail()}") from None
        except OSError as e:  # LiteLLM accepts connections before it serves: retry a little
            if attempt == 2:
                message = f"{target.name} failed a sample request: {e}"
                raise ChildFailed(f"{message}\n{target.process.tail()}") from None
            time.sleep(2.0)
    if body.get("stream") and not text.endswith("data: [DONE]\n\n"):
        raise ChildFailed(f"{target.name} answered a stream without [DONE]:\n{text[-500:]}")
    return answer


def mock_total(mock_url: str) -> int:
    with urllib.request.urlopen(f"{mock_url}/_mock/stats", timeout=10) as reply:
        return int(json.load(reply)["total"])


def set_knobs(mock_url: str, knobs: str) -> None:
    """Replace the mock's knobs (`x-mock` syntax); "" restores those it started with."""
    request = urllib.request.Request(f"{mock_url}/_mock/knobs", data=knobs.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


# --- Redis: what the run wrote --------------------------------------------------------------

# Rewrites a usage log list without the entries naming the run (its client carries the nonce),
# keeping its expiry; atomic, so appends of other gateways meanwhile are kept.
_FILTER_LOG = """
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local keep = {}
for _, entry in ipairs(all) do
  if not string.find(entry, ARGV[1], 1, true) then keep[#keep + 1] = entry end
end
if #keep == #all then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 1, #keep, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return #all - #keep
"""


def clean_redis(names: Names, idempotency_keys: list[str], started: float) -> dict[str, int]:
    """Delete what savepoint-redis wrote for this run: limit and budget keys, cache entries,
    idempotency records, and its usage-ledger entries and daily counters. Run after the
    gateway stopped (a late settle or flush would write again). How many of each."""
    try:
        import redis  # the gateway's own dependency

        from gateway.decide.idempotency import record_key

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"sp:{{limits}}:*{names.nonce}*", count=1000))
        counts = {"limits": len(keys)}
        cache = list(client.scan_iter(match=f"sp:{{cache:{names.model}}}:*", count=1000))
        counts["cache"] = len(cache)
        records = [record_key(names.client, key) for key in idempotency_keys]
        idem = [k for r in records for k in (f"sp:{{idem:{r}}}", f"sp:{{idem:{r}}}:log")]
        counts["idempotency"] = len(records)
        everything = keys + cache + idem
        for at in range(0, len(everything), 1000):
            client.delete(*everything[at : at + 1000])
        entries = fields = 0
        for day in _days(started, time.time()):
            entries += int(client.eval(_FILTER_LOG, 1, f"sp:{{usage}}:log:{day}", names.nonce))  # type: ignore[arg-type]
            ours = [f for f, _ in client.hscan_iter(f"sp:{{usage}}:day:{day}", f"*{names.nonce}*")]
            if ours:
                fields += int(client.hdel(f"sp:{{usage}}:day:{day}", *ours))  # type: ignore[arg-type]
        counts["usage_entries"], counts["usage_day_fields"] = entries, fields
        client.close()
        return counts
    except Exception as e:  # cleanup must not hide the result
        print(f"bench: could not delete the Redis keys: {e}", file=sys.stderr)
        return {"error": -1}


def _days(since: float, until: float) -> list[str]:
    first = int(since // 86400)
    return [
        time.strftime("%Y-%m-%d", time.gmtime(d * 86400))
        for d in range(first, int(until // 86400) + 1)
    ]


def redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def cpu_split() -> tuple[int | None, int | None]:
    """(the system under test's CPU, the mock's and the load generators'); None, None with
    fewer than two CPUs: nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)

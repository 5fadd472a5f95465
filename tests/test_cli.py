"""The `savepoint` command: clear one-line failures with exit code 1, never a traceback."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, Gateways, Proc, free_port

SHIPPED = sorted(
    path
    for path in glob.glob(str(ROOT / "policies" / "*.yaml"))
    + glob.glob(str(ROOT / "policies" / "examples" / "*.yaml"))
    if not path.endswith("prices.yaml")  # the price table, not a policy
)
EXAMPLE_ENV = {"OPENAI_API_KEY": "sk-x", "AGENT_KEY": "sp-x", "SAVEPOINT_CI_KEY": "sp-ci"}


def _savepoint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("policy", SHIPPED, ids=lambda p: Path(p).name)
def test_every_shipped_policy_passes_check(policy: str) -> None:
    result = _savepoint("check", policy, env=EXAMPLE_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{policy}: ok")


def test_default_policy_checks_without_any_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "policies/default.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "provider openai off: OPENAI_API_KEY is not set" in result.stdout


def test_check_reports_each_problem_with_file_line_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n  up: {kind: openai}\nmodels:\n  gpt-4o:\n    targets:\n"
        "      - up/gpt-4o\n      - {provider: up, timeouts: {total: fast}}\n"
    )
    result = _savepoint("check", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{bad}:7: models.gpt-4o.targets[1].timeouts.total: expected seconds "
        '(e.g. 30, 500ms, 2m, 7d), got "fast"'
    )


def test_serve_with_missing_policy_fails_in_one_line(tmp_path: Path) -> None:
    result = _savepoint(
        "serve", "--policy", str(tmp_path / "none.yaml"), "--port", str(free_port())
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "cannot read the policy file" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_unset_env_var_names_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policy",
            "policies/examples/openai.yaml",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**env, "AGENT_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "environment variable OPENAI_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_fails_in_one_line(gateways: Gateways) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        policy = gateways.policy_file(
            "version: 1\nproviders: {m: {kind: mock}}\nmodels: {x: {targets: [m/mock-gpt]}}\n"
        )
        result = _savepoint("serve", "--policy", str(policy), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"savepoint: cannot listen on 127.0.0.1:{port}: the port is already in use (use --port)"
    )


def test_serve_without_clients_refuses_a_public_address(gateways: Gateways) -> None:
    policy = gateways.policy_file(
        "version: 1\nproviders: {m: {kind: mock}}\nmodels: {x: {targets: [m/mock-gpt]}}\n"
    )
    result = _savepoint(
        "serve", "--policy", str(policy), "--host", "0.0.0.0", "--port", str(free_port())
    )
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure-no-auth" in result.stderr


def test_insecure_no_auth_flag_allows_it(gateways: Gateways) -> None:
    policy = gateways.policy_file(
        "version: 1\nproviders: {m: {kind: mock}}\n"
        "models: {x: {targets: [m/mock-gpt]}}\n"
        f'store: {{path: "{gateways.policy_file("x").parent}/open.db"}}\n'
    )
    port = free_port()
    proc = Proc(
        [
            "serve",
            "--policy",
            str(policy),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--insecure-no-auth",
        ]
    )
    try:
        proc.wait_port(port)
    finally:
        assert proc.stop() == 0


def test_default_policy_serves_mock_gpt_with_no_key_and_no_network(tmp_path: Path) -> None:
    """The README's first command, as a fresh user runs it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}/v1" in banner
        assert "store sqlite .savepoint/savepoint.db" in banner
        import openai

        client = openai.OpenAI(api_key="any", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        reply = client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert "OPENAI_API_KEY" in caught.value.message
        assert (tmp_path / ".savepoint" / "savepoint.db").exists()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_mock_command_prints_its_real_port_and_stops_quickly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "mock", "--port", "0", "--chunks", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        url = banner.rsplit(" ", 1)[-1].strip()
        assert banner.startswith("savepoint mock listening on http://127.0.0.1:")
        assert not url.endswith(":0/v1")
        import openai

        client = openai.OpenAI(api_key="x", base_url=url, max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert len((reply.choices[0].message.content or "").split()) == 3
    finally:
        proc.terminate()
        assert proc.wait(5) == 0

"""What skipping a deployment whose breaker is open costs a request.

    python loadtests/breaker_skip.py [--rate 200] [--duration 6]

Two routes to the same healthy mock deployment: `direct` goes straight to it; `skip` lists a
dead deployment first, whose breaker is opened before measuring, so every `skip` request
passes over it. Both are driven at the same fixed rate (open loop, CPU-pinned as in
bench.py); the difference in their latency percentiles is the cost of the skip.
Prints a markdown table; exits 1 if a request failed or a `skip` request reached the dead
deployment. No absolute time is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from processes import Children, free_port, pinned

POLICY = """\
version: 1
store: {{path: {store}}}
breakers: {{fail_max: 3, reset_timeout: 10m, max_reset_timeout: 10m}}
retries: {{attempts_per_target: 1}}
providers:
  dead:
    kind: openai
    base_url: http://127.0.0.1:{mock}/v1
    headers: {{x-mock: "status=503;scope=dead"}}
  live:
    kind: openai
    base_url: http://127.0.0.1:{mock}/v1
    headers: {{x-mock: "scope=live"}}
models:
  direct: {{targets: [live/mock-gpt]}}
  skip: {{targets: [dead/mock-gpt, live/mock-gpt]}}
"""
BODY = {"model": "", "messages": [{"role": "user", "content": "Say hello."}]}


def _post(url: str, model: str) -> int:
    data = json.dumps({**BODY, "model": model}).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _stats(mock: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mock}/_mock/stats", timeout=5) as r:
        return dict(json.load(r)["by_scope"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="savepoint-skip-") as tmp:
        work = Path(tmp)
        children = Children(work)
        try:
            mock, gw = free_port(), free_port()
            mock_argv = [sys.executable, "-m", "gateway", "mock", "--port", str(mock)]
            children.start("mock", pinned(1, mock_argv)).wait_listening(mock)
            policy = work / "policy.yaml"
            policy.write_text(POLICY.format(store=work / "sp.db", mock=mock))
            gw_argv = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy),
                       "--port", str(gw), "--workers", "1"]  # fmt: skip
            children.start("gateway", pinned(0, gw_argv)).wait_listening(gw)
            url = f"http://127.0.0.1:{gw}/v1/chat/completions"
            for _ in range(3):  # open the dead deployment's breaker
                _post(url, "skip")
            dead_before = _stats(mock).get("dead", 0)
            results = {}
            for model in ("direct", "skip", "direct", "skip"):  # interleaved, best of two
                load_argv = [
                    sys.executable, str(Path(__file__).parent / "openloop.py"), "--url", url,
                    "--rate", str(args.rate), "--duration", str(args.duration),
                    "--body", json.dumps({**BODY, "model": model}),
                ]  # fmt: skip
                out = children.run(f"load-{model}", pinned(1, load_argv), args.duration + 60)
                report = json.loads(out)
                if report["errors"] or report["ok"] != report["requests"]:
                    print(f"{model}: failed requests: {report['errors']}", file=sys.stderr)
                    return 1
                best = results.get(model)
                if best is None or report["end_ms"]["p50"] < best["end_ms"]["p50"]:
                    results[model] = report
            if _stats(mock).get("dead", 0) != dead_before:
                print("a `skip` request reached the dead deployment", file=sys.stderr)
                return 1
        finally:
            children.stop_all()
    d, s = results["direct"]["end_ms"], results["skip"]["end_ms"]
    print(f"Skipping an open breaker, {args.rate:g} requests/s, {args.duration:g} s per run, "
          "best of two (ms):\n")  # fmt: skip
    print("| route | p50 | p90 | p99 |\n|---|--:|--:|--:|")
    print(f"| direct to the live deployment | {d['p50']:.3f} | {d['p90']:.3f} | {d['p99']:.3f} |")
    print(f"| dead deployment skipped first | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} |")
    print(f"| added by the skip | {s['p50'] - d['p50']:+.3f} | {s['p90'] - d['p90']:+.3f} | "
          f"{s['p99'] - d['p99']:+.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load past capacity: many clients against one clip-search model whose queue holds ``--max_queue`` requests.

Setup: the demo-size base CLIP with one LoRA adapter and an exact index of ``--videos`` vectors (built by
``benchmarks/serving.py``'s helpers), served by ``python -m serving.server`` on 127.0.0.1 with client tokens. Each
client is an asyncio task with one V1 search in flight; a client refused with HTTP 429 waits 50 ms (a client that
honours ``Retry-After`` would wait longer). A separate process probes ``/v2/health/ready`` every 20 ms on a new
connection each time. Phases, each ``--seconds`` long:

- ``at capacity``: ``--max_queue`` clients against the bounded server (the baseline: nothing should be refused);
- ``past capacity``: ``--clients`` clients against the same server;
- ``unbounded``: ``--clients`` clients against a server whose queue never fills (``--max_queue 10000``): what the
  server did before the queue had a bound.

Printed per phase: answers by status, transport errors, admitted searches per second, p50/p99 latency of the
admitted ones, the refusals counted by the server (``clipsync_requests_refused_total`` on ``/metrics``), and the
health probe's median, 99th percentile and maximum latency; then the ratios to the baseline.

Run: ``.venv/bin/python benchmarks/serving_load.py [--clients 128] [--seconds 20] [--max_queue 8]``. The suite's
``tests/test_serving_server.py::test_load_past_capacity_is_refused_not_queued`` drives :func:`overload` and
:class:`HealthProbe` for 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
QUERY = {"instances": [{"text": "surgery video", "top_k": 5}]}


async def overload(
    url: str, model: str, token: str, clients: int, seconds: float, retry_wait_s: float | None = None
) -> dict:
    """``clients`` concurrent clients searching ``model`` for ``seconds``; what they got back.

    A client refused with HTTP 429 waits ``retry_wait_s`` before its next request, or, when ``None``, what the
    answer's ``Retry-After`` asks. aiohttp drives them: httpx's pool, at 128 connections in one process, sent
    fewer requests per second than the server refuses (measured), so it measured the client.
    """
    import aiohttp

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout, headers=headers) as session:
        deadline = time.monotonic() + seconds

        async def one_client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(f"/v1/models/{model}:predict", json=QUERY) as response:
                        await response.read()
                except aiohttp.ClientError:
                    errors += 1
                    continue
                statuses[str(response.status)] += 1
                if response.status == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status == 429:
                    wait = float(response.headers.get("Retry-After", 1)) if retry_wait_s is None else retry_wait_s
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))

        wall = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.monotonic() - wall
    latencies.sort()
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "status": dict(sorted(statuses.items())),
        "transport_errors": errors,
        "ok_per_s": round(len(latencies) / wall, 1),
        "p50_ms_ok": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms_ok": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1)
        if latencies
        else None,
    }


def refused_total(url: str, admin_token: str) -> float:
    """The server's count of refusals for a full queue (``/metrics``, admin token)."""
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {admin_token}"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        text = reply.read().decode()
    found = re.search(r'^clipsync_requests_refused_total\{reason="queue_full"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def probe(url: str, seconds: float, interval: float = 0.02) -> dict:
    """GET ``/v2/health/ready`` every ``interval`` on a new connection for ``seconds``: latencies and failures."""
    parts = urlsplit(url)
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            ok = False
        latencies.append(round((time.perf_counter() - started) * 1000, 2))
        failures += not ok
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return {"latencies_ms": latencies, "failures": failures}


class HealthProbe:
    """:func:`probe` in another process (not slowed down by this one's clients) while the block runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies_ms: list[float] = []
        self.failures = 0

    def __enter__(self) -> HealthProbe:
        self._stop = Path(tempfile.mkdtemp(prefix="clipsync-probe-")) / "stop"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", self.url, "--stop-file", str(self._stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)  # the probe's interpreter starts before the load does
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.touch()
        out, _ = self.proc.communicate(timeout=60)
        shutil.rmtree(self._stop.parent, ignore_errors=True)
        result = json.loads(out)
        self.latencies_ms, self.failures = result["latencies_ms"], result["failures"]


def _probe_until(url: str, stop_file: Path) -> None:
    latencies, failures = [], 0
    while not stop_file.exists():
        chunk = probe(url, 0.2)
        latencies += chunk["latencies_ms"]
        failures += chunk["failures"]
    sys.stdout.write(json.dumps({"latencies_ms": latencies, "failures": failures}))


def _serving_bench():
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_phase(url: str, token: str, admin: str, clients: int, seconds: float) -> dict:
    before = refused_total(url, admin)
    with HealthProbe(url) as health:
        result = asyncio.run(overload(url, "clip-bench", token, clients, seconds))
    result["refused_counted"] = int(refused_total(url, admin) - before)
    result["server_errors"] = sum(n for code, n in result["status"].items() if code.startswith("5"))
    ordered = sorted(health.latencies_ms)
    result["health_p50_ms"] = round(statistics.median(ordered), 1)
    result["health_p99_ms"] = ordered[int(0.99 * (len(ordered) - 1))]
    result["health_max_ms"] = max(health.latencies_ms)
    result["health_probes"] = len(health.latencies_ms)
    result["health_failures"] = health.failures
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max_queue", type=int, default=8)
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        _probe_until(args.probe, Path(args.stop_file))
        return
    bench = _serving_bench()
    token, admin = "bench-client-token-0001", "bench-admin-token-00002"
    os.environ["BENCH_TOKENS"] = json.dumps({token: ["bench"]})
    os.environ["BENCH_ADMIN"] = admin
    report = {}
    with tempfile.TemporaryDirectory(prefix="clipsync-load-") as tmp:
        work = Path(tmp)
        model = bench.build_adapter(bench.build_base(work), work / "clip-bench", args.videos)
        common = [f"--load=clip-bench={model}", "--tokens_env=BENCH_TOKENS", "--admin_token_env=BENCH_ADMIN"]
        for label, queue, clients in (
            ("at capacity", args.max_queue, args.max_queue),
            ("past capacity", args.max_queue, args.clients),
            ("unbounded", 10_000, args.clients),  # the largest serving.max_queue: never full here
        ):
            server = bench.Server([*common, f"--max_queue={queue}"], work / f"server-{queue}.log", args.threads)
            try:
                report[label] = run_phase(server.url, token, admin, clients, args.seconds)
            finally:
                server.stop()
            print(json.dumps({label: report[label]}), flush=True)
    base = report["at capacity"]
    print("\n| phase | clients | answers by status | 5xx | admitted/s | p50/p99 ms admitted | refused (counted) "
          "| health p50/p99/max ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, r in report.items():
        print(
            f"| {label} | {r['clients']} | {r['status']} | {r['server_errors']} | {r['ok_per_s']} | "
            f"{r['p50_ms_ok']}/{r['p99_ms_ok']} | {r['status'].get('429', 0)} ({r['refused_counted']}) | "
            f"{r['health_p50_ms']}/{r['health_p99_ms']}/{r['health_max_ms']} |"
        )
    for label in ("past capacity", "unbounded"):
        r = report[label]
        print(
            f"{label} vs at capacity: p99 of admitted searches x{r['p99_ms_ok'] / base['p99_ms_ok']:.2f}, "
            f"admitted/s x{r['ok_per_s'] / base['ok_per_s']:.2f}, "
            f"health max x{r['health_max_ms'] / base['health_max_ms']:.2f}"
        )


if __name__ == "__main__":
    main()

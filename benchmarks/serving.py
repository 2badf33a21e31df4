"""Serving benchmarks: search through the real model server vs in-process, and many clients on one server.

Setup: the demo-size base CLIP (4 + 4 layers, width 128; 2 pretraining steps: timing, not quality, is measured
here) with one LoRA adapter (r=16 on q_proj/v_proj), an exact index of ``--videos`` random vectors, started
as ``python -m serving.server`` on 127.0.0.1 twice: with dynamic batching (``--batch_max 32 --batch_wait_ms 5``)
and without (``--batch_max 1``). At 1, 8 and 32 concurrent clients (asyncio tasks, one request in flight each)
it records p50/p99 latency, throughput and the CPU time a request costs the server process and the client (CPU
time is the steadier figure on a shared machine). The in-process baseline runs the predictor's own ``predict`` with
the same concurrency and batching in this process: the server's overhead is the ratio of the two. Both servers run
at once and the six cells (in-process, REST, gRPC; batched, unbatched) alternate in ``--rounds`` blocks per
concurrency level: the machine's load, shared with other work, changes by the minute and used to fall on one cell
more than another (each server and the baseline used to be measured one after the other).

``--baseline REF`` (default ``main``; ``''`` for none): a third, batched server runs the code of that git ref
(``git archive`` into a temporary tree, the server started from it) and its REST cells join the rounds, swapping
places with this tree's every other round: the REST figures of this tree and of the baseline's code come from the
same run (verdicts ``baseline_rest_over_in_process_p50_lone``, against this tree's in-process cell, and
``rest_p50_lone_this_over_baseline``).

A block holds ``--requests / --rounds`` requests, and at least ``--per-client`` per client: at 32 clients a block of
40 requests (160 / 4, the earlier size) was one batch of 32 and a tail, a start-up transient of about 0.15 s that a
single time slice of another process could halve or double (the batching ratio moved between 2.8x and 5.9x from run
to run). The verdict is the median over rounds of each round's own ratio (batched / unbatched REST throughput at the
highest level; REST / in-process p50 of a lone search on the batched server), with its spread and how many rounds
meet the goal (>= 3x; <= 1.2x). The server's CPU a request is split into its event loop (the main thread: HTTP,
JSON, gRPC's asyncio side) and its other threads (the model calls in the thread pool); each server's log line at
stop (batch sizes, queue, model and hand-back times) is printed at the end.

The REST client (``--client raw``, the default) is a minimal HTTP/1.1 keep-alive client on asyncio streams (one
connection per client): about 0.2 ms of CPU a request, where httpx's ``AsyncClient`` (``--client httpx``) spends
2.4-3.5 ms. The client shares the 2 cores with the server, so with httpx a loaded machine measured the client: at
32 clients it could not send fast enough to fill the server's batches (2.6 searches per model call). The client's
CPU time per request is printed with each REST figure.

Multi-model (``--part multi-model``): three clients' adapters (each with its own index of ``--videos`` vectors)
loaded one after the other into one server started as the multi-model ServingRuntime starts it (``--repository_dir``,
``--base_model``): its RSS after each, against the RSS of a server holding one client; then the p50 of sequential
searches cycling over the three clients against the p50 on the one-client server.

``--part loop-profile``: cProfile on the event loop of a batched server of this tree and of the baseline's code over
``--requests`` lone searches each: the share of the loop's own time by package.

Run: ``.venv/bin/python benchmarks/serving.py [--part all|batching|multi-model|loop-profile] [--requests 160]
[--videos 10000] [--client raw|httpx] [--rounds 4] [--per-client 8] [--baseline main]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES = [
    "a small red circle on a blue background",
    "a large green square",
    "surgery video",
    "forklift in a warehouse",
]


def build_base(work: Path, threads: int = 1) -> Path:
    """The demo base CLIP, built on ``threads`` torch threads: the builder sets this process' torch thread count,
    and its default (every CPU) used to leave the in-process baseline on 2 threads where the servers ran on 1
    (their OpenMP threads spinning on the loaded machine: 12-13 ms of CPU a lone search against the server's 8-9)."""
    from components.finetune_clip.base_model import build_demo_base_clip

    return build_demo_base_clip(
        work / "base", seed=0, time_budget_s=30, max_steps=2, batch_size=16, num_threads=threads
    )


def build_adapter(base: Path, out: Path, videos: int, seed: int = 0) -> Path:
    """A LoRA adapter (r=16 on q_proj/v_proj, random B) with an exact index of ``videos`` random vectors."""
    import torch
    from peft import LoraConfig, get_peft_model

    from components.finetune_clip.model import load_base_clip
    from serving.index import VideoIndex

    bundle = load_base_clip(str(base))
    model = get_peft_model(bundle.model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(str(out))
    (out / "card.json").write_text(json.dumps({"base_model": str(base), "strategy": "lora", "pooling": "mean"}))
    dim = bundle.model.config.projection_dim
    vecs = np.random.default_rng(seed).standard_normal((videos, dim)).astype(np.float32)
    VideoIndex([f"v{i:07d}" for i in range(videos)], vecs).save(out / "index")
    return out


@dataclass
class Samples:
    """Latencies of one (path, concurrency) cell, gathered over rounds, with the wall and client CPU time."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: float = 0.0
    server_loop_cpu: float = 0.0
    blocks: list[tuple[float, float, float]] = field(default_factory=list)  # each block's qps, p50 ms, server CPU ms

    def summary(self) -> dict[str, float | list[float]]:
        lat = sorted(self.latencies)
        return {
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2),
            "qps": round(len(lat) / self.wall, 1),
            "client_cpu_ms": round(self.cpu * 1000 / len(lat), 3),
            "server_cpu_ms": round(self.server_cpu * 1000 / len(lat), 3),
            "server_loop_cpu_ms": round(self.server_loop_cpu * 1000 / len(lat), 3),
            "rounds_qps": [round(q, 1) for q, _, _ in self.blocks],
            "rounds_p50_ms": [round(p, 2) for _, p, _ in self.blocks],
            "rounds_server_cpu_ms": [round(c, 3) for _, _, c in self.blocks],
        }


def process_cpu_s(pid: int | None, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (or of one of its threads) so far (0 for ``None``).

    A thread's time comes from its ``schedstat`` (nanoseconds, exact while the thread waits, as a server's event loop
    does between requests); ``stat`` counts clock ticks of 10 ms, a quarter of the event loop's CPU in a block of 26
    lone searches. A process' time stays ``stat``'s: it keeps the time of threads that have ended.
    """
    if pid is None:
        return 0.0
    if thread is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0]) / 1e9
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawHttp:
    """A minimal HTTP/1.1 client for the benchmark: ``size`` keep-alive connections, JSON POSTs, no redirects,
    no chunked replies (uvicorn sends a ``content-length``)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def __aenter__(self) -> RawHttp:
        for _ in range(self.size):
            self._idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self._idle.empty():
            self._idle.get_nowait()[1].close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self._idle.get()
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length"
            )
            return status, await reader.readexactly(length)
        finally:
            self._idle.put_nowait((reader, writer))


async def drive(call, concurrency: int, total: int, into: Samples, server: int | None = None) -> None:
    """``concurrency`` workers issue ``total`` calls in all (after 4 warm-up calls); adds them to ``into`` as one
    block, with the CPU time of this process and of the ``server`` process (a PID; its main thread, the event loop,
    apart) meanwhile."""
    counter = iter(range(total))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await call(QUERIES[i % len(QUERIES)])
            latencies.append(time.perf_counter() - t)

    for i in range(min(4, total)):  # warm up
        await call(QUERIES[i % len(QUERIES)])
    start, cpu = time.perf_counter(), time.process_time()
    server_cpu, loop_cpu = process_cpu_s(server), process_cpu_s(server, server)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    into.wall += wall
    into.cpu += time.process_time() - cpu
    server_cpu = process_cpu_s(server) - server_cpu
    into.server_cpu += server_cpu
    into.server_loop_cpu += process_cpu_s(server, server) - loop_cpu
    into.latencies += latencies
    into.blocks.append((len(latencies) / wall, statistics.median(latencies) * 1000, server_cpu * 1000 / len(latencies)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def compare(
    work: Path,
    model_dir: Path,
    levels: list[int],
    total: int,
    threads: int,
    client_kind: str,
    rounds: int,
    per_client: int,
    baseline: Path | None = None,
) -> dict[str, dict]:
    """In-process, REST V1 and gRPC V2, with dynamic batching (``--batch_max 32 --batch_wait_ms 5``) and without
    (``--batch_max 1``), at each concurrency level, and REST V1 on a batched server of the ``baseline`` tree's code:
    the cells alternate in ``rounds`` blocks of ``total / rounds`` calls each (at least ``per_client`` per client),
    so that the machine's changing load falls on all of them alike; this tree's and the baseline's REST blocks swap
    places every other round."""
    import httpx
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    from serving.clip_search import ClipSearchModel
    from serving.config import ServingConfig

    batch_max = {"batched": 32, "unbatched": 1}
    trees = {"batched": ROOT, "unbatched": ROOT}
    if baseline is not None:
        batch_max["baseline"], trees["baseline"] = 32, baseline
    paths = ("in_process", "rest_v1", "grpc_v2")
    samples = {label: {path: {c: Samples() for c in levels} for path in paths} for label in batch_max}
    servers: dict[str, Server] = {}
    models: dict[str, ClipSearchModel] = {}
    try:
        for label, size in batch_max.items():
            args = ["--load", f"clip-bench={model_dir}", "--batch_max", str(size), "--batch_wait_ms", "5",
                    "--threads", str(threads)]  # fmt: skip
            servers[label] = Server(args, work / f"server-{label}.log", threads, tree=trees[label])
            if label != "baseline":
                models[label] = ClipSearchModel(
                    "clip-bench", model_dir, ServingConfig(batch_max=size, batch_wait_ms=5.0)
                )
                models[label].load()

        async def in_process_block(label: str, c: int, block: int) -> None:
            model = models[label]

            async def in_process(text: str) -> None:
                await model.predict(await model.preprocess({"instances": [{"text": text, "top_k": 5}]}))

            await drive(in_process, c, block, samples[label]["in_process"][c])

        async def rest_block(label: str, c: int, block: int) -> None:
            srv, body = servers[label], {"instances": [{"text": "", "top_k": 5}]}
            if client_kind == "httpx":
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:

                    async def rest(text: str) -> None:
                        body["instances"][0]["text"] = text
                        (await client.post("/v1/models/clip-bench:predict", json=body)).raise_for_status()

                    await drive(rest, c, block, samples[label]["rest_v1"][c], srv.proc.pid)
                return
            async with RawHttp("127.0.0.1", srv.http, c) as raw:

                async def rest(text: str) -> None:
                    body["instances"][0]["text"] = text
                    status, answer = await raw.post("/v1/models/clip-bench:predict", json.dumps(body).encode())
                    if status != 200:
                        raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")

                await drive(rest, c, block, samples[label]["rest_v1"][c], srv.proc.pid)

        async def grpc_block(label: str, c: int, block: int) -> None:
            srv = servers[label]
            # opened for its own block only: its threads must not run during the other blocks
            grpc_client = InferenceGRPCClient(url=f"127.0.0.1:{srv.grpc}", timeout=60)

            async def grpc_v2(text: str) -> None:
                inp = InferInput("text", [1], "BYTES")
                inp.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
                k = InferInput("top_k", [1], "INT32")
                k.set_data_from_numpy(np.array([5], dtype=np.int32))
                await grpc_client.infer(InferRequest("clip-bench", [inp, k], request_id="b"))

            try:
                await drive(grpc_v2, c, block, samples[label]["grpc_v2"][c], srv.proc.pid)
            finally:
                await grpc_client.close()

        for c in levels:
            block = max(1, total // rounds, per_client * c)
            for n in range(rounds):
                rest = [("batched", rest_block)] + ([("baseline", rest_block)] if "baseline" in servers else [])
                cells = [
                    ("batched", in_process_block),
                    *(rest if n % 2 == 0 else rest[::-1]),
                    ("batched", grpc_block),
                    ("unbatched", in_process_block),
                    ("unbatched", rest_block),
                    ("unbatched", grpc_block),
                ]
                for label, run_block in cells:
                    await run_block(label, c, block)
    finally:
        for model in models.values():
            model.stop()
        for srv in servers.values():
            srv.stop()
    report = {
        label: {path: {str(c): samples[label][path][c].summary() for c in levels if samples[label][path][c].latencies}
                for path in paths}
        for label in batch_max
    }  # fmt: skip
    report["server_logs"] = {label: batch_log_lines(work / f"server-{label}.log") for label in batch_max}
    return report


def batch_log_lines(log: Path) -> list[str]:
    """The server's log lines about its batcher (written when the model stops)."""
    lines = []
    for line in log.read_text().splitlines():
        if "batch calls" in line:
            try:
                lines.append(json.loads(line)["msg"])
            except (ValueError, KeyError):
                lines.append(line)
    return lines


def verdict(report: dict, levels: list[int]) -> dict[str, dict]:
    """The two goals from each round's own figures (the blocks of one round ran within seconds of each other):
    batched / unbatched REST throughput at the highest level (goal >= 3x), and the REST / in-process p50 of a lone
    search on the batched server (goal <= 1.2x); median, spread and rounds meeting the goal. Beside the throughput,
    the unbatched / batched server CPU a search at that level (against the same 3x): the figure the machine's load
    moves least. With a baseline server: its REST / in-process p50 of a lone search (this tree's in-process cell of
    the same round: the predictor is the same code) and this tree's REST p50 / the baseline's ("rounds meeting" counts
    those where this tree was faster)."""

    def summary(ratios: list[float], goal: float, above: bool) -> dict:
        met = sum(r >= goal if above else r <= goal for r in ratios)
        return {
            "median": round(statistics.median(ratios), 2),
            "min": round(min(ratios), 2),
            "max": round(max(ratios), 2),
            "rounds": [round(r, 2) for r in ratios],
            "rounds_meeting_goal": f"{met}/{len(ratios)}",
        }

    top, out = str(max(levels)), {}
    batched, unbatched = report["batched"]["rest_v1"][top], report["unbatched"]["rest_v1"][top]
    ratios = [b / u for b, u in zip(batched["rounds_qps"], unbatched["rounds_qps"], strict=True)]
    out[f"rest_batching_gain_at_{top}"] = summary(ratios, 3.0, above=True)
    ratios = [u / b for b, u in zip(batched["rounds_server_cpu_ms"], unbatched["rounds_server_cpu_ms"], strict=True)]
    out[f"rest_batching_cpu_saving_at_{top}"] = summary(ratios, 3.0, above=True)
    if 1 in levels:
        inproc = report["batched"]["in_process"]["1"]
        for label, name in (
            ("batched", "rest_over_in_process_p50_lone"),
            ("baseline", "baseline_rest_over_in_process_p50_lone"),
        ):
            if label in report:
                rest = report[label]["rest_v1"]["1"]
                ratios = [r / i for r, i in zip(rest["rounds_p50_ms"], inproc["rounds_p50_ms"], strict=True)]
                out[name] = summary(ratios, 1.2, above=False)
        if "baseline" in report:
            this, base = report["batched"]["rest_v1"]["1"], report["baseline"]["rest_v1"]["1"]
            ratios = [t / b for t, b in zip(this["rounds_p50_ms"], base["rounds_p50_ms"], strict=True)]
            out["rest_p50_lone_this_over_baseline"] = summary(ratios, 1.0, above=False)
    return out


# ------------------------------------------------------------------------------------------- multi-model


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


class Server:
    """``python -m serving.server ARGS`` of the code in ``tree`` on free loopback ports (query log off), stopped by
    PID."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        threads: int,
        tree: Path = ROOT,
        launch: tuple[str, ...] = ("-m", "serving.server"),
    ) -> None:
        import urllib.request

        self.http, self.grpc = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        cmd = [sys.executable, *launch, *args, "--host", "127.0.0.1", "--http_port", str(self.http),
               "--grpc_port", str(self.grpc), "--query_log_uri", "off"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(tree)}
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start; see {log}")
            time.sleep(0.3)

    def post(self, path: str, body: dict) -> dict:
        import urllib.request

        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def search(self, model: str, text: str) -> None:
        self.post(f"/v1/models/{model}:predict", {"instances": [{"text": text, "top_k": 5}]})

    def p50_ms(self, models: list[str], total: int) -> float:
        """Median latency of ``total`` sequential searches, cycling over ``models`` and the queries."""
        for i in range(4):  # warm up
            self.search(models[i % len(models)], QUERIES[i % len(QUERIES)])
        lat = []
        for i in range(total):
            t = time.perf_counter()
            self.search(models[i % len(models)], QUERIES[i % len(QUERIES)])
            lat.append(time.perf_counter() - t)
        return round(statistics.median(lat) * 1000, 2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


#: ``python -c`` launcher of a server whose event loop (the main thread) SIGUSR1 puts under cProfile and SIGUSR2 takes
#: out of it, writing the stats to the file named by ``LOOP_PROFILE``.
PROFILED_SERVER = """
import cProfile, os, signal, sys
profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
signal.signal(signal.SIGUSR2, lambda *_: (profile.disable(), profile.dump_stats(os.environ["LOOP_PROFILE"])))
from serving.server import main
sys.exit(main(sys.argv[1:]))
"""


def loop_profile(work: Path, model_dir: Path, total: int, threads: int, tree: Path = ROOT) -> dict[str, float]:
    """Where a batched server of ``tree``'s code spends its event loop's own time on ``total`` lone REST searches
    (cProfile on its main thread; waiting in ``epoll`` left out): the share of each package (``stdlib:<module>``,
    ``serving/<file>``, a builtin's name), largest first. cProfile slows small Python calls more than C ones: shares,
    not milliseconds."""
    import pstats
    from collections import Counter

    work.mkdir()
    stats_file = work / "loop.prof"
    os.environ["LOOP_PROFILE"] = str(stats_file)
    args = ["--load", f"clip-bench={model_dir}", "--batch_max", "32", "--batch_wait_ms", "5", "--threads", str(threads)]
    srv = Server(args, work / "server.log", threads, tree=tree, launch=("-c", PROFILED_SERVER))

    async def searches(raw: RawHttp, n: int) -> None:
        for i in range(n):
            body = json.dumps({"instances": [{"text": QUERIES[i % len(QUERIES)], "top_k": 5}]}).encode()
            status, answer = await raw.post("/v1/models/clip-bench:predict", body)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")

    async def run() -> None:
        async with RawHttp("127.0.0.1", srv.http, 1) as raw:
            await searches(raw, 10)
            srv.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.5)
            await searches(raw, total)
            srv.proc.send_signal(signal.SIGUSR2)
            for _ in range(100):  # the stats are written by the server's signal handler
                await asyncio.sleep(0.1)
                if stats_file.exists():
                    break

    try:
        asyncio.run(run())
    finally:
        srv.stop()
    shares: Counter[str] = Counter()
    for (path, _, name), (_, _, own, _, _) in pstats.Stats(str(stats_file)).stats.items():
        if "'poll' of 'select.epoll'" in name:
            continue
        if path == "~":
            key = f"builtin {name}"
        elif "site-packages/" in path:
            key = path.split("site-packages/")[1].split("/")[0]
        elif "/serving/" in path:
            key = "serving/" + path.rsplit("/", 1)[1]
        else:
            key = "stdlib:" + path.split("python3")[-1].split("/")[1] if "python3" in path else path
        shares[key] += own
    whole = sum(shares.values())
    return {"loop_ms_a_search_profiled": round(whole * 1000 / total, 3)} | {
        k: round(v / whole, 3) for k, v in shares.most_common(15)
    }


def multi_model(work: Path, base: Path, adapters: dict[str, Path], total: int, threads: int) -> dict:
    """RSS per client added to a multi-model server vs one server per client; p50 of a search, 3 vs 1 client.

    The multi-model server runs as the generated ``clipsync-clip-search-mms`` runtime does: ``--repository_dir``
    (each client's folder put there as KServe's model agent does, then ``.../load``) and ``--base_model``.
    """
    import shutil

    from serving.release import write_release

    repo = work / "mnt-models"
    repo.mkdir()
    pool = Server(["--kind", "clip-search", "--repository_dir", str(repo), "--base_model", str(base)],
                  work / "pool.log", threads)  # fmt: skip
    rss = [rss_mib(pool.proc.pid)]
    try:
        for name, src in adapters.items():
            shutil.copytree(src, repo / name)
            write_release(repo / name, name, "1")
            pool.post(f"/v2/repository/models/{name}/load", {})
            pool.search(name, QUERIES[0])
            rss.append(rss_mib(pool.proc.pid))
        p50_pool = pool.p50_ms(list(adapters), total)
    finally:
        pool.stop()
    first = next(iter(adapters))
    alone = Server(["--kind", "clip-search", "--load", f"{first}={adapters[first]}"], work / "alone.log", threads)
    try:
        alone.search(first, QUERIES[0])
        rss_alone = rss_mib(alone.proc.pid)
        p50_alone = alone.p50_ms([first], total)
    finally:
        alone.stop()
    added = [b - a for a, b in itertools.pairwise(rss)]
    src = adapters[first]
    return {
        "rss_base_only_mib": round(rss[0], 1),
        "rss_after_each_client_mib": [round(r, 1) for r in rss[1:]],
        "rss_added_per_client_mib": [round(a, 1) for a in added],
        "rss_added_per_client_median_mib": round(statistics.median(added), 1),
        "rss_one_client_server_mib": round(rss_alone, 1),
        "adapter_file_mib": round((src / "adapter_model.safetensors").stat().st_size / 2**20, 2),
        "index_mib": round(folder_mib(src / "index"), 2),
        "base_file_mib": round(folder_mib(base), 1),
        "p50_ms_3_clients_one_server": p50_pool,
        "p50_ms_1_client_server": p50_alone,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["batching", "multi-model", "loop-profile", "all"], default="all")
    p.add_argument("--requests", type=int, default=160, help="requests per (protocol, concurrency) cell")
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--threads", type=int, default=1, help="torch threads (server and in-process)")
    p.add_argument("--rounds", type=int, default=4, help="alternating blocks per (path, concurrency) cell")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="REST client (see the module doc)")
    p.add_argument("--per-client", type=int, default=8, help="fewest requests per client in a block")
    p.add_argument("--baseline", default="main", help="git ref whose code serves the baseline REST cells ('' for none)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=1, user_api="blas")  # what the server does (ServingConfig.blas_threads)
    levels = [int(x) for x in args.levels.split(",")]
    print(f"load average at the start {os.getloadavg()}", flush=True)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
        work = Path(tmp)
        base = build_base(work, args.threads)
        model_dir = build_adapter(base, work / "clip-bench", args.videos)
        baseline = None
        if args.baseline and args.part != "multi-model":
            baseline = work / "baseline"
            baseline.mkdir()
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                                    capture_output=True, text=True).stdout.strip()  # fmt: skip
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
            print(f"baseline: the code of {args.baseline} ({commit})", flush=True)
        if args.part in ("batching", "all"):
            report.update(
                asyncio.run(
                    compare(
                        work, model_dir, levels, args.requests, args.threads, args.client, args.rounds,
                        args.per_client, baseline,
                    )
                )
            )  # fmt: skip
            report["verdict"] = verdict(report, levels)
            labels = [label for label in ("batched", "unbatched", "baseline") if label in report]
            print(json.dumps({label: report[label] for label in labels}), flush=True)
        if args.part in ("multi-model", "all"):
            adapters = {f"clip-{c}": build_adapter(base, work / c, args.videos, seed=i + 1)
                        for i, c in enumerate(("acme", "beta", "gamma"))}  # fmt: skip
            report["multi_model"] = multi_model(work, base, adapters, args.requests, args.threads)
            print(json.dumps({"multi_model": report["multi_model"]}), flush=True)
        if args.part == "loop-profile":
            trees = {"this tree": ROOT} | ({"baseline": baseline} if baseline else {})
            report["loop_profile"] = {
                label: loop_profile(
                    work / f"profile-{label.replace(' ', '-')}", model_dir, args.requests, args.threads, tree
                )
                for label, tree in trees.items()
            }
            for label, shares in report["loop_profile"].items():
                print(f"{label}: the event loop's own time on lone searches, by package (cProfile):")
                for key, share in shares.items():
                    print(f"  {key}: {share}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"load average at the end {os.getloadavg()}")
    paths = ("in_process", "rest_v1", "grpc_v2")
    if "batched" in report:
        print(
            "\n| batching | clients | in-process p50/p99 ms, qps | REST V1 p50/p99 ms, qps | gRPC V2 p50/p99 ms, qps "
            "| overhead REST/gRPC (p50) |"
        )
        print("|---|---|---|---|---|---|")
        for label in ("batched", "unbatched"):
            r = report[label]
            for c in levels:
                ip, rs, gr = r["in_process"][str(c)], r["rest_v1"][str(c)], r["grpc_v2"][str(c)]

                def cell(x):
                    return f"{x['p50_ms']}/{x['p99_ms']}, {x['qps']}"

                ratio = f"{rs['p50_ms'] / ip['p50_ms']:.2f}x / {gr['p50_ms'] / ip['p50_ms']:.2f}x"
                print(f"| {label} | {c} | {cell(ip)} | {cell(rs)} | {cell(gr)} | {ratio} |")
        print(
            "\nCPU ms a request (in-process: this process; REST and gRPC: the server process, of which its event "
            "loop, and the client):"
        )
        for label in ("batched", "unbatched"):
            r = report[label]
            for c in levels:
                ip, rs, gr = r["in_process"][str(c)], r["rest_v1"][str(c)], r["grpc_v2"][str(c)]
                print(
                    f"  {label} {c} clients: in-process {ip['client_cpu_ms']}, REST server {rs['server_cpu_ms']} "
                    f"(loop {rs['server_loop_cpu_ms']}; client {rs['client_cpu_ms']}), gRPC server "
                    f"{gr['server_cpu_ms']} (loop {gr['server_loop_cpu_ms']}; client {gr['client_cpu_ms']})"
                )
        if "baseline" in report:
            for c in levels:
                rs, this = report["baseline"]["rest_v1"][str(c)], report["batched"]["rest_v1"][str(c)]
                print(
                    f"  baseline (batched) {c} clients: REST p50/p99 {rs['p50_ms']}/{rs['p99_ms']} ms, {rs['qps']} qps "
                    f"(this tree {this['p50_ms']}/{this['p99_ms']} ms, {this['qps']} qps); server CPU "
                    f"{rs['server_cpu_ms']} (loop {rs['server_loop_cpu_ms']}; this tree {this['server_cpu_ms']}, loop "
                    f"{this['server_loop_cpu_ms']})"
                )
        if "unbatched" in report:
            for c in levels:
                gain = {p: report["batched"][p][str(c)]["qps"] / report["unbatched"][p][str(c)]["qps"] for p in paths}
                print(
                    f"batched / unbatched throughput at {c} clients: "
                    + ", ".join(f"{p} {g:.2f}x" for p, g in gain.items())
                )
        for label, lines in report["server_logs"].items():
            for line in lines:
                print(f"{label} server: {line}")
        for name, v in report["verdict"].items():
            print(
                f"verdict {name}: median {v['median']}x over rounds {v['rounds']} (spread {v['min']}-{v['max']}), "
                f"goal met in {v['rounds_meeting_goal']} rounds"
            )
    if "multi_model" in report:
        m = report["multi_model"]
        added, alone = m["rss_added_per_client_median_mib"], m["rss_one_client_server_mib"]
        print(
            f"\nmulti-model: RSS added per client {added} MiB (median of {m['rss_added_per_client_mib']}; adapter "
            f"{m['adapter_file_mib']} MiB + index {m['index_mib']} MiB on disk) vs {alone} MiB for a server of its "
            f"own ({alone / max(added, 0.1):.0f}x); the base alone: {m['rss_base_only_mib']} MiB RSS "
            f"({m['base_file_mib']} MiB on disk)"
        )
        print(
            f"search p50: {m['p50_ms_3_clients_one_server']} ms on a 3-client server vs "
            f"{m['p50_ms_1_client_server']} ms on a 1-client server "
            f"({m['p50_ms_3_clients_one_server'] / m['p50_ms_1_client_server']:.2f}x)"
        )


if __name__ == "__main__":
    main()

"""Text search through the real model server (REST V1 and gRPC V2) against the same model in-process.

Setup: the demo-size base CLIP (4 + 4 layers, width 128; 2 pretraining steps: timing, not quality, is measured
here) with one LoRA adapter (r=16 on q_proj/v_proj), an exact index of ``--videos`` random vectors, started
as ``python -m serving.server`` on 127.0.0.1 twice: with dynamic batching (``--batch_max 32 --batch_wait_ms 5``)
and without (``--batch_max 1``). At 1, 8 and 32 concurrent clients (asyncio tasks, one request in flight each)
it records p50/p99 latency and throughput. The in-process baseline runs the predictor's own ``predict`` with the
same concurrency and batching in this process: the server's overhead is the ratio of the two.

Run: ``.venv/bin/python benchmarks/serving.py [--requests 160] [--videos 10000] [--threads 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


def build_assets(work: Path, videos: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from components.finetune_clip.base_model import build_demo_base_clip
    from components.finetune_clip.model import load_base_clip
    from serving.index import VideoIndex

    base = build_demo_base_clip(work / "base", seed=0, time_budget_s=30, max_steps=2, batch_size=16)
    bundle = load_base_clip(str(base))
    model = get_peft_model(bundle.model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    out = work / "clip-bench"
    model.save_pretrained(str(out))
    (out / "card.json").write_text(json.dumps({"base_model": str(base), "strategy": "lora", "pooling": "mean"}))
    dim = bundle.model.config.projection_dim
    vecs = np.random.default_rng(0).standard_normal((videos, dim)).astype(np.float32)
    VideoIndex([f"v{i:07d}" for i in range(videos)], vecs).save(out / "index")
    return out


def summarize(latencies: list[float], wall: float) -> dict[str, float]:
    lat = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2),
        "qps": round(len(lat) / wall, 1),
    }


async def drive(call, concurrency: int, total: int) -> dict[str, float]:
    """``concurrency`` workers issue ``total`` calls in all; each call's latency is recorded."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await call(QUERIES[i % len(QUERIES)])
            latencies.append(time.perf_counter() - t)

    for i in range(min(4, total)):  # warm up
        await call(QUERIES[i % len(QUERIES)])
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, time.perf_counter() - start)


async def in_process(model_dir: Path, batch_max: int, levels: list[int], total: int) -> dict[str, dict]:
    from serving.clip_search import ClipSearchModel
    from serving.config import ServingConfig

    model = ClipSearchModel("clip-bench", model_dir, ServingConfig(batch_max=batch_max, batch_wait_ms=5.0))
    model.load()

    async def call(text: str) -> None:
        await model.predict({"instances": [{"text": text, "top_k": 5}]})

    out = {str(c): await drive(call, c, total) for c in levels}
    model.stop()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def through_server(model_dir: Path, batch_max: int, levels: list[int], total: int, threads: int) -> dict:
    import httpx
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    http, grpc_port = free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "serving.server", "--model", f"clip-bench={model_dir}", "--host", "127.0.0.1",
        "--http_port", str(http), "--grpc_port", str(grpc_port), "--batch_max", str(batch_max),
        "--batch_wait_ms", "5", "--query_log_uri", "off",
    ]  # fmt: skip
    log = open(model_dir.parent / f"server-{batch_max}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    results: dict[str, dict] = {"rest_v1": {}, "grpc_v2": {}}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start; see " + log.name)
                await asyncio.sleep(0.3)

            async def rest(text: str) -> None:
                r = await client.post("/v1/models/clip-bench:predict", json={"instances": [{"text": text, "top_k": 5}]})
                r.raise_for_status()

            for c in levels:
                results["rest_v1"][str(c)] = await drive(rest, c, total)
        grpc_client = InferenceGRPCClient(url=f"127.0.0.1:{grpc_port}", timeout=60)

        async def grpc_call(text: str) -> None:
            inp = InferInput("text", [1], "BYTES")
            inp.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
            k = InferInput("top_k", [1], "INT32")
            k.set_data_from_numpy(np.array([5], dtype=np.int32))
            await grpc_client.infer(InferRequest("clip-bench", [inp, k], request_id="b"))

        for c in levels:
            results["grpc_v2"][str(c)] = await drive(grpc_call, c, total)
        await grpc_client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=160, help="requests per (protocol, concurrency) cell")
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--threads", type=int, default=1, help="torch threads (server and in-process)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=1, user_api="blas")  # what the server does (ServingConfig.blas_threads)
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="clipsync-bench-") as tmp:
        model_dir = build_assets(Path(tmp), args.videos)
        report: dict[str, dict] = {}
        for label, batch_max in (("batched", 32), ("unbatched", 1)):
            report[label] = {
                "in_process": asyncio.run(in_process(model_dir, batch_max, levels, args.requests)),
                **asyncio.run(through_server(model_dir, batch_max, levels, args.requests, args.threads)),
            }
            print(json.dumps({label: report[label]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        "\n| batching | clients | in-process p50/p99 ms, qps | REST V1 p50/p99 ms, qps | gRPC V2 p50/p99 ms, qps "
        "| overhead REST/gRPC (p50) |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in report.items():
        for c in levels:
            ip, rs, gr = r["in_process"][str(c)], r["rest_v1"][str(c)], r["grpc_v2"][str(c)]

            def cell(x):
                return f"{x['p50_ms']}/{x['p99_ms']}, {x['qps']}"

            ratio = f"{rs['p50_ms'] / ip['p50_ms']:.2f}x / {gr['p50_ms'] / ip['p50_ms']:.2f}x"
            print(f"| {label} | {c} | {cell(ip)} | {cell(rs)} | {cell(gr)} | {ratio} |")


if __name__ == "__main__":
    main()

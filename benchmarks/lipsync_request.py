"""A lip-sync request: ``POST /api/lip-sync`` on a 10 s talking head, this tree's server vs a baseline ref's server.

Setup: a 10 s, 25 fps talking head (the demo's real face sprite on a studio backdrop, its mouth following
speech-like audio), ``--width`` x ``--height``, H.264 with a keyframe every ``--keyint`` frames (phone cameras write
one every 1-2 s; x264's default is 250) and AAC audio; the demo-size lip-sync detector (default
``LipSyncModelConfig``, random weights: time, not accuracy, is measured). Two model servers
(``python -m serving.server --load lipsync-bench=DIR``) on 127.0.0.1: the baseline, the tree of ``--baseline``
(default ``main``, extracted with ``git archive``: the code as it is there; ``--baseline 2264da7`` is the code before
the analysis window was decoded alone), and this working tree. Requests alternate between them (``--rounds``, after
one warm-up each); the figures are medians of the client's wall time and of the CPU time the request cost the server
process (all its threads; the steadier figure on a shared machine), and the ratios this/baseline.

``--part decode`` times only the decoding in this process, on the same file: training's ``extract_video`` (search
frames + dense clip, slice threads) vs the predictor's ``extract_analysis_clip`` (window only) with 1 decoder
thread and with ``available_cpus()`` threads (frame threading, ``thread_type = "AUTO"``).

Run: ``.venv/bin/python benchmarks/lipsync_request.py [--part all|server|decode] [--rounds 7] [--keyint 50]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def talking_head(path: Path, seconds: float, width: int, height: int, keyint: int, fps: int = 25) -> Path:
    import av

    from components.demo_data.faces import FacePose, FaceSprite, studio_background
    from components.demo_data.speech import frame_envelope, speech_audio, syllables

    rng = np.random.default_rng(3)
    n = round(seconds * fps)
    syl = syllables(rng, -0.5, seconds + 0.5)
    opening = frame_envelope(syl, n, fps)
    sprite = FaceSprite(FacePose(cx=width / 2, cy=height / 2, face_px=0.45 * height, wobble_px=2.0))
    background = studio_background(rng, height, width)
    sound = speech_audio(syl, seconds, 16000, rng)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps, options={"g": str(keyint), "preset": "veryfast", "crf": "23"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for f in range(n):
            img = background.copy()
            sprite.paint(img, float(opening[f]), f / fps)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")))
        out.mux(vs.encode())
        frame = av.AudioFrame.from_ndarray(sound.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(aus.encode(frame))
        out.mux(aus.encode())
    return path


def detector(out: Path) -> Path:
    import torch

    from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, save_model

    torch.manual_seed(0)
    return save_model(LipSyncDetector(LipSyncModelConfig()), out)


def server(tree: Path, model: Path, cache: Path, log: Path):
    from serving_assets import ServerProcess, free_port

    http, grpc = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "serving.server", "--load", f"lipsync-bench={model}", "--cache_dir", str(cache),
        "--http_port", str(http), "--grpc_port", str(grpc), "--query_log_uri", "off",
    ]  # fmt: skip
    proc = ServerProcess(cmd, http, grpc, log, env={"PYTHONPATH": str(tree), "OMP_NUM_THREADS": ""})
    return proc


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(srv, video: bytes) -> tuple[float, dict]:
    from serving_assets import multipart

    body, ctype = multipart("video_file", "talk.mp4", video)
    t = time.perf_counter()
    status, answer = srv.call("POST", "/api/lip-sync", data=body, headers={"Content-Type": ctype})
    wall = time.perf_counter() - t
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {answer}")
    return wall, answer


def part_server(args: argparse.Namespace, work: Path, video: Path, cache: Path) -> dict:
    baseline = work / "baseline"
    baseline.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
    model = detector(work / "model")
    servers = {}
    try:
        for name, tree in (("baseline", baseline), ("this", ROOT)):
            servers[name] = server(tree, model, cache, work / f"{name}.log").wait_ready()
        data = video.read_bytes()
        walls: dict[str, list[float]] = {name: [] for name in servers}
        seconds: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        answers = {}
        for name, srv in servers.items():
            answers[name] = post(srv, data)[1]  # warm-up
        for _ in range(args.rounds):
            for name, srv in servers.items():
                before = process_cpu_s(srv.proc.pid)
                wall, answer = post(srv, data)
                cpu[name].append(process_cpu_s(srv.proc.pid) - before)
                walls[name].append(wall)
                seconds[name].append(answer["seconds"])
    finally:
        for srv in servers.values():
            srv.stop()
    result = {
        name: {
            "p50_s": round(statistics.median(walls[name]), 3),
            "server_seconds_p50": round(statistics.median(seconds[name]), 3),
            "server_cpu_s_p50": round(statistics.median(cpu[name]), 3),
            "verdict": answers[name]["verdict"],
            "p_fake": answers[name].get("manipulation_probability"),
            "analyzed": answers[name]["analyzed"],
        }
        for name in servers
    }
    result["ratio_this_over_baseline"] = round(result["this"]["p50_s"] / result["baseline"]["p50_s"], 3)
    cpu_ratio = result["this"]["server_cpu_s_p50"] / max(result["baseline"]["server_cpu_s_p50"], 1e-9)
    result["cpu_ratio_this_over_baseline"] = round(cpu_ratio, 3)
    return result


def part_decode(args: argparse.Namespace, video: Path) -> dict:
    from components.common.cpus import available_cpus
    from components.common.manifest import VideoRecord
    from components.frame_extraction.config import FrameExtractionConfig
    from components.frame_extraction.core import extract_video
    from serving.lipsync import extract_analysis_clip

    config = FrameExtractionConfig(dense_all=True, workers=1)
    record = VideoRecord(video_id="v", key="v", uri=str(video), sha256="", size_bytes=0, uploaded_at="", status="ok")
    cpus = available_cpus()
    runs = {
        "training_extract_video": lambda: extract_video(video, record, config),
        "window_1_thread": lambda: extract_analysis_clip(video, config, 1),
        f"window_{cpus}_threads_auto": lambda: extract_analysis_clip(video, config, cpus),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    decoded = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            decoded[name] = run().decoded_frames
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["training_extract_video"])
    return {
        name: {
            "p50_s": round(statistics.median(times[name]), 4),
            "decoded_frames": decoded[name],
            "ratio": round(statistics.median(times[name]) / base, 3),
        }
        for name in runs
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "server", "decode"], default="all")
    p.add_argument("--baseline", default="main", help="git ref whose code is the baseline server")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--keyint", type=int, default=50, help="frames between keyframes")
    p.add_argument("--cache", default=os.environ.get("CLIPSYNC_MODEL_CACHE", str(ROOT / ".clipsync" / "cache")))
    p.add_argument("--out", default="")
    args = p.parse_args()

    print(f"load average {os.getloadavg()}", flush=True)
    result: dict = {"setup": vars(args)}
    with tempfile.TemporaryDirectory(prefix="clipsync-lipsync-bench-") as tmp:
        work = Path(tmp)
        video = talking_head(work / "talk.mp4", args.seconds, args.width, args.height, args.keyint)
        if args.part in ("all", "decode"):
            result["decode"] = part_decode(args, video)
            print(json.dumps(result["decode"]), flush=True)
        if args.part in ("all", "server"):
            result["server"] = part_server(args, work, video, Path(args.cache))
            print(json.dumps(result["server"]), flush=True)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

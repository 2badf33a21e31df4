"""A lip-sync request: ``POST /api/lip-sync`` on a 10 s talking head, this tree's server vs a baseline ref's server.

Setup: a 10 s, 25 fps talking head (the demo's real face sprite on a studio backdrop, its mouth following
speech-like audio), ``--width`` x ``--height``, H.264 with a keyframe every ``--keyint`` frames (phone cameras write
one every 1-2 s; x264's default is 250) and AAC audio; the demo-size lip-sync detector (default
``LipSyncModelConfig``, random weights: time, not accuracy, is measured). Two model servers
(``python -m serving.server --load lipsync-bench=DIR``) on 127.0.0.1: the baseline, the tree of ``--baseline``
(default ``main``, extracted with ``git archive``: the code as it is there; ``--baseline 2264da7`` is the code before
the analysis window was decoded alone), and this working tree. Requests alternate between them (``--rounds``, after
one warm-up each); the figures are medians of the client's wall time and of the CPU time the request cost the server
process (all its threads; the steadier figure on a shared machine), and the ratios this/baseline. Each server runs in
its own tree (``python -m`` imports from its working directory first). ``--detect-every K`` adds a third server of
this tree for a client whose ``face_tracking.detect_every`` is K (training crops that client's videos the same way;
the default is 2, so ``--detect-every 1`` is the every-frame detection of before).

``--part decode`` times only the decoding in this process, on the same file: training's ``extract_video`` (search
frames + dense clip, slice threads) vs the predictor's ``extract_analysis_clip`` (window only) with 1 decoder
thread and with ``available_cpus()`` threads (frame threading, ``thread_type = "AUTO"``).

``--part crops`` compares the mouth crops of the face mesh followed through the clip (``landmark_tracking``, MediaPipe's
VIDEO running mode: the face_tracking stage with one set of models, and the server's ``serving.threads`` sets) with
those of the mesh run on each frame alone (the IMAGE running mode, which the stage used before), on the 10 s talking
head, ``--demo-clips`` of the demo's talking heads and interviews and ``--bench-clips`` of benchmark v2's: the selected
track, the crop square (centre and side, rotation left out) as IoU and centre distance in crop sides, the crops'
mean absolute pixel difference, the detector's probability (the benchmark's untrained detector: how far the answer
moves, not accuracy) and the CPU time of ``track_video``.

Run: ``.venv/bin/python benchmarks/lipsync_request.py [--part all|server|decode|crops] [--rounds 7] [--keyint 50]``
"""

from __future__ import annotations

import argparse
import json
import math
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


def model_for(tree: Path, model: Path, out: Path) -> Path:
    """``model`` as the code of ``tree`` reads it: the config keys that code does not know are left out where they
    hold this tree's default (a setting added since then, off); any other unknown key is an error."""
    import dataclasses
    import shutil

    from components.finetune_lipsync.model import LipSyncModelConfig

    probe = "import dataclasses as d, json; from components.finetune_lipsync.model import LipSyncModelConfig as C; "
    probe += "print(json.dumps([f.name for f in d.fields(C)]))"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    known = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True,
                                      text=True, check=True).stdout)  # fmt: skip
    config = json.loads((model / "config.json").read_text())
    defaults = dataclasses.asdict(LipSyncModelConfig())
    newer = {k for k in config if k not in known}
    if any(config[k] != defaults.get(k) for k in newer):
        raise RuntimeError(f"the code of {tree} cannot read this model: {sorted(newer)} are set")
    if not newer:
        return model
    shutil.copytree(model, out)
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in newer}, indent=2))
    return out


def server(tree: Path, model: Path, cache: Path, log: Path, client_config: Path | None = None):
    from serving_assets import ServerProcess, free_port

    http, grpc = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "serving.server", "--load", f"lipsync-bench={model}", "--cache_dir", str(cache),
        "--http_port", str(http), "--grpc_port", str(grpc), "--query_log_uri", "off",
    ]  # fmt: skip
    if client_config is not None:
        cmd += ["--client_config", str(client_config)]
    env = {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": ""}
    # python -m imports from its working directory first: each server runs in its own tree (before, the baseline's
    # server ran in this one and imported this tree's code).
    where = subprocess.run(
        [sys.executable, "-c", "import serving; print(serving.__file__)"],
        cwd=tree, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the server of {tree} would import {where}")
    return ServerProcess(cmd, http, grpc, log, env=env, cwd=tree)


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
        variants: list[tuple[str, Path, Path | None]] = [("baseline", baseline, None), ("this", ROOT, None)]
        if args.detect_every:  # a client whose face_tracking (training and serving alike) detects every k-th frame
            sparse = work / "detect_every.yaml"
            sparse.write_text(f"face_tracking:\n  detect_every: {args.detect_every}\n")
            variants.append((f"this_detect_every_{args.detect_every}", ROOT, sparse))
        for name, tree, client_config in variants:
            folder = model_for(tree, model, work / f"model-{name}")
            servers[name] = server(tree, folder, cache, work / f"{name}.log", client_config).wait_ready()
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
    base = result["baseline"]
    for name in list(servers)[1:]:
        result[f"ratio_{name}_over_baseline"] = round(result[name]["p50_s"] / base["p50_s"], 3)
        cpu_ratio = result[name]["server_cpu_s_p50"] / max(base["server_cpu_s_p50"], 1e-9)
        result[f"cpu_ratio_{name}_over_baseline"] = round(cpu_ratio, 3)
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


def _clips(work: Path, video: Path, demo: int, bench: int) -> dict[str, list[Path]]:
    """The benchmark's talking head, and a few demo and benchmark v2 clips (talking heads and interviews)."""
    from dataclasses import replace

    from components.demo_data.benchmark import generate_benchmark
    from components.demo_data.config import BenchmarkConfig
    from components.demo_data.core import DemoConfig, generate_demo_data

    def talking(summary) -> list[tuple[Path, dict]]:
        rows = [json.loads(line) for line in summary.truth_path.read_text().splitlines()]
        return [(summary.bucket_dir / r["video_path"], r) for r in rows if r["kind"] != "search"]

    share = max(1, demo // 3)
    config = DemoConfig(
        seed=3, as_of="2026-11-01", clips_per_category=0, talking_real=share, talking_fake=share,
        two_face=max(1, demo - 2 * share), no_face=0,
    )  # fmt: skip
    demo_clips = talking(
        generate_demo_data(work / "demo", work / "demo-truth", replace(config, broken=False, workers=1))
    )
    bench = BenchmarkConfig(
        seed=2, as_of="2026-11-01", clips_per_category=0, talking_heads=bench, two_face_fraction=0.34
    )
    bench_clips = talking(generate_benchmark(work / "bench", work / "bench-truth", replace(bench, workers=1)))
    return {"talking_head_10s": [(video, {})], "demo": demo_clips, "benchmark_v2": bench_clips}


def _speaker_picked(faces, truth: dict, dense_width: int) -> bool:
    """Whether the selected track is the speaker of a two-face interview (the two faces are left and right)."""
    speaker = next(f for f in truth["faces"] if f["speaking"])
    boxes = [b for b in faces.boxes[faces.selected.track_id] if b is not None] if faces.selected else []
    if not boxes:
        return False
    centre_x = float(np.median([(b[0] + b[2]) / 2 for b in boxes])) / dense_width
    true_x = np.median([(b[0] + b[2]) / 2 for b in speaker["boxes"] if b]) / truth["width"]
    return abs(centre_x - true_x) < 0.15


def _share(flags: list[float]) -> str:
    return f"{int(sum(flags))}/{len(flags)}"


#: (variant, reference) pairs of ``--part crops``: each way of tracking against the IMAGE mode's per-frame mesh
#: (the face_tracking stage before), and the server's crops against the stage's now.
PAIRS = (
    ("tracking_1_set", "image_mode_1_set"),
    ("tracking_server_sets", "image_mode_1_set"),
    ("tracking_detect_every_2", "image_mode_1_set"),
    ("tracking_server_sets", "tracking_1_set"),
)


def _compare(ref, faces, row: dict[str, list[float]], model, audio: np.ndarray, fps: float, mouth_scale: float) -> None:
    """Add one clip's agreement of ``faces`` with ``ref`` (both ``track_video`` answers) to ``row``."""
    from components.face_tracking.core import selected_box_agreement
    from components.face_tracking.crops import mouth_geometry
    from components.face_tracking.detect import iou
    from components.finetune_lipsync.model import predict_video

    if ref.selected is None:
        return
    same = selected_box_agreement(ref, faces) > 0.5  # NaN (no track) is not the same
    row.setdefault("same_selected_track", []).append(float(same))
    if not same:
        return
    for f in ref.selected.detections.keys() & faces.selected.detections.keys():
        a = mouth_geometry(ref.selected.detections[f], mouth_scale)
        b = mouth_geometry(faces.selected.detections[f], mouth_scale)
        box_a = (a.cx - a.side / 2, a.cy - a.side / 2, a.cx + a.side / 2, a.cy + a.side / 2)
        box_b = (b.cx - b.side / 2, b.cy - b.side / 2, b.cx + b.side / 2, b.cy + b.side / 2)
        row.setdefault("crop_iou", []).append(iou(box_a, box_b))
        row.setdefault("centre_shift_sides", []).append(math.hypot(a.cx - b.cx, a.cy - b.cy) / a.side)
    crops, ref_crops = faces.crops[faces.selected.track_id], ref.crops[ref.selected.track_id]
    row.setdefault("crop_mad", []).append(float(np.abs(crops.astype(np.int16) - ref_crops).mean()))
    p, p_ref = (predict_video(model, c, audio, fps).probability for c in (crops, ref_crops))
    row.setdefault("p_diff", []).append(abs(p - p_ref))


def _summary(row: dict[str, list[float]]) -> dict:
    figures: dict = {"same_selected_track": _share(row.get("same_selected_track", []))}
    for k, v in row.items():
        if k != "same_selected_track" and v:
            figures[k] = {
                "median": round(statistics.median(v), 4),
                "worst": round(min(v) if k == "crop_iou" else max(v), 4),
            }
    return figures


def part_crops(args: argparse.Namespace, work: Path, video: Path, cache: Path) -> dict:
    from dataclasses import replace

    from components.face_tracking.config import FaceTrackingConfig
    from components.face_tracking.core import clip_audio, track_video
    from components.face_tracking.detect import load_face_models
    from components.finetune_lipsync.model import load_model
    from components.frame_extraction.config import FrameExtractionConfig
    from serving.config import ServingConfig
    from serving.lipsync import extract_analysis_clip

    config = FaceTrackingConfig(detect_every=1)  # every frame, the reference (the default detects every other one)
    variants = {
        "image_mode_1_set": (replace(config, landmark_tracking=False), 1),
        "tracking_1_set": (config, 1),
        "tracking_server_sets": (config, ServingConfig().cpu_threads),
        "tracking_detect_every_2": (replace(config, detect_every=2), 1),
    }
    model = load_model(detector(work / "model"), "cpu")
    sets = [load_face_models(cache, config) for _ in range(max(n for _, n in variants.values()))]
    result: dict = {}
    try:
        for group, paths in _clips(work, video, args.demo_clips, args.bench_clips).items():
            rows: dict[tuple[str, str], dict[str, list[float]]] = {pair: {} for pair in PAIRS}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            speaker: dict[str, list[float]] = {name: [] for name in variants}
            for path, truth in paths:
                clip = extract_analysis_clip(path, FrameExtractionConfig(), 1)
                fps = float(clip.dense_fps)
                audio = clip_audio(clip.audio if clip.audio is not None else np.zeros(0, np.float32),
                                   clip.dense_start_s, len(clip.dense_frames), fps)  # fmt: skip
                runs = {}
                for name, (cfg, n) in variants.items():
                    started = time.process_time()
                    runs[name] = track_video(clip.dense_frames, fps, cfg, sets[:n], audio)
                    cpu[name].append(time.process_time() - started)
                if len(truth.get("faces", ())) == 2:
                    for name, faces in runs.items():
                        speaker[name].append(_speaker_picked(faces, truth, clip.dense_frames.shape[2]))
                for (name, ref_name), row in rows.items():
                    _compare(runs[ref_name], runs[name], row, model, audio, fps, config.mouth_scale)
            result[group] = {
                "clips": len(paths),
                "track_video_cpu_s_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
                "interviews_speaker_picked": {k: _share(v) for k, v in speaker.items() if v},
                **{f"{name}_vs_{ref}": _summary(row) for (name, ref), row in rows.items()},
            }
            print(group, json.dumps(result[group]), flush=True)
    finally:
        for models in sets:
            models.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "server", "decode", "crops"], default="all")
    p.add_argument("--baseline", default="main", help="git ref whose code is the baseline server")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--keyint", type=int, default=50, help="frames between keyframes")
    p.add_argument("--cache", default=os.environ.get("CLIPSYNC_MODEL_CACHE", str(ROOT / ".clipsync" / "cache")))
    p.add_argument(
        "--detect-every", type=int, default=0, help="also serve this tree with this face_tracking.detect_every"
    )
    p.add_argument("--demo-clips", type=int, default=6, help="demo talking heads and interviews (--part crops)")
    p.add_argument("--bench-clips", type=int, default=6, help="benchmark v2 talking heads (--part crops)")
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
        if args.part in ("all", "crops"):
            result["crops"] = part_crops(args, work, video, Path(args.cache))
        if args.part in ("all", "server"):
            result["server"] = part_server(args, work, video, Path(args.cache))
            print(json.dumps(result["server"]), flush=True)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

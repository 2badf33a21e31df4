"""Peak memory of one finetune_clip epoch as the library grows: streamed training shards against frames in memory.

For each scale (1x, 4x, 16x) a fresh process trains one epoch (LoRA, one rank, ``--workers`` loader workers) on a
frames Dataset of ``scale`` copies of the base library and prints its peak RSS (``ru_maxrss``; the loader workers'
peak separately): ``streamed`` reads the frames from the Dataset's training shards (what the stage does), the named
baseline ``in_memory`` loads every training video's frames first (what finetune_clip did before the shards).
Printed: peak RSS per scale and mode, and the growth 16x / 1x (goal for ``streamed``: < 1.2).

The base library is a synthetic stand-in of the demo's search library (``--videos`` videos of the demo's 7
categories, ``--frames`` search frames of 224 px each: the demo's sizes, not its pixels); a larger library repeats
it with jittered pixels and new video ids. The model is a tiny CLIP built from a config (1 layer, width 32, 224 px
input), so that the frames, not the weights, dominate what grows.

Run: ``nice -n 10 .venv/bin/python benchmarks/training_memory.py [--scales 1 4 16] [--videos 42] [--frames 8]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CATEGORIES = 7


def make_library(root: Path, scale: int, videos: int, frames: int, seed: int = 0) -> Path:
    """A frames Dataset of ``scale`` jittered copies of a ``videos``-video library, with its training shards."""
    from components.frame_extraction.dataset import FrameRecord, ShardWriter, write_frame_index
    from components.frame_extraction.train_shards import write_search_shards

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(videos, frames, 224, 224, 3), dtype=np.uint8)
    rows = []
    root.mkdir(parents=True)
    with ShardWriter(root, "search", max_videos=64) as writer:
        for copy in range(scale):
            for i in range(videos):
                vid = f"c{copy:03d}v{i:03d}"
                jitter = rng.integers(-8, 9, size=(1, 1, 1, 3))
                pixels = np.clip(base[i].astype(np.int16) + jitter, 0, 255).astype(np.uint8)
                cat = f"category {i % CATEGORIES}"
                split = ("train", "train", "train", "val", "test")[i % 5]
                shard = writer.add(vid, pixels)
                rows.append(FrameRecord(vid, split=split, labels=(f"{cat} clip",), category=cat, n_search=frames,
                                        search_shard=shard))  # fmt: skip
    write_frame_index(root, rows)
    write_search_shards(root, 64, str(root.parent / "artifacts"), "unused")
    return root


def child(base: Path, frames_dir: Path, mode: str, workers: int, frames: int) -> dict:
    """One epoch in this process; returns the peak RSS figures."""
    from components.common.shards import ShardSource, read_listing
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.data import load_frame_samples
    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.train import train_clip

    cfg = FinetuneClipConfig(epochs=1, batch_size=16, frames_per_video=frames, device="cpu", precision="fp32",
                             num_threads=1, loader_workers=workers, lora_r=4, lora_alpha=8)  # fmt: skip
    bundle = load_base_clip(str(base))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    listing = read_listing(frames_dir)
    streamed = list(listing.shard_of()) if mode == "streamed" else []
    data, _ = load_frame_samples(frames_dir, ("train",), bundle.image_spec, frames, streamed=streamed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        train_clip(bundle, data["train"], [], cfg, Path(work), shards=ShardSource(listing, str(frames_dir)))
    return {
        "n_train": len(data["train"]),
        "rss_before_data_mb": before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "epoch_s": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--videos", type=int, default=42)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["streamed", "in_memory"])
    parser.add_argument("--child", nargs=3, metavar=("BASE", "FRAMES_DIR", "MODE"))
    args = parser.parse_args()
    if args.child:
        base, frames_dir, mode = args.child
        print(json.dumps(child(Path(base), Path(frames_dir), mode, args.workers, args.frames)))
        return
    from components.finetune_clip.base_model import build_demo_base_clip

    with tempfile.TemporaryDirectory(prefix="clipsync-bench-memory-") as tmp:
        base = build_demo_base_clip(Path(tmp) / "base", seed=0, time_budget_s=10, max_steps=1, batch_size=4,
                                    image_size=224, patch_size=32, width=32, layers=1)  # fmt: skip
        results: dict[tuple[str, int], dict] = {}
        for scale in args.scales:
            frames_dir = make_library(Path(tmp) / f"x{scale}" / "frames", scale, args.videos, args.frames)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", str(base), str(frames_dir), mode]
                cmd += ["--workers", str(args.workers), "--frames", str(args.frames)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                results[mode, scale] = json.loads(out)
                r = results[mode, scale]
                print(
                    f"{mode:9s} {scale:3d}x: {r['n_train']:4d} training videos, peak RSS {r['peak_rss_mb']:7.1f} MB "
                    f"(before the data {r['rss_before_data_mb']:.1f} MB), loader worker peak "
                    f"{r['peak_worker_rss_mb']:.1f} MB, epoch {r['epoch_s']:.1f} s",
                    flush=True,
                )
        lo, hi = min(args.scales), max(args.scales)
        for mode in args.modes:
            growth = results[mode, hi]["peak_rss_mb"] / results[mode, lo]["peak_rss_mb"]
            worker = results[mode, hi]["peak_worker_rss_mb"] / results[mode, lo]["peak_worker_rss_mb"]
            goal = " (goal < 1.2)" if mode == "streamed" else ""
            print(f"{mode}: peak RSS {hi}x / {lo}x = {growth:.3f}{goal}; loader worker's peak {worker:.3f}")


if __name__ == "__main__":
    main()

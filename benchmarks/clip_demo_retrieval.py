"""Base CLIP vs. fine-tuned CLIP on client-like data: text-to-video retrieval on the test split.

Two sources:

- ``--frames DIR``: a frame_extraction Dataset (e.g. from the demo client's local DAG run); the stage code
  (:func:`run_finetune_clip` without MLflow, then :func:`evaluate_clip`) does everything.
- ``--synthetic N``: N videos rendered here (five client-like categories drawn as simple coloured scenes,
  two labels per video), split 60/15/25 by a hash of the video id, for when no Dataset is at hand.

Either way the figures are on synthetic pictures: they show that the adapter learns the client's words
for the client's visuals that the base never saw, not how a real CLIP does on real footage.

Run: ``.venv/bin/python benchmarks/clip_demo_retrieval.py --synthetic 150 --base .clipsync/models/base-clip``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: category -> (label texts of its two sub-kinds, the category-wide label)
CATEGORIES = {
    "medical": (("laparoscopic cholecystectomy", "surgical suturing"), "medical procedure"),
    "industrial": (("forklift loading pallets", "welding sparks"), "industrial safety"),
    "sports": (("curling stone delivery", "curling sweeping"), "niche sports"),
    "security": (("person entering restricted area", "tailgating at a door"), "security footage"),
    "products": (("smart thermostat setup", "pipeline valve inspection"), "custom products"),
}


def render_video(category: str, kind: int, rng: np.random.Generator, n_frames: int = 6, size: int = 224) -> np.ndarray:
    """Frames ``uint8 [n, size, size, 3]`` of one synthetic client video (a moving scene per category/kind)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = []
    phase = rng.uniform(0, 1)
    for f in range(n_frames):
        t = (phase + f / n_frames) % 1.0
        img = np.zeros((size, size, 3), np.float32)
        if category == "medical":
            img[:] = (190, 70, 80)
            img += 30 * np.sin(12 * xx + 7 * yy)[..., None]
            if kind == 0:  # two instruments crossing
                for slope in (0.8, -0.8):
                    img[np.abs((yy - 0.5) - slope * (xx - t)) < 0.02] = (200, 200, 210)
            else:  # a dark thread zig-zag
                img[np.abs(yy - 0.5 - 0.1 * np.sign(np.sin(30 * xx + 6 * t))) < 0.015] = (30, 20, 30)
        elif category == "industrial":
            img[:] = (110, 90, 60)
            if kind == 0:  # yellow block carrying pallets
                img[(np.abs(xx - t) < 0.15) & (np.abs(yy - 0.6) < 0.12)] = (240, 200, 20)
                img[(np.abs(xx - t) < 0.12) & (np.abs(yy - 0.45) < 0.03)] = (150, 100, 50)
            else:  # sparks: bright dots around a point
                pts = rng.normal(0.5, 0.08, size=(40, 2))
                for px, py in pts:
                    img[(np.abs(xx - px) < 0.01) & (np.abs(yy - py) < 0.01)] = (255, 240, 180)
                img *= 0.6
        elif category == "sports":
            img[:] = (225, 235, 245)
            d2 = (xx - 0.5) ** 2 + (yy - 0.25) ** 2
            img[d2 < 0.03] = (40, 60, 200)
            img[d2 < 0.012] = (200, 40, 40)
            stone_y = 0.9 - 0.6 * t
            img[(xx - 0.5) ** 2 + (yy - stone_y) ** 2 < 0.003] = (90, 90, 95)
            if kind == 1:  # brooms
                img[(np.abs(xx - 0.42) < 0.02) & (np.abs(yy - stone_y + 0.08) < 0.05)] = (20, 20, 20)
                img[(np.abs(xx - 0.58) < 0.02) & (np.abs(yy - stone_y + 0.08) < 0.05)] = (20, 20, 20)
        elif category == "security":
            img[:] = (60, 60, 65)
            img[(np.abs(xx - 0.6) < 0.01)] = (230, 200, 30) if kind == 0 else (60, 60, 65)
            if kind == 1:
                img[(np.abs(xx - 0.6) < 0.08) & (yy > 0.2)] = (120, 80, 50)  # a door
            for k, dx in enumerate((0.0, -0.12 if kind == 1 else 9.0)):
                px = 0.2 + 0.6 * t + dx
                img[(np.abs(xx - px) < 0.03) & (np.abs(yy - 0.6) < 0.12)] = (200, 180, 160)
                img[(xx - px) ** 2 + (yy - 0.44) ** 2 < 0.0015] = (220, 190, 170)
                del k
        else:  # products
            img[:] = (220, 210, 190)
            if kind == 0:  # a round thermostat with a moving dial mark
                d2 = (xx - 0.5) ** 2 + (yy - 0.5) ** 2
                img[d2 < 0.04] = (245, 245, 245)
                img[(d2 < 0.04) & (d2 > 0.033)] = (40, 40, 40)
                ang = 2 * np.pi * t
                img[(xx - 0.5 - 0.13 * np.cos(ang)) ** 2 + (yy - 0.5 - 0.13 * np.sin(ang)) ** 2 < 0.0008] = (
                    230,
                    90,
                    20,
                )
            else:  # a grey pipe with a red valve wheel
                img[np.abs(yy - 0.5) < 0.06] = (140, 140, 150)
                img[(xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.008] = (200, 30, 30)
        img += rng.normal(0, 6, size=img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def synthetic_samples(n: int, spec, frames_per_video: int, seed: int = 0) -> dict[str, list]:
    """Render ``n`` videos and split them 60/15/25 by a hash of the id."""
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import prepare_frames

    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for i in range(n):
        cat = names[i % len(names)]
        kind = int(rng.integers(2))
        vid = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:16]
        u = int(vid[:8], 16) / 2**32
        split = "train" if u < 0.6 else "val" if u < 0.75 else "test"
        kinds, wide = CATEGORIES[cat]
        frames = render_video(cat, kind, rng)
        out[split].append(ClipSample(vid, prepare_frames(frames, frames_per_video, spec), (kinds[kind], wide), cat))
    return out


def demo_scene_samples(per_category: int, spec, frames_per_video: int, seed: int = 0) -> dict[str, list]:
    """Videos drawn with the demo generator's own scene renderers (components.demo_data.scenes), 1 frame/s.

    Labels follow the demo generator: the category's main phrase plus 2-3 of its paraphrases. Split
    60/15/25 by a hash of the video id (ingest's rule is also a content hash; the shares are the defaults).
    """
    from components.demo_data.scenes import CATEGORIES as SCENES
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import prepare_frames

    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for c, cat in enumerate(SCENES):
        for i in range(per_category):
            rng = np.random.default_rng([seed, c, i])
            k = int(rng.integers(2, 4))
            chosen = rng.choice(len(cat.paraphrases), size=k, replace=False)
            labels = (cat.query, *(cat.paraphrases[int(j)] for j in sorted(chosen)))
            frames = cat.render(rng, 224, 224, int(rng.integers(2, 5)), 1)
            vid = hashlib.sha256(f"{seed}-{c}-{i}".encode()).hexdigest()[:16]
            u = int(vid[:8], 16) / 2**32
            split = "train" if u < 0.6 else "val" if u < 0.75 else "test"
            out[split].append(ClipSample(vid, prepare_frames(frames, frames_per_video, spec), labels, cat.name))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base CLIP folder (built with the demo recipe if missing)")
    parser.add_argument("--frames", default="", help="a frame_extraction Dataset folder")
    parser.add_argument("--synthetic", type=int, default=0, help="render this many videos instead")
    parser.add_argument("--demo-scenes", type=int, default=0, help="render this many clips per demo category instead")
    parser.add_argument("--strategy", default="lora")
    parser.add_argument("--epochs", type=int, default=0, help="0: the config default")
    parser.add_argument("--lr", type=float, default=0.0, help="0: the config default")
    parser.add_argument("--patience", type=int, default=-1, help="early-stopping patience (-1: the config default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/clip_demo_retrieval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import torch

    from components.evaluate.clip_eval import ClipEvalReport, evaluate_clip, score_model, write_clip_report
    from components.finetune_clip.base_model import build_demo_base_clip
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.export import export_model
    from components.finetune_clip.model import load_base_clip, load_clip_model
    from components.finetune_clip.train import train_clip

    torch.set_num_threads(args.threads)
    base = Path(args.base)
    if not (base / "config.json").is_file():
        build_demo_base_clip(base)
    overrides = {"strategy": args.strategy, "device": "cpu"}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.lr:
        overrides["lr"] = args.lr
    if args.patience >= 0:
        overrides["early_stopping_patience"] = args.patience
    cfg = FinetuneClipConfig(base_model=str(base), **overrides)
    out = Path(args.out)
    started = time.monotonic()
    if args.frames:
        from components.config import from_dict
        from components.finetune_clip.core import run_finetune_clip

        config = from_dict({"state_dir": str(out / "state")})
        report = run_finetune_clip(Path(args.frames), out / "model", cfg, config.context(track=False))
        train_s = time.monotonic() - started
        ev, ev_cat = (
            evaluate_clip(
                out / "model",
                str(base),
                Path(args.frames),
                out / f"report-{rel}",
                "base",
                cfg.frames_per_video,
                cfg.pooling,
                relevance=rel,
            )
            for rel in ("label", "category")
        )
        summary = {"n_train": report.n_train, "n_val": report.n_val, "epochs_run": report.epochs_run}
    else:
        spec = load_base_clip(str(base)).image_spec
        if args.demo_scenes:
            data = demo_scene_samples(args.demo_scenes, spec, cfg.frames_per_video)
        else:
            data = synthetic_samples(args.synthetic, spec, cfg.frames_per_video)
        bundle = load_base_clip(str(base))
        result = train_clip(bundle, data["train"], data["val"], cfg, out / "work")
        train_s = time.monotonic() - started
        export_model(result.model, bundle, cfg, result.stats, out / "model", {"window": "synthetic"})
        tuned_bundle, base_bundle = load_clip_model(out / "model"), load_base_clip(str(base))
        reports = []
        for rel in ("label", "category"):
            trained = score_model(tuned_bundle, data["test"], cfg.pooling, relevance=rel)
            before = score_model(base_bundle, data["test"], cfg.pooling, relevance=rel)
            rep = ClipEvalReport(trained, before, "base", len(data["test"]), [], {}, rel)
            rep.files = write_clip_report(rep, out / f"report-{rel}")
            reports.append(rep)
        ev, ev_cat = reports
        summary = {"n_train": len(data["train"]), "n_val": len(data["val"]), "epochs_run": result.epochs_run}
    summary.update(
        train_seconds=round(train_s, 1),
        test_videos=ev.n_test_videos,
        queries=len(ev.challenger.queries),
        base=ev.baseline.summary(),
        tuned=ev.challenger.summary(),
        base_category_relevance=ev_cat.baseline.summary(),
        tuned_category_relevance=ev_cat.challenger.summary(),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"summary: {out / 'summary.json'}")
    for rel in ("label", "category"):
        print((out / f"report-{rel}" / "clip_report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

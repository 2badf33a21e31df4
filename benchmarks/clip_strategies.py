"""CLIP fine-tuning strategies on the real ViT-B/32 architecture: trainable fraction, step and epoch time, memory.

The model is ``CLIPModel(CLIPConfig())`` (the ``openai/clip-vit-base-patch32`` architecture, random
weights: no download). Each strategy runs in its own subprocess so that peak RSS (``ru_maxrss``) is its
own. Two measurements:

* step: the same batch (``--videos`` videos x ``--frames`` frames at 224 px, one 12-token label per video)
  through the training step of :func:`components.finetune_clip.core.train_clip` (encode, multi-positive
  InfoNCE, backward, AdamW step), timed for ``--steps`` steps after one warm-up step, as wall time and as
  process CPU time. This step always runs both towers.
* epoch (``--epochs N``): ``train_clip`` itself for N epochs on ``--epoch-videos`` synthetic videos (a quarter
  as many for validation): the median epoch time from its history, and the whole run's time. ``hybrid``
  embeds every video with its frozen vision tower once per run, so its epochs run only the text tower; the
  run time includes that one pass. The baseline is ``full``.

On a machine shared with other jobs use ``--threads 1``: CPU time is then the work done (with several
threads, OpenMP workers spin while they wait and inflate it).

Run: ``.venv/bin/python benchmarks/clip_strategies.py --steps 3 --threads 1 [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(strategy: str, steps: int, videos: int, frames: int, threads: int) -> dict:
    """Build ViT-B/32, apply ``strategy``, time training steps. Returns the figures."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    sys.path.insert(0, str(REPO))
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import contrastive_loss
    from components.finetune_clip.model import ImageSpec, apply_strategy, pool_frames

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig())
    cfg = FinetuneClipConfig(strategy=strategy, device="cpu")
    model, stats = apply_strategy(model, cfg)
    model.train()
    rss_model = _rss_mb()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    spec = ImageSpec(size=224)
    pixels = torch.randn(videos * frames, 3, spec.size, spec.size)
    ids = torch.randint(1, 49000, (videos, 12))
    mask = torch.eye(videos, dtype=torch.bool)

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        video = pool_frames(img.reshape(videos, frames, -1), "mean")
        txt = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        loss = contrastive_loss(video, txt, mask, model.logit_scale.exp())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    step()  # warm-up (allocates AdamW state)
    timed = [step() for _ in range(steps)]
    times, cpu = [t for t, _ in timed], [c for _, c in timed]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "strategy": strategy,
        "trainable": stats.trainable,
        "total": stats.total,
        "fraction": stats.fraction,
        "step_s_median": statistics.median(times),
        "step_s_all": [round(t, 3) for t in times],
        "step_cpu_s_median": statistics.median(cpu),
        "rss_after_build_mb": round(rss_model, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "train_increment_mb": round(peak_mb - rss_model, 1),
    }


def child_epochs(strategy: str, epochs: int, videos: int, frames: int, batch: int, threads: int) -> dict:
    """``train_clip`` for ``epochs`` epochs on ViT-B/32 with synthetic videos; epoch and run times."""
    import tempfile

    import numpy as np
    import torch
    from transformers import CLIPConfig, CLIPModel

    sys.path.insert(0, str(REPO))
    from components.finetune_clip.base_model import generic_corpus, train_tokenizer
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import ClipSample, train_clip
    from components.finetune_clip.model import ClipBundle, ImageSpec, prepare_frames

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = train_tokenizer(generic_corpus())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = CLIPModel(CLIPConfig(text_config={**ids, "pad_token_id": ids["eos_token_id"]}))
    spec = ImageSpec(size=224)
    rng = np.random.default_rng(0)
    labels = ("a red circle", "a blue square", "a green triangle", "a yellow star")

    def samples(n: int, prefix: str) -> list:
        out = []
        for i in range(n):
            video = rng.integers(0, 255, size=(frames, 224, 224, 3)).astype(np.uint8)
            out.append(ClipSample(f"{prefix}{i}", prepare_frames(video, frames, spec), (labels[i % 4],), labels[i % 4]))
        return out

    train, val = samples(videos, "t"), samples(max(2, videos // 4), "v")
    cfg = FinetuneClipConfig(
        strategy=strategy,
        epochs=epochs,
        batch_size=batch,
        frames_per_video=frames,
        lr=1e-5,
        early_stopping_patience=0,
        device="cpu",
        mixed_precision="no",
    )
    bundle = ClipBundle(model=model, tokenizer=tokenizer, image_spec=spec, base_ref="vit-b32-random")
    with tempfile.TemporaryDirectory(prefix="clip-strategies-") as tmp:
        started = time.perf_counter()
        result = train_clip(bundle, train, val, cfg, Path(tmp))
        run_s = time.perf_counter() - started
    epoch_s = [h["epoch_seconds"] for h in result.history]
    return {
        "strategy": strategy,
        "epoch_s_median": statistics.median(epoch_s),
        "epoch_s_all": [round(t, 2) for t in epoch_s],
        "run_s": run_s,
    }


def _run_child(args_list: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, *args_list], check=True, capture_output=True, text=True, env=env, timeout=3600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--strategies", default="lora,hybrid,full")
    parser.add_argument("--epochs", type=int, default=0, help="also time train_clip epochs (0: skip)")
    parser.add_argument("--epoch-videos", type=int, default=8, help="training videos of the epoch measurement")
    parser.add_argument("--child", default="")
    parser.add_argument("--child-epochs", default="")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    common = ["--videos", str(args.videos), "--frames", str(args.frames), "--threads", str(args.threads)]
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.videos, args.frames, args.threads)))
        return 0
    if args.child_epochs:
        figures = child_epochs(
            args.child_epochs, args.epochs, args.epoch_videos, args.frames, args.videos, args.threads
        )
        print(json.dumps(figures))
        return 0
    strategies = args.strategies.split(",")
    results = {s: _run_child(["--child", s, "--steps", str(args.steps), *common]) for s in strategies}
    print(
        f"ViT-B/32 (CLIPConfig(), random init), CPU, {args.threads} threads, batch {args.videos} videos x "
        f"{args.frames} frames @224 px + {args.videos} labels, median of {args.steps} steps after 1 warm-up"
    )
    print(
        f"{'strategy':8} {'trainable':>12} {'total':>12} {'fraction':>9} {'step s':>8} {'CPU s':>8} "
        f"{'peak RSS MB':>12} {'train +MB':>10}"
    )
    for r in results.values():
        print(
            f"{r['strategy']:8} {r['trainable']:>12,} {r['total']:>12,} {100 * r['fraction']:>8.3f}% "
            f"{r['step_s_median']:>8.3f} {r['step_cpu_s_median']:>8.3f} {r['peak_rss_mb']:>12.0f} "
            f"{r['train_increment_mb']:>10.0f}"
        )
    if "lora" in results and "full" in results:
        lo, fu = results["lora"], results["full"]
        print(
            f"lora/full: step time {lo['step_s_median'] / fu['step_s_median']:.2f}x (wall), "
            f"{lo['step_cpu_s_median'] / fu['step_cpu_s_median']:.2f}x (CPU time), "
            f"peak RSS {lo['peak_rss_mb'] / fu['peak_rss_mb']:.2f}x, "
            f"training memory increment {lo['train_increment_mb'] / max(fu['train_increment_mb'], 1e-9):.2f}x"
        )
    if args.epochs:
        epoch_args = ["--epochs", str(args.epochs), "--epoch-videos", str(args.epoch_videos), *common]
        epochs = {s: _run_child(["--child-epochs", s, *epoch_args]) for s in strategies}
        print(
            f"\ntrain_clip, {args.epochs} epochs, {args.epoch_videos} training videos + "
            f"{max(2, args.epoch_videos // 4)} validation, batch {args.videos}, {args.frames} frames @224 px "
            "(median epoch; run = all epochs + setup)"
        )
        print(f"{'strategy':8} {'epoch s':>8} {'run s':>8}  epochs")
        for r in epochs.values():
            print(f"{r['strategy']:8} {r['epoch_s_median']:>8.2f} {r['run_s']:>8.2f}  {r['epoch_s_all']}")
        if "full" in epochs:
            fu = epochs["full"]
            for strategy in ("lora", "hybrid"):
                if strategy in epochs:
                    r = epochs[strategy]
                    print(
                        f"{strategy}/full: epoch time {r['epoch_s_median'] / fu['epoch_s_median']:.3f}x, "
                        f"run time {r['run_s'] / fu['run_s']:.3f}x"
                    )
        results = {"step": results, "epoch": epochs}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Federated LoRA with Flower vs each site's local-only adapter vs pooled training, on the union test set.

Synthetic sites (``--sites``, each with ``--categories-per-site`` categories of its own: noise frames with the
category's colour in the middle, two label texts per category) and the tests' tiny randomly initialised CLIP
(``tests/hub_clip.py``: 1 layer, width 32, 32 px; deterministic for a seed). Three ways to train the same LoRA
adapter for the same number of epochs (``--rounds`` x ``--local-epochs``):

* federated: :func:`components.finetune_clip.federated.train_federated` (Flower's simulation runtime, FedAvg
  weighted by videos; only adapter tensors and counts cross the wire);
* local-only (the baseline): each site alone with :func:`components.finetune_clip.train.train_clip`;
* pooled: every site's videos in one place (what federation avoids; the ceiling).

It prints each adapter's R@1 (category relevance) on the union test set (every category, videos no site trained
on), the federated / best-local ratio, and what the server received per reply against the size of the sites'
frames.

Run: ``nice -n 10 .venv/bin/python benchmarks/federated_clip.py --threads 1`` (about 3 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PALETTE = [
    (200, 40, 40),
    (40, 200, 40),
    (40, 40, 200),
    (200, 200, 40),
    (200, 40, 200),
    (40, 200, 200),
    (240, 140, 20),
    (120, 120, 120),
    (250, 250, 250),
    (120, 40, 160),
]
WORDS = ["surgery", "forklift", "curling", "welding", "bakery", "harbour", "karate", "pottery", "glacier", "rodeo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--categories-per-site", type=int, default=3)
    ap.add_argument("--per-category", type=int, default=16, help="training videos per category")
    ap.add_argument("--test-per-category", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_cat = args.sites * args.categories_per_site
    if n_cat > len(WORDS):
        ap.error(f"at most {len(WORDS)} categories")
    logging.basicConfig(level=logging.WARNING)

    import torch
    from hub_clip import write_hub_clip  # tests/: the tiny CLIP of the tests, deterministic for a seed
    from synthetic_frames import colour_videos, recall_at_1  # tests/: the same videos as the test

    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.federated import train_federated
    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.train import train_clip

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = [f"{w} video" for w in WORDS] + [f"a clip of {w}" for w in WORDS] + ["a photo of a red square"]
        base = write_hub_clip(Path(tmp) / "base", corpus * 20, seed=args.seed)
        spec = load_base_clip(str(base)).image_spec
        k = args.categories_per_site
        sites = {
            f"site{i}": colour_videos(
                {WORDS[c]: PALETTE[c] for c in range(i * k, (i + 1) * k)}, args.per_category, args.seed * 100 + i, spec
            )
            for i in range(args.sites)
        }
        test = colour_videos(
            {WORDS[c]: PALETTE[c] for c in range(n_cat)}, args.test_per_category, args.seed * 100 + 99, spec
        )
        fed = {"enabled": True, "sites": list(sites), "rounds": args.rounds, "local_epochs": args.local_epochs}
        cfg = FinetuneClipConfig(
            batch_size=4,
            frames_per_video=2,
            lr=args.lr,
            warmup_ratio=0.0,
            early_stopping_patience=0,
            device="cpu",
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            num_threads=args.threads,
            seed=args.seed,
            federated=fed,
        )
        epochs = replace(cfg, epochs=args.rounds * args.local_epochs)
        base_bundle = load_base_clip(str(base))
        r1 = {"base (no training)": recall_at_1(base_bundle, base_bundle.model, test)}

        replies: list[int] = []
        bundle = load_base_clip(str(base))
        t0 = time.monotonic()
        result = train_federated(
            bundle,
            None,
            sites,
            [],
            cfg,
            on_reply=lambda _rnd, content: replies.append(sum(len(a.data) for a in content["adapter"].values())),
        )
        seconds = {"federated": time.monotonic() - t0}
        r1["federated"] = recall_at_1(bundle, result.model, test)
        for name, samples in sites.items():
            local = load_base_clip(str(base))
            t0 = time.monotonic()
            trained = train_clip(local, samples, [], epochs, Path(tmp) / name)
            seconds[f"local {name}"] = time.monotonic() - t0
            r1[f"local {name}"] = recall_at_1(local, trained.model, test)
        pooled = load_base_clip(str(base))
        t0 = time.monotonic()
        trained = train_clip(pooled, [s for v in sites.values() for s in v], [], epochs, Path(tmp) / "pooled")
        seconds["pooled"] = time.monotonic() - t0
        r1["pooled (all videos in one place)"] = recall_at_1(pooled, trained.model, test)

    frame_bytes = sum(s.frames.numel() * s.frames.element_size() for v in sites.values() for s in v)
    best_local = max(v for k_, v in r1.items() if k_.startswith("local"))
    print(
        f"# federated LoRA: {args.sites} sites x {k} categories x {args.per_category} videos, "
        f"{args.rounds} rounds x {args.local_epochs} local epochs (local-only and pooled: "
        f"{args.rounds * args.local_epochs} epochs); union test set: {len(test)} videos, {n_cat} categories"
    )
    print("| adapter | union test R@1 | train seconds |")
    print("|---|---|---|")
    for name, value in r1.items():
        secs = seconds.get(name.split(" (")[0], float("nan"))
        print(f"| {name} | {value:.3f} | {secs:.1f} |")
    print(f"federated / best local-only R@1: {r1['federated'] / max(best_local, 1e-9):.2f}x")
    print(
        f"server received {len(replies)} replies, median {int(np.median(replies))} bytes of adapter each "
        f"(the sites' prepared frames: {frame_bytes} bytes, never sent)"
    )


if __name__ == "__main__":
    main()

"""A small frames Dataset (FORMATS.md) of coloured-square "videos", written with frame_extraction's own writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CATEGORIES = {"surgery": (200, 40, 40), "forklift": (40, 200, 40), "curling": (40, 40, 200)}


def make_frames(root: Path, n: int = 12, seed: int = 0, rejected: bool = False, first: int = 0) -> Path:
    """Write ``n`` search-frame videos cycling through CATEGORIES and the splits train, train, val, test.

    Args:
        root: The Dataset folder (created).
        n: Videos.
        seed: Seed of the background noise.
        rejected: Also list one rejected video (``f`` * 16, a decode error) in the index.
        first: Number of the first video (its id is the number in hex): another month's uploads get other ids.

    Returns:
        ``root``.
    """
    from components.frame_extraction.dataset import FrameRecord, ShardWriter, write_frame_index

    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    rows = []
    root.mkdir(parents=True)
    with ShardWriter(root, "search", max_videos=10) as writer:
        for i in range(n):
            cat = names[i % len(names)]
            vid = f"{first + i:016x}"
            frames = rng.integers(0, 60, size=(3, 48, 48, 3)).astype(np.uint8)
            frames[:, 12:36, 12:36] = CATEGORIES[cat]
            shard = writer.add(vid, frames)
            rows.append(
                FrameRecord(
                    video_id=vid,
                    split=("train", "train", "val", "test")[i % 4],
                    labels=(f"{cat} video",),
                    category=cat,
                    search_shard=shard,
                    n_search=3,
                    search_times=(0.5, 1.5, 2.5),
                )
            )
    if rejected:
        rows.append(
            FrameRecord(
                video_id="f" * 16, split="train", labels=("x",), status="rejected", reason="decode_error: broken"
            )
        )
    write_frame_index(root, rows)
    return root


def colour_videos(colours: dict[str, tuple[int, int, int]], per_category: int, seed: int, spec) -> list:
    """Model-ready labelled samples (federated tests and benchmark): noise frames with the category's colour in the
    middle, labels ``"<category> video"`` and ``"a clip of <category>"``."""
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import prepare_frames

    rng = np.random.default_rng(seed)
    out = []
    for cat, colour in colours.items():
        for i in range(per_category):
            frames = rng.integers(0, 60, size=(3, 40, 40, 3)).astype(np.uint8)
            frames[:, 10:30, 10:30] = colour
            labels = (f"{cat} video", f"a clip of {cat}")
            out.append(ClipSample(f"{cat}-{seed}-{i:03d}", prepare_frames(frames, 2, spec), labels, cat))
    return out


def recall_at_1(bundle, model, test) -> float:
    """R@1 of ``model`` on ``test`` with its label texts as queries and category relevance."""
    from components.finetune_clip.metrics import query_video_similarity, retrieval_metrics, retrieval_problem

    queries, relevant, q_cats = retrieval_problem(test, "category")
    model.eval()
    sim = query_video_similarity(bundle, model, test, queries, "mean")
    return retrieval_metrics(sim.numpy(), relevant, q_cats, [s.category for s in test], queries).recall_at_1

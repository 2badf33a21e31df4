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

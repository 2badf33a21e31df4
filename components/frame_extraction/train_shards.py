"""frame_extraction's last step: the training videos' search frames as training shards for finetune_clip.

Written from the per-video results already in the frames Dataset (``index.jsonl`` and the ``search-*.npz``
members), one video at a time, so it does not care how those results were produced (computed now or reused).
The format and where the shards go: :mod:`components.common.shards`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.common.shards import ShardListing, ShardWriter, write_listing
from components.frame_extraction.dataset import load_search_frames, read_frame_index

logger = logging.getLogger("clipsync.frame_extraction")

KIND = "search"


def write_search_shards(
    frames_dir: Path,
    videos_per_shard: int,
    artifacts_uri: str,
    prefix: str,
    encryption: Any = None,
    splits: Sequence[str] = ("train",),
) -> ShardListing:
    """Write the ``search-NNNNN.safetensors`` shards (field ``frames``: uint8 ``[N, S, S, 3]``) and their listing.

    Args:
        frames_dir: The frames Dataset (read, and where the shards and ``train_shards.json`` are written).
        videos_per_shard: Videos per shard (``frame_extraction.shard_max_videos``).
        artifacts_uri: The artifacts store; ``s3://``: the shards are moved there under ``prefix``.
        prefix: Key prefix in the store.
        encryption: The client's encryption settings.
        splits: The splits whose extracted videos are written (the ones training streams).

    Returns:
        The listing written.
    """
    writer = ShardWriter(frames_dir, KIND, videos_per_shard)
    for rec in read_frame_index(frames_dir):
        if rec.split in splits and rec.status == "ok" and rec.n_search > 0:
            writer.add(rec.video_id, {"frames": load_search_frames(frames_dir, rec)})
    listing = write_listing(frames_dir, writer.close(), artifacts_uri, prefix, encryption)
    n = sum(len(keys) for _, keys in listing.shards)
    logger.info("frame_extraction: %d training videos in %d shards (%s)", n, len(listing.shards), artifacts_uri)
    return listing

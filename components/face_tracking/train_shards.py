"""face_tracking's last step: the labelled training clips' mouth crops and audio as training shards.

Written from the per-video results already in the faces Dataset (``index.jsonl``, ``crops/``, ``audio/``), one
video at a time, for finetune_lipsync to stream (the format and where the shards go:
:mod:`components.common.shards`). Fields per video: ``crops`` (uint8 ``[T, C, C, 3]``, the selected sample) and
``audio`` (float32 16 kHz mono, aligned with the crops).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.common.shards import ShardListing, ShardWriter, write_listing
from components.face_tracking.dataset import load_mouth_crops, load_sample_audio, read_face_index

logger = logging.getLogger("clipsync.face_tracking")

KIND = "lipsync"


def write_lipsync_shards(
    faces_dir: Path,
    videos_per_shard: int,
    artifacts_uri: str,
    prefix: str,
    encryption: Any = None,
    splits: Sequence[str] = ("train", "val"),
) -> ShardListing:
    """Write the ``lipsync-NNNNN.safetensors`` shards of the labelled clips of ``splits`` and their listing.

    Args:
        faces_dir: The faces Dataset (read, and where the shards and ``train_shards.json`` are written).
        videos_per_shard: Videos per shard.
        artifacts_uri: The artifacts store; ``s3://``: the shards are moved there under ``prefix``.
        prefix: Key prefix in the store.
        encryption: The client's encryption settings.
        splits: The splits finetune_lipsync trains and validates on (its pool; it splits it by video itself).

    Returns:
        The listing written.
    """
    writer = ShardWriter(faces_dir, KIND, videos_per_shard)
    for rec in read_face_index(faces_dir):
        sample = rec.selected_sample
        if rec.split in splits and rec.authenticity in ("real", "fake") and rec.status == "ok" and sample:
            crops, audio = load_mouth_crops(faces_dir, sample), load_sample_audio(faces_dir, rec)
            writer.add(rec.video_id, {"crops": crops, "audio": audio})
    listing = write_listing(faces_dir, writer.close(), artifacts_uri, prefix, encryption)
    n = sum(len(keys) for _, keys in listing.shards)
    logger.info("face_tracking: %d labelled clips in %d shards (%s)", n, len(listing.shards), artifacts_uri)
    return listing

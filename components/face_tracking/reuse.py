"""face_tracking's per-video results kept in the artifacts store (:mod:`components.common.result_cache`).

A video's tracks and crops depend on its dense frames and audio, which the frames Dataset's ``result_key`` names
(the video's content hash and frame_extraction's settings), on the tracking settings (not ``workers``, nor the
evidence rules ``min_face_px`` / ``min_face_score`` that only later stages apply) and on the MediaPipe version:
that is the key. What is kept: the tracking fields of the :class:`FaceRecord` and the crops of its samples. The
labels (split, authenticity, category) come from this run's frames Dataset, so a corrected label is honoured.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from components.common.result_cache import ResultCache, package_version
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import AUDIO_DIR, FaceRecord, FaceSample

#: Settings that do not change the tracks or crops.
NOT_IN_KEY = ("workers", "min_face_px", "min_face_score")
#: The FaceRecord fields tracking produces (the others come from the frames Dataset).
TRACKED = ("n_frames", "faces_seen", "n_tracks", "selected_track", "fallback_used", "face_px", "face_score")


def result_key(cache: ResultCache, frames_key: str, config: FaceTrackingConfig) -> str:
    """The cache key of tracking the video whose extraction is ``frames_key``; ``""`` (not cached) without one."""
    if not frames_key:
        return ""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_KEY}
    return cache.key(frames=frames_key, settings=settings, mediapipe=package_version("mediapipe"))


def save(cache: ResultCache, key: str, out_dir: Path, record: FaceRecord) -> None:
    """Keep an ``ok`` record and its crops (read back from ``out_dir``, where the stage wrote them)."""
    meta = {name: getattr(record, name) for name in TRACKED}
    meta["samples"] = [dataclasses.asdict(s) for s in record.samples]
    arrays = {s.sample_id: np.load(out_dir / s.crops_file, allow_pickle=False) for s in record.samples}
    cache.put(key, meta, arrays)


def restore(cache: ResultCache, key: str, out_dir: Path, base: FaceRecord, audio: np.ndarray) -> FaceRecord | None:
    """Write the kept crops of ``key`` and ``audio`` into ``out_dir``; the record, or ``None`` when none is kept.

    Args:
        cache: face_tracking's cache.
        key: From :func:`result_key`.
        out_dir: The faces Dataset being written.
        base: The record with this run's labels and timing (``process_video``'s base).
        audio: The clip's audio as ``process_video`` writes it.
    """
    found = cache.get(key)
    if found is None:
        return None
    meta, arrays = found
    samples = tuple(FaceSample(**{**s, "boxes": tuple(s["boxes"])}) for s in meta.pop("samples"))
    if {s.sample_id for s in samples} != set(arrays):
        return None
    for sample in samples:
        np.save(out_dir / sample.crops_file, arrays[sample.sample_id], allow_pickle=False)
    np.save(out_dir / AUDIO_DIR / f"{base.video_id}.npy", audio)
    fields: dict[str, Any] = {name: meta[name] for name in TRACKED}
    return dataclasses.replace(base, **fields, samples=samples)

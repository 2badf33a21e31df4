"""The CLIP search model's data: labelled videos of a frames Dataset as model-ready samples (training, evaluate)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.finetune_clip.model import ImageSpec, prepare_frames

logger = logging.getLogger("clipsync.finetune_clip")


@dataclass
class ClipSample:
    """One labelled video ready for the model.

    Attributes:
        video_id: The manifest's video id.
        frames: uint8 ``[F, 3, S, S]`` (see :func:`~components.finetune_clip.model.prepare_frames`).
        labels: Its label texts (at least one for training).
        category: The client's category (for per-category metrics).
        negatives: Texts this video is a known wrong answer to (client feedback: hard negatives of the loss).
        feedback_labels: The ``labels`` that client feedback gave (a search rated relevant on this video), not its
            own label records: the loss does not count them as wrong for videos of this video's category.
    """

    video_id: str
    frames: Any
    labels: tuple[str, ...]
    category: str = ""
    negatives: tuple[str, ...] = ()
    feedback_labels: tuple[str, ...] = ()


def load_frame_samples(
    frames_dir: Path, splits: Sequence[str], spec: ImageSpec, frames_per_video: int, require_labels: bool = True
) -> tuple[dict[str, list[ClipSample]], list[dict[str, str]]]:
    """Read the frames Dataset into model-ready samples per split.

    Args:
        frames_dir: The frame_extraction Dataset folder.
        splits: Splits to load (``train``, ``val``, ``test``).
        spec: Image spec of the model that will see the frames.
        frames_per_video: Frames sampled per video.
        require_labels: Skip videos without labels (recorded with a reason).

    Returns:
        Samples per split (sorted by video id) and the skipped videos (``video_id``, ``reason``).
    """
    from components.common.faults import is_infrastructure_error
    from components.frame_extraction.dataset import load_search_frames, read_frame_index

    out: dict[str, list[ClipSample]] = {s: [] for s in splits}
    skipped: list[dict[str, str]] = []
    for rec in read_frame_index(frames_dir):
        if rec.split not in out:
            continue
        if rec.status != "ok":
            skipped.append({"video_id": rec.video_id, "reason": f"frames not extracted: {rec.reason}"})
            continue
        labels = tuple(dict.fromkeys(str(x).strip() for x in rec.labels if str(x).strip()))
        if require_labels and not labels:
            skipped.append({"video_id": rec.video_id, "reason": "no_labels: video has no text label"})
            continue
        try:
            frames = load_search_frames(frames_dir, rec)
            if len(frames) == 0:
                raise ValueError("no search frames")
            out[rec.split].append(
                ClipSample(rec.video_id, prepare_frames(frames, frames_per_video, spec), labels, rec.category)
            )
        except Exception as exc:  # one unreadable video must not stop the stage
            if is_infrastructure_error(exc):  # a failing disk is not the video's problem
                raise
            skipped.append({"video_id": rec.video_id, "reason": f"bad_frames: {type(exc).__name__}: {exc}"})
            logger.warning("video %s skipped: %s", rec.video_id, exc)
    for samples in out.values():
        samples.sort(key=lambda s: s.video_id)
    return out, skipped

"""The CLIP search model's data: labelled videos of a frames Dataset as model-ready samples (training, evaluate)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from components.common.shards import ShardSource
from components.finetune_clip.model import ImageSpec, prepare_frames

logger = logging.getLogger("clipsync.finetune_clip")


@dataclass
class ClipSample:
    """One labelled video ready for the model.

    Attributes:
        video_id: The manifest's video id.
        frames: uint8 ``[F, 3, S, S]`` (see :func:`~components.finetune_clip.model.prepare_frames`), or ``None``
            when training streams them from the frames Dataset's training shards.
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


@dataclass(frozen=True)
class FrameSource:
    """Where the training loader reads a video's frames: in memory (``memory``) or the training shards.

    Attributes:
        memory: ``video_id -> uint8 [F, 3, S, S]`` prepared frames already loaded (remembered videos, tests).
        shards: The frames Dataset's training shards (raw search frames, prepared in the loader's workers).
        frames_per_video: Frames sampled per video.
        spec: The model's image spec.
    """

    memory: dict[str, Any]
    shards: ShardSource | None = None
    frames_per_video: int = 8
    spec: ImageSpec | None = None

    @classmethod
    def of(cls, samples: Sequence[ClipSample], shards: ShardSource | None, cfg: Any, spec: ImageSpec):
        """The source of ``samples``: their own frames where they hold some, else ``shards``."""
        return cls({s.video_id: s.frames for s in samples if s.frames is not None}, shards, cfg.frames_per_video, spec)

    def read(self, key: str) -> dict[str, Any]:
        if key in self.memory:
            return {"prepared": self.memory[key]}
        if self.shards is None:
            raise KeyError(f"video {key} has no frames in memory and there are no training shards")
        return self.shards.read(key)

    def load(self, key: str) -> Any:
        """The video's prepared frames, read now (a tensor)."""
        import torch

        return torch.from_numpy(self(key, self.read(key)))

    def filled(self, sample: ClipSample) -> ClipSample:
        """``sample`` holding its frames: itself when it has them, else a copy with them read now."""
        return sample if sample.frames is not None else replace(sample, frames=self.load(sample.video_id))

    def __call__(self, key: str, fields: dict[str, Any]) -> np.ndarray:
        """The loader's per-sample step (in its workers): uint8 ``[F, 3, S, S]`` frames.

        A numpy array, not a tensor: a worker's tensors travel through shared memory, and with them the workers'
        resident memory grew with the number of videos read (measured: 437 MB after 64 videos, 764 MB after 256);
        arrays are pickled through the worker's pipe and it stays flat.
        """
        if "prepared" in fields:
            return np.asarray(fields["prepared"])
        return prepare_frames(fields["frames"], self.frames_per_video, self.spec).numpy()


def load_frame_samples(
    frames_dir: Path,
    splits: Sequence[str],
    spec: ImageSpec,
    frames_per_video: int,
    require_labels: bool = True,
    streamed: Sequence[str] = (),
) -> tuple[dict[str, list[ClipSample]], list[dict[str, str]]]:
    """Read the frames Dataset into model-ready samples per split.

    Args:
        frames_dir: The frame_extraction Dataset folder.
        splits: Splits to load (``train``, ``val``, ``test``).
        spec: Image spec of the model that will see the frames.
        frames_per_video: Frames sampled per video.
        require_labels: Skip videos without labels (recorded with a reason).
        streamed: Video ids whose frames stay in the training shards (``frames`` is ``None``; the loader reads them).

    Returns:
        Samples per split (sorted by video id) and the skipped videos (``video_id``, ``reason``).
    """
    from components.common.faults import is_infrastructure_error
    from components.frame_extraction.dataset import load_search_frames, read_frame_index

    out: dict[str, list[ClipSample]] = {s: [] for s in splits}
    skipped: list[dict[str, str]] = []
    streamed_ids = set(streamed)
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
        if rec.video_id in streamed_ids and rec.n_search > 0:
            out[rec.split].append(ClipSample(rec.video_id, None, labels, rec.category))
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

"""The lip-sync detector's data: labelled talking heads of a faces Dataset, their split by video, training windows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.common.shards import ShardSource

if TYPE_CHECKING:
    from components.face_tracking.evidence import EvidenceRules
    from components.finetune_lipsync.config import AugmentConfig, FinetuneLipsyncConfig
    from components.finetune_lipsync.model import LipSyncModelConfig

logger = logging.getLogger("clipsync.finetune_lipsync")


LABELS = {"real": 0, "fake": 1}


@dataclass
class LipsyncVideo:
    """One labelled talking-head clip ready for training or evaluation.

    Attributes:
        video_id: The manifest's id.
        crops: uint8 ``[T, S, S, 3]`` mouth crops, or ``None`` when training streams them from the faces
            Dataset's training shards.
        audio: float32 16 kHz mono aligned with ``crops`` (``None`` with ``crops``).
        fps: Frame rate of ``crops``.
        label: 1 for fake (manipulated), 0 for real.
        split: The manifest split.
        fallback_used: The crops are the frame centre (no face found).
        n_frames: Frames of a streamed video's crops (``len(crops)`` otherwise).
        fake_type: How a fake was made (from the manifest), empty when unknown; evaluate's per-type figures.
    """

    video_id: str
    crops: np.ndarray | None
    audio: np.ndarray | None
    fps: float
    label: int
    split: str = "train"
    fallback_used: bool = False
    n_frames: int = 0
    fake_type: str = ""

    @property
    def frame_count(self) -> int:
        return len(self.crops) if self.crops is not None else self.n_frames

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


def _hash_key(seed: int, video_id: str) -> str:
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def split_by_video(
    videos: Sequence[LipsyncVideo], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[LipsyncVideo], list[LipsyncVideo]]:
    """Hold out ``val_fraction`` of the videos (never single windows), stratified by label.

    The order inside each label is a seeded hash of the video id, so the split is reproducible and
    does not depend on the input order. Each label with at least two videos gets at least one
    validation video and keeps at least one training video.

    Args:
        videos: The training pool.
        val_fraction: Share of videos held out.
        seed: Seed of the order.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: If a video id appears twice (its windows could land on both sides).
    """
    ids = [v.video_id for v in videos]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate video ids in the training pool: {dupes[:5]}")
    train: list[LipsyncVideo] = []
    val: list[LipsyncVideo] = []
    for label in sorted({v.label for v in videos}):
        group = sorted((v for v in videos if v.label == label), key=lambda v: _hash_key(seed, v.video_id))
        n_val = round(len(group) * val_fraction)
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def load_lipsync_videos(
    faces_dir: str | Path,
    rules: EvidenceRules,
    splits: Sequence[str] = ("train", "val", "test"),
    streamed: Sequence[str] = (),
) -> tuple[list[LipsyncVideo], list[dict[str, str]]]:
    """Read the labelled videos of a faces Dataset (the selected sample of each).

    Videos without an authenticity label are ignored; rejected or unreadable ones, and those without the
    evidence serving would require for a verdict (no audio, no usable face, shorter than one window), are
    returned as ``skipped`` with their reason and split, and the rest goes on.

    Args:
        faces_dir: The face_tracking Dataset.
        rules: The evidence a clip needs (:class:`components.face_tracking.evidence.EvidenceRules`).
        splits: The splits to read.
        streamed: Video ids whose crops and audio stay in the training shards (read by the training loader).

    Returns:
        ``(videos, skipped)``.
    """
    from components.common.faults import is_infrastructure_error
    from components.face_tracking.dataset import load_mouth_crops, load_sample_audio, read_face_index

    videos, skipped = [], []
    streamed_ids = set(streamed)
    for rec in read_face_index(faces_dir):
        if rec.authenticity not in LABELS or rec.split not in splits:
            continue
        if rec.status != "ok":
            skipped.append(
                {"video_id": rec.video_id, "split": rec.split, "reason": rec.reason or f"status {rec.status}"}
            )
            continue
        problems = rules.problems(rec.evidence)
        if problems:
            why = "; ".join(f"{p.code} ({p.detail})" for p in problems)
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": f"no_evidence: {why}"})
            continue
        sample = rec.selected_sample
        if sample is None:
            reason = "no_sample: no selected mouth-crop sequence"
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": reason})
            continue
        label, fake_type = LABELS[rec.authenticity], rec.fake_type if rec.authenticity == "fake" else ""
        if rec.video_id in streamed_ids and rec.fps > 0 and sample.n_frames > 0:
            videos.append(
                LipsyncVideo(
                    rec.video_id, None, None, rec.fps, label, rec.split, rec.fallback_used, sample.n_frames, fake_type
                )
            )
            continue
        try:
            crops = load_mouth_crops(faces_dir, sample)
            audio = load_sample_audio(faces_dir, rec)
            if rec.fps <= 0 or len(crops) == 0:
                raise ValueError(f"fps {rec.fps}, {len(crops)} frames")
        except (OSError, ValueError) as exc:
            if is_infrastructure_error(exc):  # a failing disk is not the video's problem
                raise
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": f"unreadable: {exc}"})
            logger.warning("finetune_lipsync: skipping %s: %s", rec.video_id, exc)
            continue
        videos.append(
            LipsyncVideo(rec.video_id, crops, audio, rec.fps, label, rec.split, rec.fallback_used, fake_type=fake_type)
        )
    return videos, skipped


def training_pool(videos: Sequence[LipsyncVideo]) -> list[LipsyncVideo]:
    """The videos training may see: the manifest's train and val splits (test stays for evaluate)."""
    return [v for v in videos if v.split in ("train", "val")]


# ------------------------------------------------------------------------------------------- training windows


@dataclass
class WindowSet:
    """Fixed windows of a list of videos (validation): every window of every video, never augmented."""

    video: np.ndarray  # uint8 [N, T, S, S, 3]
    audio: np.ndarray  # float32 [N, samples]
    labels: np.ndarray  # float32 [N]
    video_index: np.ndarray  # int [N] index into the video list


def _resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if crops.shape[1] == size and crops.shape[2] == size:
        return crops
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_videos(videos: Sequence[LipsyncVideo], size: int) -> list[LipsyncVideo]:
    """Resize crops once to the model's input size (cheaper than in every forward pass); streamed ones stay."""
    return [v if v.crops is None else replace(v, crops=_resize_crops(v.crops, size)) for v in videos]


def load_streamed(videos: Sequence[LipsyncVideo], shards: ShardSource | None) -> list[LipsyncVideo]:
    """``videos`` with their crops and audio in memory (read from ``shards`` where they are streamed)."""
    out = []
    for v in videos:
        if v.crops is None:
            if shards is None:
                raise KeyError(f"video {v.video_id} has no crops in memory and there are no training shards")
            fields = shards.read(v.video_id)
            v = replace(v, crops=fields["crops"], audio=fields["audio"].astype(np.float32, copy=False))
        out.append(v)
    return out


def fixed_windows(videos: Sequence[LipsyncVideo], mc: LipSyncModelConfig) -> WindowSet:
    """Every window of every video at the model's geometry (validation and the threshold choice)."""
    from components.finetune_lipsync.model import windows

    vids, auds, labels, index = [], [], [], []
    for i, v in enumerate(videos):
        av = windows(v.crops, v.audio, v.fps, mc.window_s, mc.hop_s, target_fps=mc.fps, sr=mc.sample_rate)
        vids.append(av.video)
        auds.append(av.audio)
        labels.extend([v.label] * len(av))
        index.extend([i] * len(av))
    return WindowSet(
        np.concatenate(vids), np.concatenate(auds), np.asarray(labels, np.float32), np.asarray(index, np.int64)
    )


def epoch_plan(videos: Sequence[LipsyncVideo], cfg: FinetuneLipsyncConfig, rng: np.random.Generator) -> list:
    """The epoch's training windows as ``(video index, start, audio shift)``, shuffled.

    Each video gives its windows (at most ``max_windows_per_video``) with shift 0; each real one also gives
    ``sync_negatives`` self-supervised negatives per window: a random start where both the window and its audio,
    shifted by a random ``sync_shift_min_frames`` .. ``sync_shift_max_frames`` frames either way, lie inside the
    clip (at the fastest augmented speed), and that shift in seconds (a clip too short for the shift gives none).
    """
    from components.finetune_lipsync.model import window_starts

    plan = []
    mc = cfg.model
    span = mc.window_s * (cfg.augment.speed_max if cfg.augment.enabled else 1.0)
    for i, v in enumerate(videos):
        starts = window_starts(v.duration_s, mc.window_s, mc.hop_s)
        if cfg.max_windows_per_video and len(starts) > cfg.max_windows_per_video:
            starts = rng.choice(starts, cfg.max_windows_per_video, replace=False)
        plan.extend((i, float(s), 0.0) for s in starts)
        if v.label != 0:
            continue
        for _ in range(cfg.sync_negatives * len(starts)):
            frames = int(rng.integers(cfg.sync_shift_min_frames, cfg.sync_shift_max_frames + 1))
            shift = frames / mc.fps * (1 if rng.random() < 0.5 else -1)
            low, high = max(0.0, -shift), v.duration_s - span - max(0.0, shift)
            if high >= low:
                plan.append((i, float(rng.uniform(low, high)), shift))
    rng.shuffle(plan)
    return plan


@dataclass(frozen=True)
class WindowLoader:
    """One epoch's training windows as the training loader reads them (picklable: it runs in the workers).

    A key is a window's position in ``items`` (the epoch plan, the same on every rank); its video's crops and
    audio come from memory or the training shards, are resized to the model, and the window is cut, at a random
    speed when augmenting. The speed is drawn from ``seed`` and the position alone, so a window is cut the same
    whichever rank or worker cuts it. A window with an audio shift (a self-supervised negative) takes its audio
    from ``start + shift`` at the same speed and is labelled fake.

    Attributes:
        videos: The training videos (metadata; arrays where in memory).
        items: The epoch plan, ``(video index, start, audio shift)`` per window.
        mc: The model's geometry.
        augment: The augmentation ranges, or ``None``.
        seed: ``(seed, epoch)``.
        shards: The faces Dataset's training shards.
    """

    videos: Sequence[LipsyncVideo]
    items: Sequence[tuple[int, float, float]]
    mc: LipSyncModelConfig
    augment: AugmentConfig | None
    seed: tuple[int, int]
    shards: ShardSource | None = None

    def read(self, key: str) -> dict[str, np.ndarray]:
        v = self.videos[self.items[int(key)][0]]
        if v.crops is not None:
            return {"crops": v.crops, "audio": v.audio}
        if self.shards is None:
            raise KeyError(f"video {v.video_id} has no crops in memory and there are no training shards")
        return self.shards.read(v.video_id)

    def __call__(self, key: str, fields: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """The window ``key``: uint8 video ``[T, S, S, 3]``, float32 audio, label."""
        from components.finetune_lipsync.augment import random_speed, speed_window
        from components.finetune_lipsync.model import extract_window

        i, start, shift = self.items[int(key)]
        v, mc = self.videos[i], self.mc
        crops = _resize_crops(fields["crops"], mc.crop_size)
        audio = np.asarray(fields["audio"], dtype=np.float32)
        speed = 1.0
        if self.augment is not None:
            speed = random_speed(np.random.default_rng([*self.seed, int(key)]), self.augment)
        if shift:  # the plan chose a start where both streams fit at any augmented speed
            clip, _ = extract_window(
                crops, audio, v.fps, start, mc.n_frames, mc.fps, mc.n_samples, mc.sample_rate, speed
            )
            _, sound = extract_window(
                crops, audio, v.fps, start + shift, mc.n_frames, mc.fps, mc.n_samples, mc.sample_rate, speed
            )
            return clip, sound, 1
        clip, sound = speed_window(crops, audio, v.fps, start, mc.n_frames, mc.fps, mc.n_samples, speed, mc.sample_rate)
        return clip, sound, v.label

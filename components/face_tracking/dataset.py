"""The faces Dataset written by face_tracking and read by finetune_lipsync (layout in FORMATS.md).

```
index.jsonl                 one FaceRecord per video that had dense frames
crops/<sample_id>.npy       uint8 [T, C, C, 3] RGB mouth crops, frame-aligned with the dense frames
audio/<video_id>.npy        float32 16 kHz mono covering [start_s, start_s + n_frames / fps)
```
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.common.jsonl import read_jsonl, write_jsonl
from components.face_tracking.evidence import Evidence

INDEX_FILE = "index.jsonl"
CROPS_DIR = "crops"
AUDIO_DIR = "audio"
AUDIO_RATE = 16000

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class FaceSample:
    """One mouth-crop sequence: one face track of one video (or the centre-crop fallback).

    Attributes:
        sample_id: ``<video_id>-t<track_id>``, or ``<video_id>-center`` for the fallback.
        track_id: The track's id within the video; -1 for the centre-crop fallback.
        selected: Whether this is the video's subject (the track ``select_strategy`` chose, or the fallback).
        crops_file: ``crops/<sample_id>.npy`` relative to the Dataset directory.
        n_frames: Frames in the crop file (the video's ``n_frames``).
        boxes: Per frame, the face box ``[x0, y0, x1, y1]`` in dense-frame pixels, or ``None`` where the
            face was not seen (before/after the track, during a miss; the crop then holds the nearest geometry).
    """

    sample_id: str
    track_id: int
    selected: bool
    crops_file: str
    n_frames: int
    boxes: tuple[list[float] | None, ...] = ()


@dataclass(frozen=True)
class FaceRecord:
    """One video of the faces Dataset.

    Attributes:
        video_id: From the manifest.
        split: ``train`` / ``val`` / ``test``.
        authenticity: ``real`` / ``fake`` / empty.
        fake_type: How a fake was made (from the manifest), empty when unknown.
        category: The client's category.
        status: ``ok`` or ``rejected`` (see ``reason``).
        reason: ``code: detail`` when rejected, empty otherwise.
        fps: Frame rate of the dense frames (the native rate).
        start_s: Time of the first dense frame in the video.
        n_frames: Dense frames (and crops per sample).
        faces_seen: Most faces found in one frame.
        n_tracks: Tracks kept (after ``min_track_frames``).
        selected_track: The subject's track id; -1 when none (fallback) or rejected.
        fallback_used: No face was found in the whole clip, so the crop is the frame centre.
        has_audio: Whether the video had audio (without it the audio file holds zeros).
        face_px: The subject's median face side in source-video pixels (0 without a face track).
        face_score: The subject's mean detector score (0 without a face track).
        samples: The emitted crop sequences.
    """

    video_id: str
    split: str = "train"
    authenticity: str = ""
    fake_type: str = ""
    category: str = ""
    status: str = "ok"
    reason: str = ""
    fps: float = 0.0
    start_s: float = 0.0
    n_frames: int = 0
    faces_seen: int = 0
    n_tracks: int = 0
    selected_track: int = -1
    fallback_used: bool = False
    has_audio: bool = False
    face_px: float = 0.0
    face_score: float = 0.0
    samples: tuple[FaceSample, ...] = field(default_factory=tuple)

    @property
    def audio_file(self) -> str:
        return f"{AUDIO_DIR}/{self.video_id}.npy"

    @property
    def selected_sample(self) -> FaceSample | None:
        return next((s for s in self.samples if s.selected), None)

    @property
    def evidence(self) -> Evidence:
        """What the clip offers a lip-sync verdict (:mod:`components.face_tracking.evidence`)."""
        duration = self.n_frames / self.fps if self.fps > 0 else 0.0
        return Evidence(self.has_audio, self.faces_seen, self.fallback_used, self.face_px, self.face_score, duration)


def write_face_index(directory: str | Path, records: Iterable[FaceRecord]) -> int:
    """Write ``index.jsonl`` (sorted by video_id). Returns the row count."""
    return write_jsonl(Path(directory) / INDEX_FILE, sorted(records, key=lambda r: r.video_id))


def read_face_index(directory: str | Path) -> list[FaceRecord]:
    """Read the faces Dataset's ``index.jsonl``.

    Raises:
        FileNotFoundError: If the directory holds no index.
        ValueError: On a row that is not a FaceRecord (with its line number).
    """

    def build(row: dict) -> FaceRecord:
        samples = tuple(FaceSample(**{**s, "boxes": tuple(s.get("boxes", ()))}) for s in row.pop("samples", []))
        return FaceRecord(**row, samples=samples)

    return read_jsonl(Path(directory) / INDEX_FILE, build, "faces index")


def load_mouth_crops(directory: str | Path, sample: FaceSample) -> np.ndarray:
    """Load one sample's crops: uint8 [T, C, C, 3] RGB.

    Raises:
        ValueError: If the file does not hold such an array.
    """
    crops = np.load(Path(directory) / sample.crops_file, allow_pickle=False)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"{sample.crops_file}: expected uint8 [T, C, C, 3], got {crops.dtype} {crops.shape}")
    return crops


def load_sample_audio(directory: str | Path, record: FaceRecord) -> np.ndarray:
    """Load a video's audio: float32 16 kHz mono covering exactly the crops' time span."""
    audio = np.load(Path(directory) / record.audio_file, allow_pickle=False)
    return np.asarray(audio, dtype=np.float32)

"""The ingest manifest: one JSON Lines row per video the window saw, accepted or not.

Every later stage reads it; only ``accepted`` rows are processed. The file is plain JSON Lines so a
person can read it and a kfp ``Dataset`` artifact can carry it as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from components.common.jsonl import read_jsonl, write_jsonl

Status = Literal["accepted", "rejected", "duplicate"]
Split = Literal["train", "val", "test"]
Authenticity = Literal["real", "fake"]

#: A fake type's form (a label record's ``fake_type``, an import CSV's type column): a short name, e.g. ``offset``.
FAKE_TYPE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_fake_type(value: object) -> str:
    """``value`` if it is a valid fake type (:data:`FAKE_TYPE_PATTERN`).

    Raises:
        ValueError: Naming the value otherwise.
    """
    if not isinstance(value, str) or not FAKE_TYPE_PATTERN.fullmatch(value):
        raise ValueError(
            f"fake_type must be a short name (a letter or digit, then letters, digits, '_', '.', '-'; at most 64), "
            f"got {value!r}"
        )
    return value


@dataclass(frozen=True)
class VideoRecord:
    """One video seen by ingest.

    Attributes:
        video_id: First 16 hex digits of the content SHA-256 (stable across months and renames).
        key: Object key inside the client's source store (e.g. ``videos/clip_001.mp4``).
        uri: Full location: a local path or ``s3://bucket/key``.
        sha256: Content hash of the whole file.
        size_bytes: File size.
        uploaded_at: ISO-8601 upload time (the label record's ``timestamp``, else the object's mtime).
        status: ``accepted``, ``rejected`` (see ``reason``) or ``duplicate`` (see ``duplicate_of``).
        reason: Why a video was rejected, specific enough to act on; empty otherwise.
        duplicate_of: ``video_id`` of the accepted copy of a duplicate.
        split: ``train``, ``val`` or ``test``, fixed by the content hash.
        labels: Text labels for search (several per video allowed).
        category: The client's category of the video (for per-category metrics).
        authenticity: ``real`` / ``fake`` for lip-sync training, empty when not labelled.
        fake_type: How a fake was made (the label record's optional ``fake_type``, e.g. ``offset``), for the
            evaluate stage's per-fake-type figures; empty for reals and for fakes of unknown type.
        duration_s: Container duration in seconds.
        width: Display width in pixels (after rotation metadata).
        height: Display height in pixels (after rotation metadata).
        fps: Average frame rate of the video stream.
        video_codec: Codec name of the video stream.
        rotation: Rotation metadata in degrees (0, 90, 180, 270).
        has_audio: Whether an audio stream exists.
        audio_sample_rate: Sample rate of the audio stream, 0 without audio.
    """

    video_id: str
    key: str
    uri: str
    sha256: str
    size_bytes: int
    uploaded_at: str
    status: Status
    reason: str = ""
    duplicate_of: str = ""
    split: Split = "train"
    labels: tuple[str, ...] = ()
    category: str = ""
    authenticity: Authenticity | Literal[""] = ""
    fake_type: str = ""
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_codec: str = ""
    rotation: int = 0
    has_audio: bool = False
    audio_sample_rate: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


def write_manifest(path: str | Path, records: Iterable[VideoRecord]) -> int:
    """Write records as JSON Lines (sorted by key for stable diffs). Returns the row count."""
    return write_jsonl(path, sorted(records, key=lambda r: r.key))


def read_manifest(path: str | Path) -> list[VideoRecord]:
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ValueError: On a row that is not a VideoRecord (with its line number).
    """
    return read_jsonl(path, lambda row: VideoRecord(**{**row, "labels": tuple(row.get("labels", ()))}), "manifest")

"""The frames Dataset written by frame_extraction and read by face_tracking and finetune_clip (FORMATS.md).

```
index.jsonl                 one FrameRecord per accepted manifest video (ok or rejected)
search-NNNNN.npz            array <video_id>: uint8 [N, S, S, 3] RGB search frames
dense-NNNNN.npz             array <video_id>: uint8 [T, H, W, 3] RGB consecutive frames at the native rate
audio/<video_id>.npy        float32 mono 16 kHz, the whole track
```

Shards are uncompressed zip archives of ``.npy`` members (what ``np.savez`` writes), written one array at
a time by :class:`ShardWriter` so that the writer never holds a whole shard in memory; ``np.load`` reads
one member without reading the others.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.common.jsonl import read_jsonl, write_jsonl

INDEX_FILE = "index.jsonl"
AUDIO_DIR = "audio"
SEARCH_PREFIX = "search"
DENSE_PREFIX = "dense"


@dataclass(frozen=True)
class FrameRecord:
    """One accepted manifest video in the frames Dataset.

    Attributes:
        video_id: From the manifest.
        key: Object key of the video in the client's source store.
        split: ``train`` / ``val`` / ``test``.
        labels: Text labels for search.
        category: The client's category.
        authenticity: ``real`` / ``fake`` / empty.
        fake_type: How a fake was made (from the manifest), empty when unknown.
        status: ``ok`` or ``rejected`` (see ``reason``).
        reason: ``code: detail`` when rejected or partial, empty otherwise.
        partial: The video failed mid-decode and keeps the frames produced up to the error.
        native_fps: Average frame rate of the video stream.
        duration_s: Duration of the video stream in seconds.
        width: Display width (after rotation).
        height: Display height (after rotation).
        search_shard: File name of the search shard holding the video's array (``search-00000.npz``), or "".
        n_search: Search frames.
        search_times: Presentation time in seconds of each search frame.
        dense_shard: File name of the dense shard, or "" without a dense clip.
        n_dense: Dense frames.
        dense_fps: Frame rate of the dense frames.
        dense_start_s: Time of the first dense frame in the video.
        audio_file: ``audio/<video_id>.npy`` or "" without audio.
        has_audio: Whether the video has an audio track that was extracted.
        result_key: The content-hash key of this extraction (:mod:`components.frame_extraction.reuse`); later
            stages key their own per-video results on it. ``""`` when unknown (no content hash).
    """

    video_id: str
    key: str = ""
    split: str = "train"
    labels: tuple[str, ...] = ()
    category: str = ""
    authenticity: str = ""
    fake_type: str = ""
    status: str = "ok"
    reason: str = ""
    partial: bool = False
    native_fps: float = 0.0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    search_shard: str = ""
    n_search: int = 0
    search_times: tuple[float, ...] = ()
    dense_shard: str = ""
    n_dense: int = 0
    dense_fps: float = 0.0
    dense_start_s: float = 0.0
    audio_file: str = ""
    has_audio: bool = False
    result_key: str = ""


def shard_name(prefix: str, number: int) -> str:
    """``search-00003.npz`` for ``("search", 3)``."""
    return f"{prefix}-{number:05d}.npz"


def write_frame_index(out_dir: str | Path, records: Iterable[FrameRecord]) -> int:
    """Write ``index.jsonl`` (one JSON row per record, in the given order). Returns the row count."""
    return write_jsonl(Path(out_dir) / INDEX_FILE, records)


def read_frame_index(frames_dir: str | Path) -> list[FrameRecord]:
    """Read the ``index.jsonl`` of a frames Dataset.

    Raises:
        FileNotFoundError: If the folder holds no index.
        ValueError: If a row is not a FrameRecord.
    """

    def build(row: dict) -> FrameRecord:
        row["labels"] = tuple(row.get("labels", ()))
        row["search_times"] = tuple(float(t) for t in row.get("search_times", ()))
        return FrameRecord(**row)

    return read_jsonl(Path(frames_dir) / INDEX_FILE, build, "frames index")


def _load_member(frames_dir: str | Path, shard: str, video_id: str) -> np.ndarray:
    if not shard:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    with np.load(Path(frames_dir) / shard, allow_pickle=False) as npz:
        if video_id not in npz.files:
            raise KeyError(f"{shard} holds no array for video {video_id}")
        return npz[video_id]


def load_search_frames(frames_dir: str | Path, rec: FrameRecord) -> np.ndarray:
    """The video's search frames, uint8 ``[N, S, S, 3]`` RGB (``[0, 0, 0, 3]`` when it has none)."""
    return _load_member(frames_dir, rec.search_shard, rec.video_id)


def load_dense_frames(frames_dir: str | Path, rec: FrameRecord) -> np.ndarray:
    """The video's dense clip, uint8 ``[T, H, W, 3]`` RGB (``[0, 0, 0, 3]`` when it has none)."""
    return _load_member(frames_dir, rec.dense_shard, rec.video_id)


def load_audio(frames_dir: str | Path, rec: FrameRecord) -> np.ndarray:
    """The video's whole audio track, float32 mono (an empty array when it has no audio)."""
    if not rec.audio_file:
        return np.zeros(0, dtype=np.float32)
    return np.load(Path(frames_dir) / rec.audio_file, allow_pickle=False).astype(np.float32, copy=False)


class ShardWriter:
    """Writes numbered ``<prefix>-NNNNN.npz`` shards one array at a time, ``max_videos`` arrays per shard.

    Args:
        out_dir: The Dataset folder.
        prefix: ``search`` or ``dense``.
        max_videos: Arrays per shard before the next one is started.
    """

    def __init__(self, out_dir: str | Path, prefix: str, max_videos: int) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_videos = max_videos
        self.shards: list[str] = []
        self._zip: zipfile.ZipFile | None = None
        self._count = 0

    def add(self, video_id: str, array: np.ndarray) -> str:
        """Append one array under the name ``video_id``; returns the shard file name that holds it."""
        if self._zip is None or self._count >= self.max_videos:
            self.close()
            name = shard_name(self.prefix, len(self.shards))
            self._zip = zipfile.ZipFile(self.out_dir / name, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self.shards.append(name)
            self._count = 0
        with self._zip.open(f"{video_id}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
        self._count += 1
        return self.shards[-1]

    def close(self) -> None:
        """Finish the open shard (if any)."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

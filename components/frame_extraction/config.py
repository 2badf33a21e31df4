"""Settings of the frame_extraction stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.errors import require

RESIZE_MODES = ("center_crop", "pad")


_require = functools.partial(require, section="frame_extraction")


@dataclass(frozen=True)
class FrameExtractionConfig:
    """How frames and audio are taken out of each accepted video.

    Attributes:
        search_fps: Rate of the search frames (frames per second of video), sampled by seeking so a long
            video is not decoded whole.
        search_size: Side of the square search frames in pixels.
        resize_mode: ``center_crop`` (scale the short side to ``search_size``, crop the centre) or ``pad``
            (scale the long side to ``search_size``, pad the rest with black).
        max_search_frames: Most search frames per video; when ``search_fps`` would give more, this many are
            spread evenly over the video.
        dense_seconds: Length of the dense clip (consecutive frames at the native rate) taken where the
            audio is most energetic; the whole video when it is shorter.
        dense_max_side: Longer side of the dense frames in pixels (aspect kept, no crop).
        dense_all: Take a dense clip from every video, not only those with an authenticity label.
        min_frames: A video that fails mid-decode keeps the search frames it produced up to the error only
            if there are at least this many; otherwise it is rejected.
        audio_rate: Sample rate of the extracted mono audio.
        workers: Videos processed in parallel (processes); 1 processes them in this process.
        shard_max_videos: Most videos per ``search-*.npz`` / ``dense-*.npz`` shard.
    """

    search_fps: float = 1.0
    search_size: int = 224
    resize_mode: str = "center_crop"
    max_search_frames: int = 32
    dense_seconds: float = 3.0
    dense_max_side: int = 320
    dense_all: bool = False
    min_frames: int = 2
    audio_rate: int = 16000
    workers: int = 2
    shard_max_videos: int = 64

    def __post_init__(self) -> None:
        for name in ("search_fps", "dense_seconds"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{name} must be a number, got {value!r}",
            )
        for name in (
            "search_size",
            "max_search_frames",
            "dense_max_side",
            "min_frames",
            "audio_rate",
            "workers",
            "shard_max_videos",
        ):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int, got {value!r}")
        _require(0.01 <= self.search_fps <= 60.0, f"search_fps must be 0.01..60, got {self.search_fps}")
        _require(16 <= self.search_size <= 1024, f"search_size must be 16..1024, got {self.search_size}")
        _require(
            self.resize_mode in RESIZE_MODES,
            f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}",
        )
        _require(
            1 <= self.max_search_frames <= 100_000, f"max_search_frames must be 1..100000, got {self.max_search_frames}"
        )
        _require(0.1 <= self.dense_seconds <= 60.0, f"dense_seconds must be 0.1..60, got {self.dense_seconds}")
        _require(16 <= self.dense_max_side <= 2048, f"dense_max_side must be 16..2048, got {self.dense_max_side}")
        _require(isinstance(self.dense_all, bool), f"dense_all must be a bool, got {self.dense_all!r}")
        _require(1 <= self.min_frames <= 10_000, f"min_frames must be 1..10000, got {self.min_frames}")
        _require(8000 <= self.audio_rate <= 48000, f"audio_rate must be 8000..48000, got {self.audio_rate}")
        _require(1 <= self.workers <= 64, f"workers must be 1..64, got {self.workers}")
        _require(
            1 <= self.shard_max_videos <= 10_000, f"shard_max_videos must be 1..10000, got {self.shard_max_videos}"
        )

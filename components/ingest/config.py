"""Settings of the ingest stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

from dataclasses import dataclass

from components.common.errors import require


@dataclass(frozen=True)
class IngestConfig:
    """What ingest accepts. A video outside these bounds is rejected with the bound it broke.

    Attributes:
        min_duration_s: Shortest accepted video.
        max_duration_s: Longest accepted video.
        min_side: Smallest accepted width or height in pixels.
        max_side: Largest accepted width or height in pixels.
        min_fps: Lowest accepted average frame rate.
        max_fps: Highest accepted average frame rate.
        max_size_mb: Largest accepted file.
        val_fraction: Share of videos in the validation split (by content hash).
        test_fraction: Share of videos in the test split (by content hash).
    """

    min_duration_s: float = 0.5
    max_duration_s: float = 3600.0
    min_side: int = 32
    max_side: int = 4096
    min_fps: float = 5.0
    max_fps: float = 120.0
    max_size_mb: float = 4096.0
    val_fraction: float = 0.15
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        require(
            0 < self.min_duration_s <= self.max_duration_s,
            "ingest: need 0 < min_duration_s <= max_duration_s",
        )
        require(0 < self.min_side <= self.max_side, "ingest: need 0 < min_side <= max_side")
        require(0 < self.min_fps <= self.max_fps, "ingest: need 0 < min_fps <= max_fps")
        require(self.max_size_mb > 0, "ingest.max_size_mb must be > 0")
        require(
            self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1,
            "ingest: val_fraction and test_fraction must be >= 0 and sum to less than 1",
        )

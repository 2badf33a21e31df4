"""Settings of the monitor stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

from dataclasses import dataclass

from components.common.errors import require


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor compares two months.

    Attributes:
        min_samples: Fewest values a signal needs on each side to be compared.
        embedding_threshold: MMD above which embeddings have drifted (Evidently's ``MMDDriftMethod`` default).
        max_rows: Most rows per side given to Evidently (a uniform sample beyond, seeded): its embedding report
            draws a t-SNE of them.
    """

    min_samples: int = 5
    embedding_threshold: float = 0.015
    max_rows: int = 2000

    def __post_init__(self) -> None:
        require(isinstance(self.min_samples, int) and self.min_samples >= 2, "min_samples must be >= 2", "monitor")
        require(0 < self.embedding_threshold < 10, "embedding_threshold must be in (0, 10)", "monitor")
        require(isinstance(self.max_rows, int) and self.max_rows >= 10, "max_rows must be >= 10", "monitor")

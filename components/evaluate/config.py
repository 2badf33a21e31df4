"""Settings of the evaluate stage (standard library only: the kfp wrappers import this)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.errors import require

_require = functools.partial(require, section="evaluate")


@dataclass(frozen=True)
class EvaluateConfig:
    """How the evaluate stage states its uncertainty (``evaluate`` in the client config).

    Attributes:
        confidence: Level of every confidence interval in the reports (Wilson for proportions, percentile
            bootstrap for mAP, ROC AUC and average precision; :mod:`components.common.stats`).
        n_bootstrap: Resamples of each bootstrap interval (over queries for search, over videos for lip-sync).
        seed: Seed of the resampling (a report is reproducible).
        cv_folds: ``0`` (off) or k >= 2: also a k-fold cross-validated estimate of the lip-sync detector, by
            video, stratified by label, over all labelled videos, one model trained per fold from scratch
            (:mod:`components.evaluate.crossval`). For small clients, whose held-out test set is too small to
            say much. Off by default: it trains k more models.
        cv_epochs: Training epochs of each fold's model (a small budget: the estimate is of this recipe, stated
            in the report).
        min_fake_type_videos: Test fakes a fake type needs for its own figures (AUC, AP, FNR, FPR against all
            test reals); a type with fewer is reported as ``not evaluated`` with its count.
    """

    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    cv_folds: int = 0
    cv_epochs: int = 2
    min_fake_type_videos: int = 5

    def __post_init__(self) -> None:
        _require(0.5 <= self.confidence < 1.0, f"confidence must be in [0.5, 1), got {self.confidence}")
        _require(100 <= self.n_bootstrap <= 100_000, f"n_bootstrap must be 100..100000, got {self.n_bootstrap}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _require(self.cv_folds == 0 or 2 <= self.cv_folds <= 20, f"cv_folds must be 0 or 2..20, got {self.cv_folds}")
        _require(1 <= self.cv_epochs <= 100, f"cv_epochs must be 1..100, got {self.cv_epochs}")
        _require(
            2 <= self.min_fake_type_videos <= 10_000,
            f"min_fake_type_videos must be 2..10000, got {self.min_fake_type_videos}",
        )

"""The A/B gate's policy (standard library only: kfp wrappers and pipelines/ import it)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from components.common.errors import ConfigError

TESTS = ("bootstrap", "mcnemar")


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger replaces the champion. All conditions must hold to promote.

    Attributes:
        min_gain: Smallest improvement of the primary metric (R@1 for CLIP, ROC AUC for lip-sync), in
            absolute units (0.02 = 2 points), that is worth a new model.
        test: Paired test on the shared test items: ``"bootstrap"`` (paired bootstrap CI of the
            difference of the primary metric) or ``"mcnemar"`` (exact McNemar test on per-item
            correctness).
        confidence: Confidence of the test: the two-sided bootstrap CI's level (real gain: its lower
            bound > 0) or 1 - the McNemar significance level.
        n_bootstrap: Bootstrap resamples.
        max_regression: Largest drop allowed in any group (CLIP category top-1, lip-sync perturbation
            AUC), in absolute units.
        seed: Seed of the bootstrap resampling (the decision is reproducible).
        min_test_videos: Fewest lip-sync test videos the gate decides on; below it the champion is kept and the
            reasons say so (an AUC on 6 videos moves by a sixth of its range with one video).
        min_test_queries: Fewest search test queries the gate decides on (R@1 is a share of them).
    """

    min_gain: float = 0.02
    test: str = "bootstrap"
    confidence: float = 0.95
    n_bootstrap: int = 2000
    max_regression: float = 0.05
    seed: int = 0
    min_test_videos: int = 30
    min_test_queries: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_gain < 1.0:
            raise ConfigError(f"ab_gate.min_gain must be in [0, 1), got {self.min_gain}")
        if self.test not in TESTS:
            raise ConfigError(f"ab_gate.test must be one of {', '.join(TESTS)}, got {self.test!r}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"ab_gate.confidence must be in [0.5, 1), got {self.confidence}")
        if not 100 <= self.n_bootstrap <= 1_000_000:
            raise ConfigError(f"ab_gate.n_bootstrap must be 100..1000000, got {self.n_bootstrap}")
        if not 0.0 <= self.max_regression <= 1.0:
            raise ConfigError(f"ab_gate.max_regression must be in [0, 1], got {self.max_regression}")
        if self.seed < 0:
            raise ConfigError(f"ab_gate.seed must be >= 0, got {self.seed}")
        for name in ("min_test_videos", "min_test_queries"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise ConfigError(f"ab_gate.{name} must be 1..1000000, got {getattr(self, name)}")


def default_minimum(name: str) -> int:
    """The default of ``min_test_videos`` / ``min_test_queries`` (a decision below it says so)."""
    return next(int(f.default) for f in fields(GatePolicy) if f.name == name)

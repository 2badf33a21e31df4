"""The A/B gate's policy (standard library only: kfp wrappers and pipelines/ import it)."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    min_gain: float = 0.02
    test: str = "bootstrap"
    confidence: float = 0.95
    n_bootstrap: int = 2000
    max_regression: float = 0.05
    seed: int = 0

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

"""Honest search confidence: the probability that the top result is relevant, not a raw cosine score.

A raw CLIP similarity (0.28, 0.78, ...) is not a probability. The calibrator is a logistic regression (Platt
scaling) from two features of a query's result list, the top-1 similarity and its margin over the runner-up, to
whether the top-1 video was relevant. It is fitted on validation queries when the index is built and stored next to
it as ``calibration.json``; its expected calibration error on those queries is stored too, so the figure the API
returns can be checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


def _features(top_scores: np.ndarray) -> np.ndarray:
    """[Q, k] best-first similarities -> [Q, 3] (top-1, margin over top-2, bias)."""
    top_scores = np.atleast_2d(np.asarray(top_scores, dtype=np.float64))
    top1 = top_scores[:, 0]
    margin = top1 - top_scores[:, 1] if top_scores.shape[1] > 1 else np.zeros_like(top1)
    return np.stack([top1, margin, np.ones_like(top1)], axis=1)


@dataclass(frozen=True)
class Calibrator:
    """Platt scaling of (top-1 similarity, margin) to P(top-1 relevant).

    Attributes:
        weights: Logistic regression weights for top-1, margin and the bias.
        ece: Expected calibration error on the fitting queries (10 bins).
        n_queries: How many queries it was fitted on (0: the uncalibrated fallback).
    """

    weights: tuple[float, float, float]
    ece: float = float("nan")
    n_queries: int = 0

    def confidence(self, top_scores: np.ndarray) -> np.ndarray:
        """P(top-1 relevant) for each row of best-first similarities ``[Q, k]``."""
        z = _features(top_scores) @ np.asarray(self.weights)
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Calibrator:
        data = json.loads(Path(path).read_text())
        return cls(weights=tuple(data["weights"]), ece=data["ece"], n_queries=data["n_queries"])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def fit_calibrator(top_scores: np.ndarray, correct: np.ndarray, l2: float = 1e-2, steps: int = 50) -> Calibrator:
    """Fit Platt scaling by Newton's method (a few dozen steps, L2-regularised so tiny sets stay sane).

    Args:
        top_scores: ``[Q, k]`` best-first similarities of validation queries (k >= 1).
        correct: ``[Q]`` 1 where the top-1 result was relevant.
        l2: Ridge penalty on the non-bias weights.
        steps: Newton iterations (bounded).

    Returns:
        The calibrator with its ECE on the same queries.

    Raises:
        ValueError: With fewer than 2 queries or only one outcome class (nothing to calibrate against).
    """
    x = _features(top_scores)
    y = np.asarray(correct, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise ValueError("calibration needs at least 2 validation queries with both hits and misses")
    w = np.zeros(3)
    penalty = np.diag([l2, l2, 0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(3)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    calibrator = Calibrator(weights=tuple(float(v) for v in w), n_queries=len(y))
    ece = expected_calibration_error(calibrator.confidence(top_scores), y)
    return Calibrator(weights=calibrator.weights, ece=ece, n_queries=len(y))

"""Search confidence calibration: fitted confidences match observed hit rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.calibration import Calibrator, expected_calibration_error, fit_calibrator


def _queries(n: int, seed: int = 0):
    # Top-1 is relevant with a probability that grows with its score: what calibration must recover.
    rng = np.random.default_rng(seed)
    top1 = rng.uniform(0.1, 0.9, n)
    second = top1 - rng.uniform(0.0, 0.2, n)
    p_true = 1 / (1 + np.exp(-(10 * (top1 - 0.5))))
    correct = (rng.uniform(size=n) < p_true).astype(float)
    return np.stack([top1, second], axis=1), correct, p_true


def test_fitted_confidence_tracks_the_true_hit_probability():
    scores, correct, _ = _queries(3000)
    calibrator = fit_calibrator(scores, correct)
    test_scores, test_correct, p_true = _queries(3000, seed=1)
    confidence = calibrator.confidence(test_scores)
    assert np.abs(confidence - p_true).mean() < 0.05
    assert expected_calibration_error(confidence, test_correct) < 0.05
    assert calibrator.ece < 0.05 and calibrator.n_queries == 3000
    # Raw similarity is not a probability: it is far worse calibrated here.
    assert expected_calibration_error(test_scores[:, 0], test_correct) > 2 * expected_calibration_error(
        confidence, test_correct
    )


def test_ece_of_perfect_and_wrong_confidence():
    assert expected_calibration_error(np.array([1.0, 1.0, 0.0]), np.array([1, 1, 0])) == 0.0
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0, 0])) == pytest.approx(1.0)


def test_one_outcome_class_is_refused():
    with pytest.raises(ValueError, match="both hits and misses"):
        fit_calibrator(np.array([[0.5, 0.4], [0.6, 0.1]]), np.array([1, 1]))


def test_save_load(tmp_path: Path):
    scores, correct, _ = _queries(200)
    calibrator = fit_calibrator(scores, correct)
    calibrator.save(tmp_path / "calibration.json")
    loaded = Calibrator.load(tmp_path / "calibration.json")
    np.testing.assert_allclose(loaded.confidence(scores), calibrator.confidence(scores))

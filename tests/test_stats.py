"""Confidence intervals (components/common/stats.py), the evaluate settings, and the summary's figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from components.common.errors import ConfigError
from components.common.stats import auc_rows, bootstrap_mean, bootstrap_two_class, mean_and_spread, wilson
from components.config import from_dict, load_config
from components.evaluate.clip_eval import clip_estimates
from components.evaluate.config import EvaluateConfig
from components.evaluate.lipsync_eval import lipsync_estimates
from components.finetune_clip.metrics import RetrievalResult
from components.summary.core import RunSummary, StageResult


def test_wilson_interval_matches_the_closed_form():
    est = wilson(8, 10)
    # Wilson 95% for 8/10: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.95996.
    z, p, n = norm.ppf(0.975), 0.8, 10
    centre, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (est.low, est.high) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    assert (est.low, est.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert (est.value, est.n, est.method) == (0.8, 10, "wilson")
    assert wilson(0, 6).low == 0.0 and 0.3 < wilson(0, 6).high < 0.5  # never below 0, honest at n = 6
    assert wilson(3, 4, confidence=0.99).high > wilson(3, 4).high
    none = wilson(0, 0)
    assert none.value is None and none.low is None and "no item" in none.note
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_bootstrap_interval_covers_the_truth_at_about_the_stated_rate():
    """A bounded simulation: 200 synthetic test sets (seeded), each with its 95% interval of the mean and of AUC."""
    rng = np.random.default_rng(7)
    draws, n = 200, 40
    true_auc = float(norm.cdf(1.0 / np.sqrt(2)))  # positives ~ N(1, 1), negatives ~ N(0, 1)
    mean_hits = auc_hits = 0
    for i in range(draws):
        x = rng.normal(0.5, 1.0, n)
        mean_hits += (
            bootstrap_mean(x, n_resamples=300, seed=i).low <= 0.5 <= bootstrap_mean(x, n_resamples=300, seed=i).high
        )
        y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
        s = np.r_[rng.normal(1.0, 1.0, n // 2), rng.normal(0.0, 1.0, n // 2)]
        est = bootstrap_two_class("roc_auc", y, s, n_resamples=300, seed=i)
        auc_hits += est.low <= true_auc <= est.high
    # Percentile bootstrap intervals run a little narrow at n = 40; 200 draws put the rate within about ±3 points.
    assert 0.88 <= mean_hits / draws <= 0.99
    assert 0.86 <= auc_hits / draws <= 0.99


def test_two_class_bootstrap_is_sklearn_auc_and_says_when_it_cannot():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(50, 12))
    s = np.round(rng.random((50, 12)), 1)  # ties on purpose: they count half, as in roc_auc_score
    y[:, 0], y[:, 1] = 0, 1
    assert auc_rows(y, s) == pytest.approx([roc_auc_score(a, b) for a, b in zip(y, s, strict=True)])
    labels, scores = [1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.4, 0.7, 0.2, 0.1]
    est = bootstrap_two_class("roc_auc", labels, scores, seed=3)
    assert est.value == pytest.approx(8 / 9) and est.low < est.value <= est.high <= 1.0
    assert est == bootstrap_two_class("roc_auc", labels, scores, seed=3)  # fixed seed: reproducible
    ap = bootstrap_two_class("average_precision", labels, scores, n_resamples=200)
    assert ap.method == "bootstrap" and ap.low <= ap.value <= ap.high
    one = bootstrap_two_class("roc_auc", [1, 1, 1], [0.2, 0.5, 0.9])
    assert one.value is None and one.low is None and one.note == "one class only (positives)"
    # One real among 12 videos: every usable resample repeats it, so there is a value but no interval.
    sparse = bootstrap_two_class("roc_auc", [0] + [1] * 11, np.linspace(0, 1, 12))
    assert sparse.value == 1.0 and sparse.low is None and sparse.note == "a single negative item: no interval"
    with pytest.raises(ValueError, match="metric must be"):
        bootstrap_two_class("f1", labels, scores)


def test_mean_bootstrap_and_fold_spread():
    assert bootstrap_mean([1.0, 1.0, 1.0]).to_dict() == {
        "value": 1.0,
        "low": 1.0,
        "high": 1.0,
        "n": 3,
        "method": "bootstrap",
        "confidence": 0.95,
        "note": "",
    }
    assert bootstrap_mean([0.4]).low is None and bootstrap_mean([]).value is None
    assert mean_and_spread([0.8, 1.0, None]) == {
        "folds": 3,
        "folds_undefined": 1,
        "mean": pytest.approx(0.9),
        "std": pytest.approx(np.std([0.8, 1.0], ddof=1)),
        "min": 0.8,
        "max": 1.0,
    }


def test_lipsync_estimates_count_the_right_denominators():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.6, 0.3, 0.2, 0.1])
    est = lipsync_estimates(y, s, 0.5, EvaluateConfig(n_bootstrap=200))
    assert (est["fpr"]["value"], est["fpr"]["n"]) == (pytest.approx(2 / 5), 5)  # reals called fake / reals
    assert (est["fnr"]["value"], est["fnr"]["n"]) == (pytest.approx(1 / 3), 3)  # fakes called real / fakes
    assert est["accuracy"]["n"] == 8 and est["roc_auc"]["value"] == pytest.approx(13 / 15)
    assert est["fpr"] == wilson(2, 5).to_dict()
    only_real = lipsync_estimates(np.zeros(4, int), np.array([0.1, 0.2, 0.6, 0.3]), 0.5)
    assert only_real["roc_auc"]["value"] is None and only_real["fnr"]["value"] is None
    assert only_real["fpr"]["value"] == 0.25


def test_clip_estimates_per_metric_and_category():
    res = RetrievalResult(
        queries=["a1", "a2", "a3", "b1"],
        query_categories=["a", "a", "a", "b"],
        rank=np.array([1, 1, 4, 12]),
        average_precision=np.array([1.0, 1.0, 0.25, 0.1]),
        recall_at_1=0.5,
        recall_at_5=0.75,
        recall_at_10=0.75,
        median_rank=2.5,
        mean_ap=0.5875,
    )
    est = clip_estimates(res, EvaluateConfig(n_bootstrap=200, confidence=0.9))
    assert est["recall_at_1"] == wilson(2, 4, 0.9).to_dict()
    assert est["recall_at_5"]["value"] == 0.75 and est["recall_at_10"]["n"] == 4
    assert est["mean_ap"]["value"] == pytest.approx(0.5875) and est["mean_ap"]["method"] == "bootstrap"
    assert est["recall_at_1_by_category"]["a"] == wilson(2, 3, 0.9).to_dict()
    assert est["recall_at_1_by_category"]["b"]["n"] == 1
    assert est["mean_ap_by_category"]["b"]["low"] is None  # one query: no interval, and it says so
    assert "one item only" in est["mean_ap_by_category"]["b"]["note"]


def test_evaluate_settings_are_validated_and_configurable():
    assert load_config(evaluate={"cv_folds": 5, "n_bootstrap": 500}).evaluate == EvaluateConfig(
        cv_folds=5, n_bootstrap=500
    )
    for bad, match in (
        ({"cv_folds": 1}, "evaluate: cv_folds must be 0 or 2..20"),
        ({"n_bootstrap": 10}, "evaluate: n_bootstrap"),
        ({"confidence": 1.0}, "evaluate: confidence"),
        ({"folds": 3}, r"unknown setting\(s\) in \[evaluate\]: folds"),
    ):
        with pytest.raises(ConfigError, match=match):
            from_dict({"evaluate": bad})


def test_demo_config_lowers_the_gate_minimums_and_nothing_else(tmp_path):
    from pathlib import Path

    demo = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml", state_dir=str(tmp_path))
    assert (demo.ab_gate.min_test_videos, demo.ab_gate.min_test_queries) == (6, 30)
    default = load_config(state_dir=str(tmp_path))
    assert (default.ab_gate.min_test_videos, default.ab_gate.min_test_queries) == (30, 50)
    assert demo.to_json().replace('"min_test_queries": 30', "").replace('"min_test_videos": 6', "") == (
        default.to_json().replace('"min_test_queries": 50', "").replace('"min_test_videos": 30', "")
    )


def test_summary_shows_each_figure_with_its_interval_and_the_cv_estimate():
    metrics = {
        "clip_n_queries": 33.0,
        "clip_challenger_recall_at_1": 0.7273,
        "clip_challenger_recall_at_1_ci_low": 0.5551,
        "clip_challenger_recall_at_1_ci_high": 0.8494,
        "clip_baseline_recall_at_1": 0.1818,
        "lipsync_cv_roc_auc_mean": 0.91,
        "lipsync_cv_roc_auc_std": 0.05,
    }
    summary = RunSummary("acme", "2026-11-01", 30, "", "", [StageResult("evaluate", "FINISHED", 1.0, metrics)], {})
    row = next(line for line in summary.to_markdown().splitlines() if line.startswith("| evaluate |"))
    assert "clip_challenger_recall_at_1=0.7273 [0.5551, 0.8494]" in row
    assert "clip_baseline_recall_at_1=0.1818," in row and "clip_n_queries=33" in row
    assert "lipsync_cv_roc_auc=0.91 ± 0.05" in row
    assert "_ci_low" not in row and "_std" not in row


def test_summary_shows_fake_type_figures_and_what_was_not_evaluated():
    metrics = {
        "lipsync_challenger_test_fake_type_offset_roc_auc": 0.8125,
        "lipsync_challenger_test_fake_type_offset_roc_auc_ci_low": 0.61,
        "lipsync_challenger_test_fake_type_offset_roc_auc_ci_high": 0.95,
        "lipsync_challenger_test_fake_type_offset_n_fake": 12.0,
        "lipsync_challenger_test_fake_type_partial_n_fake": 2.0,
    }
    note = "fake type partial: 2 test fake(s) of this type, fewer than evaluate.min_fake_type_videos (5)"
    stage = StageResult("evaluate_lipsync", "FINISHED", 1.0, metrics, not_evaluated=note)
    row = next(
        line
        for line in RunSummary("acme", "2026-11-01", 30, "", "", [stage], {}).to_markdown().splitlines()
        if line.startswith("| evaluate_lipsync |")
    )
    assert "lipsync_challenger_test_fake_type_offset_roc_auc=0.8125 [0.61, 0.95]" in row
    assert "lipsync_challenger_test_fake_type_partial_n_fake=2" in row and f"not evaluated: {note} |" in row

"""Confidence intervals of the evaluation metrics: one figure, its interval and the test-set size it rests on.

Which interval for which metric:

- a proportion (R@1 = share of queries whose first hit is the relevant video; FPR = real videos called fake /
  real videos; FNR; accuracy): the Wilson score interval, ``scipy.stats.binomtest(k, n).proportion_ci(...,
  method="wilson")``; it stays inside [0, 1] and is honest at small n, where the normal approximation is not;
- a mean of per-item values (mAP = mean of per-query AP): a percentile bootstrap over the items with
  ``scipy.stats.bootstrap``;
- a ranking metric of two classes (ROC AUC, average precision over videos): a percentile bootstrap over the
  videos (:func:`bootstrap_two_class`). It is written here rather than with ``scipy.stats.bootstrap`` because a
  resample may draw a single class, where AUC and AP are undefined: those resamples are dropped and counted,
  which scipy's bootstrap cannot do (one NaN resample makes its interval NaN). The figures are scikit-learn's
  ``roc_auc_score`` and ``average_precision_score``; the resampled AUCs are the same Mann-Whitney statistic,
  vectorised (a thousand resamples of each robustness row would otherwise cost seconds).

Every bootstrap takes a fixed seed, so a report is reproducible. Where an interval cannot be computed (one class
only, no item) the :class:`Estimate` says why instead of holding a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Below this share of usable resamples a two-class bootstrap gives no interval (too few of one class).
MIN_VALID_SHARE = 0.5


@dataclass(frozen=True)
class Estimate:
    """A metric on a test set with its confidence interval.

    Attributes:
        value: The metric on all items, ``None`` when it is undefined (``note`` says why).
        low: Lower bound of the interval, ``None`` when there is none.
        high: Upper bound of the interval.
        n: The items it rests on (queries, videos; for FPR the real videos, for FNR the fake ones).
        method: ``wilson``, ``bootstrap`` or ``""`` (no interval).
        confidence: The interval's level.
        note: Why there is no value or no interval (e.g. ``one class only``).
    """

    value: float | None
    low: float | None
    high: float | None
    n: int
    method: str = ""
    confidence: float = 0.95
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return dataclasses.asdict(self)

    @classmethod
    def undefined(cls, n: int, note: str, confidence: float = 0.95, value: float | None = None) -> Estimate:
        """No interval (and no value unless given): ``note`` says why."""
        return cls(value, None, None, n, "", confidence, note)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson score interval (``scipy.stats.binomtest(...).proportion_ci``).

    Args:
        successes: Items counted (hits, false positives, ...).
        n: All items of the denominator.
        confidence: Level of the interval.

    Returns:
        The estimate; undefined when ``n`` is 0.
    """
    from scipy.stats import binomtest

    if n == 0:
        return Estimate.undefined(0, "no item in the denominator", confidence)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), int(n), "wilson", confidence)


def bootstrap_mean(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0):
    """The mean of per-item values with a percentile bootstrap interval over the items (``scipy.stats.bootstrap``).

    Returns:
        The estimate; without interval for fewer than 2 items.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return Estimate.undefined(0, "no item", confidence)
    if len(x) < 2:
        return Estimate.undefined(1, "one item only", confidence, float(x.mean()))
    if np.all(x == x[0]):  # every resample has the same mean; scipy warns about a degenerate distribution
        return Estimate(float(x[0]), float(x[0]), float(x[0]), len(x), "bootstrap", confidence)
    res = bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Estimate(float(x.mean()), float(ci.low), float(ci.high), len(x), "bootstrap", confidence)


#: The two-class ranking metrics :func:`bootstrap_two_class` knows (scikit-learn's functions of the same name).
TWO_CLASS_METRICS = ("roc_auc", "average_precision")


def auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row by the Mann-Whitney statistic (ties count half, as in ``roc_auc_score``); NaN where a
    row lacks one class. Vectorised over resamples (the bootstraps here and the gate's paired one)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_two_class(
    metric: str,
    labels: Sequence[int],
    scores: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """ROC AUC or average precision with a percentile bootstrap interval over the items.

    Resamples that draw a single class are dropped (the metric is undefined there); with fewer than
    :data:`MIN_VALID_SHARE` of them usable, or a class of one item, there is a value but no interval.

    Args:
        metric: ``roc_auc`` or ``average_precision`` (the value is scikit-learn's; the AUC of the resamples is
            the same Mann-Whitney statistic, vectorised).
        labels: 1 (positive, e.g. fake) or 0 per item.
        scores: Score per item.
        confidence: Level of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        The estimate; undefined with one class only.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if metric not in TWO_CLASS_METRICS:
        raise ValueError(f"metric must be one of {', '.join(TWO_CLASS_METRICS)}, got {metric!r}")
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    n = len(y)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == n:
        only = "no item" if n == 0 else ("positives" if n_pos else "negatives")
        return Estimate.undefined(n, f"one class only ({only})", confidence)
    score_fn = roc_auc_score if metric == "roc_auc" else average_precision_score
    value = float(score_fn(y, s))
    if min(n_pos, n - n_pos) < 2:  # every usable resample repeats the one item of that class: no spread to see
        one = "positive" if n_pos == 1 else "negative"
        return Estimate.undefined(n, f"a single {one} item: no interval", confidence, value)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    idx = idx[(y[idx].sum(axis=1) > 0) & (y[idx].sum(axis=1) < n)]
    if len(idx) < MIN_VALID_SHARE * n_resamples:
        note = f"too few of one class for a bootstrap ({len(idx)}/{n_resamples} usable resamples)"
        return Estimate.undefined(n, note, confidence, value)
    if metric == "roc_auc":
        stats = auc_rows(y[idx], s[idx])
    else:
        stats = np.array([average_precision_score(y[i], s[i]) for i in idx])
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high), n, "bootstrap", confidence)


def mean_and_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of per-fold figures (``None`` folds are left out and counted)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out: dict[str, Any] = {"folds": len(values), "folds_undefined": len(values) - len(x)}
    if len(x):
        out.update(
            mean=float(x.mean()),
            std=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            min=float(x.min()),
            max=float(x.max()),
        )
    return out

"""Video-level metrics of the lip-sync detector, fake being the positive class (training's validation, evaluate).

Conventions (LipFD's validation code gets both wrong; we do not):

- **fake is the positive class**: FPR = real videos called fake / all real videos; FNR = fake videos called real /
  all fake videos;
- ROC AUC and average precision are computed on the scores, not on thresholded labels;
- the decision threshold is chosen on the validation videos (:func:`choose_threshold`) and only then applied to
  the test videos.
"""

from __future__ import annotations

import math

import numpy as np


def binary_metrics(y_true_fake: np.ndarray, score_fake: np.ndarray, threshold: float = 0.5) -> dict:
    """Video-level metrics with fake as the positive class.

    Args:
        y_true_fake: 1 for fake videos, 0 for real ones.
        score_fake: Probability (or any score) of being fake; higher means more likely fake.
        threshold: A video is called fake when ``score >= threshold``.

    Returns:
        ``n, n_fake, n_real, tp, fp, tn, fn, accuracy, balanced_accuracy, roc_auc, average_precision,
        fpr, fnr, threshold``; a rate whose denominator is zero, and AUC/AP with a single class, are ``None``.

    Raises:
        ValueError: On mismatched lengths or labels other than 0/1.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y_true_fake).astype(int).reshape(-1)
    s = np.asarray(score_fake, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    n_fake, n_real = tp + fn, tn + fp
    both = n_fake > 0 and n_real > 0
    fpr = fp / n_real if n_real else None
    fnr = fn / n_fake if n_fake else None
    return {
        "n": len(y),
        "n_fake": n_fake,
        "n_real": n_real,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "balanced_accuracy": (1 - fpr + 1 - fnr) / 2 if both else None,
        "roc_auc": float(roc_auc_score(y, s)) if both else None,
        "average_precision": float(average_precision_score(y, s)) if both else None,
        "fpr": fpr,
        "fnr": fnr,
        "threshold": float(threshold),
    }


def choose_threshold(y_true_fake: np.ndarray, score_fake: np.ndarray, default: float = 0.5) -> float:
    """Threshold maximizing Youden's J (TPR - FPR, i.e. balanced accuracy) on validation scores.

    Candidates are midpoints between consecutive distinct scores (plus just below the lowest and just
    above the highest); ties go to the candidate closest to ``default``.

    Returns:
        The threshold; ``default`` when the validation set lacks one of the classes.
    """
    y = np.asarray(y_true_fake).astype(int).reshape(-1)
    s = np.asarray(score_fake, dtype=np.float64).reshape(-1)
    if len(y) == 0 or y.min() == y.max():
        return float(default)
    uniq = np.unique(s)
    candidates = np.concatenate([[uniq[0] - 1e-6], (uniq[:-1] + uniq[1:]) / 2, [uniq[-1] + 1e-6]])
    n_fake, n_real = int(y.sum()), int((1 - y).sum())
    best, best_j = float(default), -math.inf
    for t in candidates:
        pred = s >= t
        j = np.sum(pred & (y == 1)) / n_fake - np.sum(pred & (y == 0)) / n_real
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - default) < abs(best - default)):
            best, best_j = float(t), j
    return best

"""evaluate, lip-sync part: the test figures with their intervals, overall and for each fake type.

:func:`lipsync_estimates`: ROC AUC and average precision (bootstrap over videos), FPR, FNR and accuracy at the
operating point (Wilson), each with the videos it rests on. :func:`fake_type_estimates`: the same but accuracy for
each fake type, that type's test fakes against all test reals. A fake type comes from the label records
(``fake_type``, optional; ``clipsync import``'s type column) through the manifest and the frames and faces Datasets.
A type with fewer test fakes than ``evaluate.min_fake_type_videos`` is ``not evaluated``, with its count; fakes
without a type form :data:`UNTYPED` when others have one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from components.common.stats import bootstrap_two_class, wilson
from components.evaluate.config import EvaluateConfig

if TYPE_CHECKING:
    from components.evaluate.lipsync_eval import ModelEval

FAKE_TYPES_FILE = "lipsync_fake_types.md"
#: The group of the test fakes whose label records give no type (listed only beside typed ones).
UNTYPED = "unspecified"


def lipsync_estimates(
    labels: np.ndarray, scores: np.ndarray, threshold: float, evaluation: EvaluateConfig | None = None
) -> dict[str, dict]:
    """The test figures with their confidence intervals (fake is the positive class).

    Args:
        labels: 1 fake, 0 real, per video.
        scores: The detector's score per video.
        threshold: The operating point (chosen on validation).
        evaluation: The ``evaluate`` settings (level, resamples, seed); defaults when ``None``.

    Returns:
        ``roc_auc``, ``average_precision`` (bootstrap over videos), ``fpr`` (over the real videos), ``fnr`` (over
        the fake ones), ``accuracy`` (Wilson) -> :meth:`Estimate.to_dict`.
    """
    ev = evaluation or EvaluateConfig()
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    pred, fake = s >= threshold, y == 1
    boot = {"confidence": ev.confidence, "n_resamples": ev.n_bootstrap, "seed": ev.seed}
    out = {
        "roc_auc": bootstrap_two_class("roc_auc", y, s, **boot),
        "average_precision": bootstrap_two_class("average_precision", y, s, **boot),
        "fpr": wilson(int((pred & ~fake).sum()), int((~fake).sum()), ev.confidence),
        "fnr": wilson(int((~pred & fake).sum()), int(fake.sum()), ev.confidence),
        "accuracy": wilson(int((pred == fake).sum()), len(y), ev.confidence),
    }
    return {k: v.to_dict() for k, v in out.items()}


def fake_type_estimates(
    labels: np.ndarray,
    scores: np.ndarray,
    fake_types: Sequence[str],
    threshold: float,
    evaluation: EvaluateConfig | None = None,
) -> dict[str, dict]:
    """The test figures of each fake type: that type's fakes against all real test videos.

    Args:
        labels: 1 fake, 0 real, per video.
        scores: The detector's score per video.
        fake_types: The fake type per video (empty for reals and for fakes of unknown type).
        threshold: The operating point (chosen on validation).
        evaluation: The ``evaluate`` settings (``min_fake_type_videos``, intervals); defaults when ``None``.

    Returns:
        Type -> ``n_fake``, ``n_real`` and ``roc_auc``, ``average_precision``, ``fnr`` (that type's fakes missed),
        ``fpr`` (over all reals: the same for every type) as :meth:`Estimate.to_dict`, or ``not_evaluated`` (why).
        Fakes without a type form :data:`UNTYPED` when other fakes have one; empty when none has.
    """
    ev = evaluation or EvaluateConfig()
    y = np.asarray(labels, dtype=int)
    types = np.array([t if label == 1 and t else "" for t, label in zip(fake_types, y, strict=True)], dtype=object)
    if not types.any():
        return {}
    types[(y == 1) & (types == "")] = UNTYPED
    reals = y == 0
    out: dict[str, dict] = {}
    for fake_type in sorted(set(types[y == 1])):
        fakes = types == fake_type
        entry: dict = {"n_fake": int(fakes.sum()), "n_real": int(reals.sum())}
        if entry["n_fake"] < ev.min_fake_type_videos:
            entry["not_evaluated"] = (
                f"{entry['n_fake']} test fake(s) of this type, fewer than evaluate.min_fake_type_videos "
                f"({ev.min_fake_type_videos})"
            )
        elif not entry["n_real"]:
            entry["not_evaluated"] = "no real test video to compare with"
        else:
            keep = reals | fakes
            figures = lipsync_estimates(y[keep], np.asarray(scores, dtype=np.float64)[keep], threshold, ev)
            entry.update({k: figures[k] for k in ("roc_auc", "average_precision", "fnr", "fpr")})
        out[fake_type] = entry
    return out


def fake_type_table(challenger: ModelEval, champion: ModelEval | None) -> str:
    """Markdown: per model and fake type, AUC / AP / FNR / FPR with their intervals and n, or why not evaluated."""

    def cell(est: dict) -> str:
        if est.get("value") is None:
            return f"n/a ({est.get('note', '')})"
        if est.get("low") is None:
            return f"{est['value']:.3f} ({est.get('note', 'no interval')})"
        return f"{est['value']:.3f} [{est['low']:.3f}, {est['high']:.3f}]"

    lines = [
        "| model | fake type | test fakes | test reals | ROC AUC | average precision | FNR | FPR |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for role, ev in (("challenger", challenger), ("champion", champion)):
        for fake_type, row in (ev.test_by_fake_type if ev else {}).items():
            head = f"| {role} | {fake_type} | {row['n_fake']} | {row['n_real']} |"
            if "not_evaluated" in row:
                lines.append(f"{head} not evaluated: {row['not_evaluated']} | | | |")
            else:
                figures = " | ".join(cell(row[k]) for k in ("roc_auc", "average_precision", "fnr", "fpr"))
                lines.append(f"{head} {figures} |")
    confidence = challenger.test_ci.get("roc_auc", {}).get("confidence", 0.95)
    lines += [
        "",
        f"Each fake type against all test reals (fake = positive); {confidence:.0%} intervals (bootstrap over videos "
        "for AUC and AP, Wilson for FNR and FPR); FNR over that type's fakes at the operating point, FPR over the "
        "reals (the same for every type).",
    ]
    return "\n".join(lines) + "\n"

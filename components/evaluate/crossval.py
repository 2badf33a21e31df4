"""A k-fold cross-validated estimate of the lip-sync detector, for clients whose test split is small.

Asked for by ``evaluate.cv_folds: k``. All labelled lip-sync videos (train, val and test splits) are split into
k folds by video, stratified by label (``sklearn.model_selection.StratifiedKFold``, seeded). For each fold a new
detector is trained **from scratch** on the other folds (``evaluate.cv_epochs`` epochs, validation videos held
out of them by :func:`~components.finetune_lipsync.data.split_by_video` for the threshold), then scored on the
fold. The report gives each fold's figures and their mean and spread, labelled as a CV estimate beside the
held-out test figures.

Why the lip-sync detector only: scoring this month's CLIP adapter on CV folds without retraining would not be
honest (it was trained on those videos), and retraining the adapter k times is the cost of k fine-tunes of a
ViT. The lip-sync detector is small (minutes of CPU per fold at the demo's size), so retraining it per fold is
affordable; the cost is reported (``seconds``). The estimate is of the training recipe at ``cv_epochs`` epochs
from scratch, not of this month's challenger (which may start from the champion and trains longer): it says how
well the recipe does on this client's data, with a spread a handful of test videos cannot give.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.common.stats import mean_and_spread
from components.evaluate.config import EvaluateConfig
from components.face_tracking.config import FaceTrackingConfig
from components.finetune_lipsync.config import FinetuneLipsyncConfig

logger = logging.getLogger("clipsync.evaluate")

#: The fold figures averaged (binary_metrics' keys).
CV_METRICS = ("roc_auc", "average_precision", "accuracy", "fpr", "fnr")


def cross_validate_lipsync(
    faces_dir: str | Path,
    cfg: FinetuneLipsyncConfig,
    evaluation: EvaluateConfig,
    work_dir: str | Path,
    face_config: FaceTrackingConfig | None = None,
) -> dict[str, Any]:
    """k-fold estimate of the lip-sync recipe over every labelled video of the faces Dataset.

    Args:
        faces_dir: The face_tracking Dataset (all splits are used; videos without evidence are left out, as
            evaluate leaves them out).
        cfg: The ``finetune_lipsync`` settings (architecture, learning rates, validation share, device); its
            ``epochs`` are replaced by ``evaluation.cv_epochs``.
        evaluation: The ``evaluate`` settings (``cv_folds``, ``cv_epochs``, ``seed``).
        work_dir: Parent of a temporary folder for the folds' models.
        face_config: The client's ``FaceTrackingConfig`` (the evidence a clip needs); defaults when ``None``.

    Returns:
        ``k``, ``epochs``, ``folds`` (per fold: sizes and figures), ``metrics`` (figure -> mean, std, min, max),
        ``seconds``; or ``k`` and a ``note`` saying why no estimate was made (too few videos of a class).
    """
    from sklearn.model_selection import StratifiedKFold

    from components.evaluate.lipsync_eval import evaluate_model
    from components.face_tracking.evidence import EvidenceRules
    from components.finetune_lipsync.data import load_lipsync_videos, split_by_video
    from components.finetune_lipsync.train import train_lipsync

    k = evaluation.cv_folds
    rules = EvidenceRules.of(cfg.model.window_s, face_config or FaceTrackingConfig())
    ordered = sorted(load_lipsync_videos(faces_dir, rules)[0], key=lambda v: v.video_id)
    y = np.array([v.label for v in ordered], dtype=int)
    per_class = min(int(y.sum()), int(len(y) - y.sum()))
    # Each fold's training part needs a validation video of each class besides training ones.
    if per_class < max(k, 3):
        return {"k": k, "note": f"needs at least {max(k, 3)} videos of each class, has {per_class}: no CV estimate"}
    fold_cfg = dataclasses.replace(
        cfg, epochs=evaluation.cv_epochs, freeze_epochs=min(cfg.freeze_epochs, evaluation.cv_epochs)
    )
    start = time.monotonic()
    folds = []
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=evaluation.seed)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".cv-") as tmp:
        for i, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
            fit, val = split_by_video([ordered[j] for j in train_idx], cfg.val_fraction, cfg.seed)
            test = [ordered[j] for j in test_idx]
            result = train_lipsync(fit, val, fold_cfg, Path(tmp) / f"fold{i}")
            ev, _, _ = evaluate_model(result.model_dir, val, test, cfg.device, evaluation)
            folds.append(
                {
                    "fold": i,
                    "n_train": len(fit),
                    "n_val": len(val),
                    "n_test": len(test),
                    "n_test_fake": int(y[test_idx].sum()),
                }
                | {key: ev.test.get(key) for key in CV_METRICS}
            )
            logger.info(
                "evaluate: lip-sync CV fold %d/%d: AUC %s on %d videos", i + 1, k, ev.test.get("roc_auc"), len(test)
            )
    return {
        "k": k,
        "epochs": evaluation.cv_epochs,
        "n_videos": len(ordered),
        "folds": folds,
        "metrics": {key: mean_and_spread([f[key] for f in folds]) for key in CV_METRICS},
        "seconds": time.monotonic() - start,
    }

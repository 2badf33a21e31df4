"""Turn the evaluate stage's report folders into :class:`~components.ab_gate.decision.ModelEvaluation` pairs.

- CLIP (``evaluate_clip``'s ``per_query`` Dataset): ``clip_eval.json`` (``baseline_kind`` is ``champion vN``
  or ``base``; R@1 and per-category top-1 of both models) and ``clip_per_query.json`` (query ids and
  per-query ``hit_at_1`` of both models, aligned).
- Lip-sync (``evaluate_lipsync``'s ``report`` Dataset): ``lipsync_paired.jsonl`` (per test video: label,
  each model's score and correctness) and ``lipsync_eval.json`` (robustness rows: AUC per perturbation and
  level). The primary AUC is recomputed from the paired scores so that the gain and the paired bootstrap
  measure the same thing. With no champion, the baseline is a chance-level detector (AUC 0.5, predicts
  "real" for every video): the lip-sync detector has no pretrained base to compare with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from components.ab_gate.decision import ModelEvaluation

CLIP_SUMMARY = "clip_eval.json"
CLIP_PER_QUERY = "clip_per_query.json"
LIPSYNC_REPORT = "lipsync_eval.json"
LIPSYNC_PAIRED = "lipsync_paired.jsonl"


class NotEvaluable(ValueError):
    """This month's test items cannot measure the primary metric (e.g. no fake test video for an AUC)."""


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import rankdata

    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise NotEvaluable("lipsync: the test videos need both real and fake ones for an AUC")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def clip_evaluations(
    report_dir: Path, challenger_version: str
) -> tuple[ModelEvaluation | None, ModelEvaluation, ModelEvaluation | None]:
    """Read evaluate_clip's files.

    Args:
        report_dir: The folder holding ``clip_eval.json`` and ``clip_per_query.json``.
        challenger_version: The challenger's registry version.

    Returns:
        ``(champion, challenger, base)``: exactly one of champion and base is set, after the report's
        ``baseline_kind``.
    """
    report_dir = Path(report_dir)
    summary = json.loads((report_dir / CLIP_SUMMARY).read_text())
    paired = json.loads((report_dir / CLIP_PER_QUERY).read_text())
    queries = [str(q) for q in paired["queries"]]
    # Queries are label texts; make them unique ids if a text repeats (the two models share the order).
    ids = queries if len(set(queries)) == len(queries) else [f"{i}:{q}" for i, q in enumerate(queries)]
    kind = str(summary.get("baseline_kind", "base"))
    match = re.match(r"^champion v(\d+)$", kind)
    evals = {}
    for role, version in (("challenger", challenger_version), ("baseline", match.group(1) if match else "base")):
        evals[role] = ModelEvaluation(
            model="clip",
            version=str(version),
            primary_metric="recall_at_1",
            primary=float(summary[role]["recall_at_1"]),
            item_ids=ids,
            item_correct=[int(h) for h in paired[role]["hit_at_1"]],
            groups={str(k): float(v) for k, v in summary[role].get("query_top1_by_category", {}).items()},
        )
    if match:
        return evals["baseline"], evals["challenger"], None
    return None, evals["challenger"], evals["baseline"]


def _lipsync_groups(robustness: list[dict], role: str) -> dict[str, float]:
    return {
        f"{row['perturbation']}@{float(row['level']):g}": float(row["roc_auc"])
        for row in robustness
        if row.get("model") == role and row.get("perturbation") != "none" and row.get("roc_auc") is not None
    }


def lipsync_evaluations(
    report_dir: Path, challenger_version: str, champion_version: str | None
) -> tuple[ModelEvaluation | None, ModelEvaluation, ModelEvaluation | None]:
    """Read evaluate_lipsync's files.

    Args:
        report_dir: The folder holding ``lipsync_paired.jsonl`` and ``lipsync_eval.json``.
        challenger_version: The challenger's registry version.
        champion_version: The champion's registry version, ``None`` if there was none.

    Returns:
        ``(champion, challenger, base)``: the base is the chance-level detector when there is no champion.
    """
    report_dir = Path(report_dir)
    rows = [json.loads(line) for line in (report_dir / LIPSYNC_PAIRED).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"lipsync: no paired test videos in {report_dir / LIPSYNC_PAIRED}")
    report_path = report_dir / LIPSYNC_REPORT
    robustness = json.loads(report_path.read_text()).get("robustness", []) if report_path.is_file() else []
    ids = [str(r["video_id"]) for r in rows]
    labels = np.array([1 if r["label"] == "fake" else 0 for r in rows])

    def evaluation(role: str, version: str) -> ModelEvaluation:
        scores = np.array([float(r[f"{role}_score"]) for r in rows])
        return ModelEvaluation(
            model="lipsync",
            version=version,
            primary_metric="roc_auc",
            primary=_auc(labels, scores),
            item_ids=ids,
            item_correct=[int(bool(r[f"{role}_correct"])) for r in rows],
            item_labels=labels.tolist(),
            item_scores=scores.tolist(),
            groups=_lipsync_groups(robustness, role),
        )

    challenger = evaluation("challenger", challenger_version)
    if champion_version is not None and all("champion_score" in r for r in rows):
        return evaluation("champion", champion_version), challenger, None
    chance = ModelEvaluation(
        model="lipsync",
        version="base",
        primary_metric="roc_auc",
        primary=0.5,
        item_ids=ids,
        item_correct=(1 - labels).tolist(),
        item_labels=labels.tolist(),
        item_scores=[0.5] * len(ids),
    )
    return None, challenger, chance

"""evaluate: this month's challenger vs. the champion (or the base model) on the same test items, one task per model.

:func:`run_evaluate_clip` scores text-to-video retrieval (:mod:`~components.evaluate.clip_eval`),
:func:`run_evaluate_lipsync` the lip-sync detector with its robustness sweep (:mod:`~components.evaluate.lipsync_eval`).
Each opens its stage run (``evaluate_clip``, ``evaluate_lipsync``), fetches the registry's champion, writes the
report files the A/B gate reads, and logs the metrics and files. A month whose fine-tune stage trained nothing
passes the reason on to the gate instead (``no_challenger.json``).
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import asdict
from pathlib import Path

from components.common.champions import fetch_champion
from components.common.jsonl import json_safe
from components.common.no_challenger import pass_on_no_challenger
from components.common.stage import StageContext
from components.common.tracking import NOT_EVALUATED_TAG
from components.evaluate.clip_eval import ClipEvalReport, evaluate_clip
from components.evaluate.config import EvaluateConfig
from components.evaluate.crossval import cross_validate_lipsync
from components.evaluate.lipsync_eval import REPORT_FILE, LipsyncEvalReport, evaluate_lipsync, write_lipsync_report
from components.face_tracking.config import FaceTrackingConfig
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_lipsync.config import FinetuneLipsyncConfig

#: The HTML report of evaluate_clip inside its output folder (the task hands it to kfp as its HTML artifact).
CLIP_HTML = "clip_report.html"


def run_evaluate_clip(
    frames_dir: Path,
    challenger_dir: Path,
    out_dir: Path,
    cfg: FinetuneClipConfig,
    ctx: StageContext,
    *,
    evaluation: EvaluateConfig | None = None,
) -> ClipEvalReport | None:
    """The evaluate_clip task: the challenger vs. the champion (or the base model on the first month).

    Args:
        frames_dir: The frame_extraction Dataset (its ``test`` split is scored).
        challenger_dir: The finetune_clip Model artifact.
        out_dir: Folder for the report files (the gate reads ``clip_eval.json`` and ``clip_per_query.json``;
            ``clip_report.html`` is the page a person reads).
        cfg: The finetune_clip settings (base model, pooling and frames for the base model, device, relevance).
        ctx: The client, the registry (its champion), the state folder and model cache, the MLflow run.
        evaluation: The client's ``evaluate`` settings (confidence intervals); defaults when ``None``.

    Returns:
        The report, or ``None`` when this month has no challenger (``out_dir`` then holds the reason).
    """
    from components.finetune_clip.model import resolve_base_ref

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ctx.stage_run("evaluate_clip", {"challenger": str(challenger_dir)}) as run:
        if reason := pass_on_no_challenger(challenger_dir, out_dir):
            (out_dir / CLIP_HTML).write_text(f"<p>No challenger this month: {html.escape(reason)}</p>\n")
            return None
        Path(ctx.state_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.state_dir, prefix=".champion-") as tmp:
            champion = fetch_champion(ctx.tracking, "clip", ctx.client_id, Path(tmp) / "champion")
            if champion is not None:
                baseline: str | Path = champion[0]
                kind = f"champion v{champion[1]}"
            else:
                baseline, kind = resolve_base_ref(cfg.base_model, ctx.state_dir), "base"
            report = evaluate_clip(
                challenger_dir,
                baseline,
                frames_dir,
                out_dir,
                kind,
                cfg.frames_per_video,
                cfg.pooling,
                ctx.cache_dir,
                cfg.device,
                cfg.eval_relevance,
                evaluation,
            )
        run.log_metrics(report.as_metrics())
        run.log_artifacts(str(out_dir), "evaluate_clip")
    return report


def run_evaluate_lipsync(
    faces_dir: Path,
    challenger_dir: Path,
    out_dir: Path,
    cfg: FinetuneLipsyncConfig,
    ctx: StageContext,
    *,
    face_config: FaceTrackingConfig | None = None,
    evaluation: EvaluateConfig | None = None,
) -> LipsyncEvalReport | None:
    """The evaluate_lipsync task: the challenger vs. the registry's champion (if any), with robustness.

    Args:
        faces_dir: The face_tracking Dataset.
        challenger_dir: The finetune_lipsync Model artifact.
        out_dir: Folder for the report files (the gate reads ``lipsync_paired.jsonl`` and ``lipsync_eval.json``).
        cfg: The finetune_lipsync settings (the validation split training used, the device).
        ctx: The client, the registry (its champion), the state folder, the MLflow run.
        face_config: The client's ``face_tracking`` settings: the evidence a test video needs to be scored
            (:mod:`components.face_tracking.evidence`); default settings when ``None``.
        evaluation: The client's ``evaluate`` settings (confidence intervals, the optional k-fold estimate
            of :mod:`components.evaluate.crossval`); defaults when ``None``.

    Returns:
        The report, or ``None`` when this month has no challenger (``out_dir`` then holds the reason).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ctx.stage_run("evaluate_lipsync", {"challenger": str(challenger_dir)}) as run:
        if pass_on_no_challenger(challenger_dir, out_dir):
            return None
        Path(ctx.state_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.state_dir, prefix=".lipsync-champion-") as tmp:
            champion = fetch_champion(ctx.tracking, "lipsync", ctx.client_id, Path(tmp) / "champion")
            champion_dir = champion[0] if champion else None
            report = evaluate_lipsync(
                challenger_dir, champion_dir, faces_dir, out_dir, cfg, face_config=face_config, evaluation=evaluation
            )
        if champion is not None:
            report.champion_version = champion[1]
        if evaluation is not None and evaluation.cv_folds:
            report.cross_validation = cross_validate_lipsync(faces_dir, cfg, evaluation, ctx.state_dir, face_config)
        if champion is not None or report.cross_validation:
            write_lipsync_report(report, out_dir)
        run.log_metrics(report.as_metrics())
        run.log_dict(json_safe(asdict(report)), f"evaluate_lipsync/{REPORT_FILE}")
        for role in ("table", "plot", "paired", "fake_types"):
            if role in report.files:
                run.log_artifact(report.files[role], "evaluate_lipsync")
        not_evaluated = [
            f"fake type {t}: {row['not_evaluated']}"
            for t, row in report.challenger.test_by_fake_type.items()
            if "not_evaluated" in row
        ]
        if not_evaluated:  # the run summary shows it beside the figures
            run.set_tag(NOT_EVALUATED_TAG, "; ".join(not_evaluated))
    return report

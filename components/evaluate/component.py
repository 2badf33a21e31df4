"""Thin kfp wrappers of evaluate: one task per model, each comparing challenger and champion on the same test items."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.common.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_clip(
    config: str,
    parent_run_id: str,
    frames: Input[Dataset],
    challenger: Input[Model],
    report: Output[HTML],
    per_query: Output[Dataset],
    metrics: Output[Metrics],
):
    """Text-to-video retrieval of the challenger vs. the champion (or the base model) on the test split."""
    import shutil
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.evaluate.core import CLIP_HTML, run_evaluate_clip

    cfg, ctx = task_inputs(config, parent_run_id)
    inputs = Path(frames.path), Path(challenger.path), Path(per_query.path)
    result = run_evaluate_clip(*inputs, cfg.finetune_clip, ctx, evaluation=cfg.evaluate)
    shutil.copyfile(Path(per_query.path) / CLIP_HTML, report.path)
    if result is not None:
        log_kfp_metrics(metrics, result.as_metrics())


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_lipsync(
    config: str,
    parent_run_id: str,
    faces: Input[Dataset],
    challenger: Input[Model],
    report: Output[Dataset],
    metrics: Output[Metrics],
):
    """Challenger vs. champion on the test videos: metrics, paired outcomes (for the gate), robustness."""
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.evaluate.core import run_evaluate_lipsync

    cfg, ctx = task_inputs(config, parent_run_id)
    inputs = Path(faces.path), Path(challenger.path), Path(report.path)
    extra = {"face_config": cfg.face_tracking, "evaluation": cfg.evaluate}
    result = run_evaluate_lipsync(*inputs, cfg.finetune_lipsync, ctx, **extra)
    if result is not None:
        files = sorted(Path(p).name for p in result.files.values())
        report.metadata.update({"files": files, "champion_version": result.champion_version})
        log_kfp_metrics(metrics, result.as_metrics())

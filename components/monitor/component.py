"""Thin kfp wrapper of components.monitor.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.common.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def monitor(
    config: str,
    parent_run_id: str,
    frames: Input[Dataset],
    lipsync_evaluation: Input[Dataset],
    reports: Output[Dataset],
    summary: Output[Markdown],
    metrics: Output[Metrics],
):
    """Last month's production signals vs the month before (Evidently drift per signal), every month."""
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.monitor.core import run_monitor

    cfg, ctx = task_inputs(config, parent_run_id)
    paths = Path(frames.path), Path(lipsync_evaluation.path), Path(reports.path)
    report = run_monitor(*paths, cfg.monitor, ctx, serving=cfg.serving)
    Path(summary.path).write_text(report.to_markdown(), encoding="utf-8")
    log_kfp_metrics(metrics, report.as_metrics())

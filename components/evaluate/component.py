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
    import html
    import logging
    import shutil
    from pathlib import Path

    from components.common import tracking
    from components.common.no_challenger import pass_on_no_challenger
    from components.config import ClientConfig
    from components.evaluate.clip_eval import run_evaluate_clip

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    out = Path(per_query.path)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(cfg.tracking, parent_run_id, "evaluate_clip", {"challenger": challenger.path}):
        if reason := pass_on_no_challenger(Path(challenger.path), out):
            Path(report.path).write_text(f"<p>No challenger this month: {html.escape(reason)}</p>\n")
            return
        result = run_evaluate_clip(Path(frames.path), Path(challenger.path), out, cfg, cfg.finetune_clip)
    shutil.copyfile(result.files["clip_report.html"], report.path)
    for name, value in result.as_metrics().items():
        if value == value:  # NaN is not a valid kfp metric
            metrics.log_metric(name, value)


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
    import logging
    from pathlib import Path

    from components.common import tracking
    from components.common.no_challenger import pass_on_no_challenger
    from components.config import ClientConfig
    from components.evaluate.lipsync_eval import run_evaluate_lipsync

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    out = Path(report.path)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(cfg.tracking, parent_run_id, "evaluate_lipsync", {"challenger": challenger.path}):
        if pass_on_no_challenger(Path(challenger.path), out):
            return
        result = run_evaluate_lipsync(Path(faces.path), Path(challenger.path), out, cfg)
    report.metadata.update(
        {"files": sorted(Path(p).name for p in result.files.values()), "champion_version": result.champion_version}
    )
    for name, value in result.as_metrics().items():
        if value == value:
            metrics.log_metric(name, value)

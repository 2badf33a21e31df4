"""Thin kfp wrapper of components.feedback.core."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def feedback(config: str, parent_run_id: str, records: Output[Dataset], metrics: Output[Metrics]):
    """Last month's search feedback -> training records (labels, hard negatives); the client's review queue."""
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.feedback.core import run_feedback

    cfg, ctx = task_inputs(config, parent_run_id)
    data = run_feedback(Path(records.path), cfg.feedback, ctx, serving=cfg.serving)
    log_kfp_metrics(metrics, data.as_metrics())

"""Thin kfp wrapper of components.ingest.core."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def ingest(config: str, parent_run_id: str, manifest: Output[Dataset], metrics: Output[Metrics]):
    """List the window's uploads, validate and deduplicate them, write the manifest."""
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.ingest.core import run_ingest

    cfg, ctx = task_inputs(config, parent_run_id)
    report = run_ingest(Path(manifest.path), cfg.ingest, ctx)
    log_kfp_metrics(metrics, report.as_metrics())

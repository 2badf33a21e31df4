"""Thin kfp wrapper of components.ingest.core."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def ingest(config: str, parent_run_id: str, manifest: Output[Dataset], metrics: Output[Metrics]):
    """List the window's uploads, validate and deduplicate them, write the manifest."""
    import logging
    from datetime import date
    from pathlib import Path

    from components.common import tracking
    from components.config import ClientConfig
    from components.ingest.core import run_ingest

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    params = {"as_of": cfg.window.as_of, "window_days": cfg.window.days, "source_uri": cfg.storage.source_uri}
    with tracking.stage_run(cfg.tracking, parent_run_id, "ingest", params):
        report = run_ingest(cfg, date.fromisoformat(cfg.window.as_of), Path(manifest.path))
        counts = report.as_metrics()
        tracking.log_metrics(counts)
        tracking.log_dict_artifact({"label_problems": report.label_problems}, "ingest/label_problems.json")
    for name, value in counts.items():
        metrics.log_metric(name, value)

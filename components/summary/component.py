"""Thin kfp wrapper of components.summary.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def summary(
    config: str,
    parent_run_id: str,
    manifest: Input[Dataset],
    frames: Input[Dataset],
    faces: Input[Dataset],
    clip_gate: Input[Markdown],
    lipsync_gate: Input[Markdown],
    clip_outcome: str,
    lipsync_outcome: str,
    monitor: Input[Markdown],
    report: Output[Markdown],
):
    """Write the run summary (Markdown) and close the parent MLflow run."""
    import logging
    from pathlib import Path

    from components.config import ClientConfig
    from components.summary.core import summarize

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    outputs = {"manifest": manifest.path, "frames": frames.path, "faces": faces.path}
    decisions = [Path(clip_gate.path).read_text(), Path(lipsync_gate.path).read_text()]
    outcomes = [clip_outcome, lipsync_outcome]
    result = summarize(cfg, parent_run_id, outputs, decisions, outcomes, monitor=Path(monitor.path).read_text())
    Path(report.path).write_text(result.to_markdown())


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def finish_run(
    client_id: str,
    config_yaml: str,
    as_of: str,
    window_days: int,
    dag_run_id: str,
    status: dsl.PipelineTaskFinalStatus,
    report: Output[Markdown],
):
    """The exit handler: the run's summary whatever happened (what failed, why, what was still promoted);
    closes a failed run's parent MLflow run and gives back the client's run lease."""
    import logging
    from pathlib import Path

    from components.summary.core import finish_run as finish

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    markdown = finish(client_id, config_yaml, as_of, window_days, dag_run_id, status.state, status.error_message or "")
    Path(report.path).write_text(markdown)

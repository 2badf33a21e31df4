"""Running monthly_retrain on one machine with kfp.local (the embedded default)."""

from __future__ import annotations

import logging
from pathlib import Path

from components.common.config import ClientConfig

logger = logging.getLogger("clipsync.local")


def run_local(config: ClientConfig, as_of: str = "", window_days: int = 0) -> str:
    """Execute the whole DAG locally, each task in a subprocess of this Python environment.

    Args:
        config: The client's configuration (paths already resolved).
        as_of: End of the window (ISO date); empty for the config's value, else today (UTC).
        window_days: Window length; 0 keeps the config's value.

    Returns:
        The run summary (Markdown) followed by where the pipeline's outputs are.
    """
    from kfp import local

    from pipelines.monthly_retrain import monthly_retrain

    pipeline_root = Path(config.pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    # The config travels fully resolved (JSON is valid YAML) so every task sees the same absolute paths.
    task = monthly_retrain(
        client_id=config.client_id, config_yaml=config.to_json(), as_of=as_of, window_days=window_days
    )
    report = Path(task.output.path)
    run_dir = report.parents[1]  # {pipeline_root}/{pipeline}-{timestamp}/summary/report
    return report.read_text() + f"\nPipeline outputs: {run_dir}\n"

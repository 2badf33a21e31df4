"""Running monthly_retrain on one machine with kfp.local (the embedded default)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from components.config import ClientConfig

logger = logging.getLogger("clipsync.local")

#: Where kfp.local writes the exit handler's summary inside a run's folder.
REPORT = Path("finish-run") / "report"


class RunFailedError(RuntimeError):
    """A local DAG run failed; ``str(exc)`` is its summary (what failed, why, what was still promoted)."""


def local_pipeline():
    """monthly_retrain as kfp.local runs it: the compiled package without KFP's task retries.

    kfp.local 2.17 honours ``set_retry``: a task that fails would run again after 30, 60 and 120 s. On one
    machine that only delays a failure by minutes, since each call to the store or to MLflow already retries
    its transient faults within a bounded time; in a cluster the retries stay (a pod may be evicted).
    """
    import tempfile

    import yaml
    from kfp import components

    from pipelines.package import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        docs = list(yaml.safe_load_all(compile_pipeline(Path(tmp) / "monthly_retrain.yaml").read_text()))
    spec = docs[0]
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        for task in dag["tasks"].values():
            task.pop("retryPolicy", None)
    return components.load_component_from_text(yaml.safe_dump_all(docs))


def run_local(config: ClientConfig, as_of: str = "", window_days: int = 0) -> str:
    """Execute the whole DAG locally, each task in a subprocess of this Python environment.

    Args:
        config: The client's configuration (paths already resolved).
        as_of: End of the window (ISO date); empty for the config's value, else today (UTC).
        window_days: Window length; 0 keeps the config's value.

    Returns:
        The run summary (Markdown) followed by where the pipeline's outputs are.

    Raises:
        RunFailedError: A task failed; the message is the summary the exit handler wrote.
    """
    from kfp import local

    from components.common.lease import DRIVER_ENV
    from pipelines.monthly_retrain import PIPELINE_NAME

    pipeline = local_pipeline()
    pipeline_root = Path(config.pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(pipeline_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    # The tasks inherit this: the run lease names this process, so a run killed with it is taken over at once.
    previous = os.environ.get(DRIVER_ENV)
    os.environ[DRIVER_ENV] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        # The config travels fully resolved (JSON is valid YAML) so every task sees the same absolute paths.
        task = pipeline(client_id=config.client_id, config_yaml=config.to_json(), as_of=as_of, window_days=window_days)
    except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        new = sorted(pipeline_root / name for name in set(os.listdir(pipeline_root)) - before)
        reports = [run / REPORT for run in new if run.name.startswith(PIPELINE_NAME) and (run / REPORT).is_file()]
        title = (f"# monthly_retrain: {config.client_id},", f"# monthly_retrain: {config.client_id}:")
        ours = [r for r in reports if r.read_text().startswith(title)]  # not another client's run of the moment
        if not ours:
            raise RunFailedError(f"{exc} (the exit handler wrote no summary)") from exc
        raise RunFailedError(ours[-1].read_text() + f"\nPipeline outputs: {ours[-1].parents[1]}\n") from None
    finally:
        if previous is None:
            os.environ.pop(DRIVER_ENV, None)
        else:
            os.environ[DRIVER_ENV] = previous
    report = Path(task.output.path)
    run_dir = report.parents[1]  # {pipeline_root}/{pipeline}-{timestamp}/finish-run/report
    return report.read_text() + f"\nPipeline outputs: {run_dir}\n"

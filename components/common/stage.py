"""The shape of a stage: ``run_<stage>(inputs..., output location, its config section, ctx) -> report``.

Every ``components/<stage>/core.py`` exposes one such entry point (two for evaluate, one task per model). It takes
typed inputs (the upstream Datasets and Models as folders), where to write its output, its own frozen config
section, and a :class:`StageContext`: who the client is, where its state and stores are, the data window and the
MLflow run the stage belongs to. The entry point opens its own MLflow stage run (:meth:`StageContext.stage_run`),
logs its figures there and returns a report; the kfp wrapper in ``component.py`` only parses the task's
parameters (:func:`components.config.task_inputs`), calls it and hands the report's figures to kfp
(:func:`log_kfp_metrics`).

Tests and benchmarks run a stage without MLflow with ``track=False``: no stage run is opened and nothing is logged
or registered (the registry is still read, e.g. for the champion). Standard library only at import.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from components.common.config import StorageConfig, TrackingConfig, WindowConfig
from components.common.encryption import EncryptionConfig

#: The log format of every task (a kfp task is a process of its own).
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@dataclass(frozen=True)
class StageContext:
    """What a stage knows besides its own settings (built by :meth:`components.config.ClientConfig.context`).

    Attributes:
        client_id: The client (it names registry models and checkpoint folders).
        state_dir: Local state (checkpoints, caches of downloaded videos).
        cache_dir: Model files fetched at setup (MediaPipe) and downloaded base models.
        storage: The client's stores (its uploads, clipsync's artifacts).
        window: The data window (``as_of`` set by start_run).
        tracking: MLflow (the stage run, the registry).
        encryption: Server-side encryption of what the stage writes to MinIO / S3 (``None``: none).
        parent_run_id: The DAG run's parent MLflow run; ``""`` runs the stage as a top-level run.
        track: Open the stage run, log and register; off: nothing is written to MLflow (tests, benchmarks).
    """

    client_id: str
    state_dir: str
    cache_dir: str
    storage: StorageConfig
    window: WindowConfig
    tracking: TrackingConfig
    encryption: EncryptionConfig | None = None
    parent_run_id: str = ""
    track: bool = True

    @contextlib.contextmanager
    def stage_run(self, stage: str, params: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        """The stage's MLflow run, nested under the parent run (see :func:`components.common.tracking.stage_run`).

        Args:
            stage: The run's name: the stage, or ``<stage>_<model>`` for the per-model tasks.
            params: The stage's parameters; nested mappings (sub-configs) become dotted names.

        Yields:
            The run to log into (every call a no-op when ``track`` is off).
        """
        if not self.track:
            yield StageRun("")
            return
        from components.common import tracking

        with tracking.stage_run(self.tracking, self.parent_run_id, stage, flat_params(params or {})) as run_id:
            yield StageRun(run_id)


@dataclass(frozen=True)
class StageRun:
    """The active stage run; ``run_id`` is ``""`` (and every method does nothing) when the stage is not tracked."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numbers (non-finite ones are skipped with a warning)."""
        if self.run_id:
            from components.common import tracking

            tracking.log_metrics(metrics, step=step)

    def log_dict(self, data: dict | list, artifact_file: str) -> None:
        """Write ``data`` as the JSON artifact ``artifact_file``."""
        if self.run_id:
            from components.common import tracking

            tracking.log_dict_artifact(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file``."""
        if self.run_id:
            import mlflow

            mlflow.log_text(text, artifact_file)

    def log_artifact(self, local_file: str, artifact_path: str) -> None:
        """Copy a file into the run's artifacts under ``artifact_path``."""
        if self.run_id:
            import mlflow

            mlflow.log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        """Copy a folder's files into the run's artifacts under ``artifact_path``."""
        if self.run_id:
            import mlflow

            mlflow.log_artifacts(local_dir, artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        """Set a tag of the run."""
        if self.run_id:
            import mlflow

            mlflow.set_tag(key, value)


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` with nested mappings flattened into dotted names (``model.fps``), for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def configure_task_logging() -> None:
    """Log records of a kfp task's process to stderr with :data:`LOG_FORMAT` (INFO and up)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def log_kfp_metrics(artifact: Any, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` into a kfp ``Metrics`` output artifact (a NaN or infinite value is not a valid kfp metric)."""
    for name, value in metrics.items():
        if math.isfinite(value):
            artifact.log_metric(name, value)

"""The client-level sections of the configuration: storage, tracking, the window, pipeline_gpu.

Each is a frozen dataclass validated in ``__post_init__`` (a wrong value is refused with a message naming the
setting). The stages' own sections live beside their code, and :mod:`components.config` composes all of them into
the client's :class:`~components.config.ClientConfig`; this module imports no stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.errors import ConfigError, require

if TYPE_CHECKING:
    from datetime import date

__all__ = [
    "ConfigError",
    "DistributedConfig",
    "PipelineGpuConfig",
    "StorageConfig",
    "TrackingConfig",
    "WindowConfig",
    "default_state_dir",
]


def default_state_dir() -> Path:
    """Where local state lives: ``$CLIPSYNC_HOME`` or ``./.clipsync``."""
    return Path(os.environ.get("CLIPSYNC_HOME", ".clipsync")).resolve()


@dataclass(frozen=True)
class StorageConfig:
    """Where the client's uploads are read from and where clipsync writes its own objects.

    Attributes:
        source_uri: The client's uploads (videos under ``videos/``, label records under ``labels/``):
            a local folder or ``s3://bucket/prefix``. Read-only to the pipeline. Default:
            ``{state_dir}/buckets/{client_id}``.
        artifacts_uri: Models, indexes and query logs written by clipsync. Default:
            ``{state_dir}/artifacts/{client_id}``.
        videos_prefix: Key prefix of the videos inside ``source_uri``.
        labels_prefix: Key prefix of the label files (JSON Lines, one record per video).
        lease_hours: One run per client at a time: a run's lease (``runs/lease.json`` in ``artifacts_uri``)
            stops counting this long after the run started if it is never released, so a crashed run blocks
            the next one at most this long (a local run whose process is gone is taken over at once).
    """

    source_uri: str = ""
    artifacts_uri: str = ""
    videos_prefix: str = "videos/"
    labels_prefix: str = "labels/"
    lease_hours: float = 24.0

    def __post_init__(self) -> None:
        require(bool(self.source_uri), "storage.source_uri must be set")
        require(bool(self.artifacts_uri), "storage.artifacts_uri must be set")
        require(0 < self.lease_hours <= 24 * 31, f"storage.lease_hours must be in (0, 744], got {self.lease_hours}")
        for name in ("videos_prefix", "labels_prefix"):
            value = getattr(self, name)
            require(
                value.endswith("/") and not value.startswith("/") and ".." not in value,
                f"storage.{name} must be a relative prefix ending in '/', got {value!r}",
            )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and registry.

    Attributes:
        tracking_uri: ``sqlite:///{state_dir}/mlflow.db`` by default (no server); ``http://host:port``
            for an MLflow server.
        experiment: MLflow experiment name. Default: ``clipsync-{client_id}``.
        artifact_location: Where the experiment stores run artifacts and registered model files. Default
            with the local sqlite store: ``{state_dir}/mlartifacts``; with a server: empty (the server's
            own artifact root).
    """

    tracking_uri: str = ""
    experiment: str = ""
    artifact_location: str = ""

    def __post_init__(self) -> None:
        require(bool(self.tracking_uri), "tracking.tracking_uri must be set")
        require(bool(self.experiment), "tracking.experiment must be set")


@dataclass(frozen=True)
class WindowConfig:
    """The retrain window: videos uploaded in ``[as_of - days, as_of)``.

    Attributes:
        days: Length of the window in days.
        as_of: End of the window (ISO date, exclusive); empty means today (UTC) at run time.
    """

    days: int = 30
    as_of: str = ""

    def __post_init__(self) -> None:
        require(1 <= self.days <= 3660, f"window.days must be 1..3660, got {self.days}")
        if self.as_of:
            from datetime import date

            try:
                date.fromisoformat(self.as_of)
            except ValueError as exc:
                raise ConfigError(f"window.as_of must be an ISO date (YYYY-MM-DD), got {self.as_of!r}") from exc

    def label(self) -> str:
        """``start..end`` (ISO dates, end exclusive), or ``last-N-days`` without ``as_of`` (cards, checkpoints)."""
        from datetime import date, timedelta

        if not self.as_of:
            return f"last-{self.days}-days"
        end = date.fromisoformat(self.as_of)
        return f"{(end - timedelta(days=self.days)).isoformat()}..{end.isoformat()}"

    def end(self) -> date:
        """The window's end (exclusive): ``as_of``, or today (UTC) when it is empty."""
        from datetime import UTC, date, datetime

        return date.fromisoformat(self.as_of) if self.as_of else datetime.now(UTC).date()


TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")


@dataclass(frozen=True)
class PipelineGpuConfig:
    """Where the GPU tasks of the compiled pipeline run (read when compiling; ``kfp.local`` ignores it).

    Serving pods have their own settings (``deploy.gpu*``).

    Attributes:
        accelerator_type: The resource the tasks request (``nvidia.com/gpu``).
        accelerator_count: GPUs per task.
        node_selector: Node labels a GPU task must run on, e.g. ``{"cloud.google.com/gke-accelerator": "nvidia-l4"}``.
        tolerations: Taints of GPU nodes the tasks tolerate: mappings with ``key``, ``operator`` (``Equal`` or
            ``Exists``), ``value``, ``effect`` (``NoSchedule``, ``PreferNoSchedule``, ``NoExecute``),
            ``toleration_seconds``. Default: the usual ``nvidia.com/gpu`` taint.
        evaluate: Also run the two evaluate tasks on a GPU node (the fine-tune tasks always are).
        retries: How often a GPU task is retried (a preempted pod resumes from its checkpoint in the artifacts
            store).
        retry_backoff_s: Wait before the first retry; it doubles for each further one (capped at one hour).
    """

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    evaluate: bool = False
    retries: int = 3
    retry_backoff_s: int = 60

    def __post_init__(self) -> None:
        require(bool(self.accelerator_type), "pipeline_gpu.accelerator_type must be set")
        require(
            1 <= self.accelerator_count <= 16,
            f"pipeline_gpu.accelerator_count must be 1..16, got {self.accelerator_count}",
        )
        require(
            isinstance(self.node_selector, dict)
            and all(isinstance(k, str) and k and isinstance(v, str) for k, v in self.node_selector.items()),
            f"pipeline_gpu.node_selector must map label names to string values, got {self.node_selector!r}",
        )
        for t in self.tolerations:
            require(isinstance(t, dict), f"pipeline_gpu.tolerations: each toleration must be a mapping, got {t!r}")
            unknown = sorted(set(t) - set(TOLERATION_KEYS))
            require(
                not unknown, f"pipeline_gpu.tolerations: unknown key(s) {', '.join(unknown)} (known: {TOLERATION_KEYS})"
            )
            require(
                t.get("operator", "Equal") in ("Equal", "Exists"),
                f"pipeline_gpu.tolerations: operator must be Equal or Exists, got {t.get('operator')!r}",
            )
            require(
                t.get("effect") in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"),
                "pipeline_gpu.tolerations: effect must be NoSchedule, PreferNoSchedule or NoExecute, "
                f"got {t.get('effect')!r}",
            )
        require(isinstance(self.evaluate, bool), f"pipeline_gpu.evaluate must be a bool, got {self.evaluate!r}")
        require(0 <= self.retries <= 10, f"pipeline_gpu.retries must be 0..10, got {self.retries}")
        require(
            1 <= self.retry_backoff_s <= 3600,
            f"pipeline_gpu.retry_backoff_s must be 1..3600, got {self.retry_backoff_s}",
        )


#: How a fine-tune beyond one process is run: ``torchrun`` on this machine (the embedded default) or a Kubeflow
#: Trainer ``TrainJob`` submitted through the Kubeflow SDK (``kubernetes``).
TRAINJOB_BACKENDS = ("torchrun", "kubernetes")


@dataclass(frozen=True)
class DistributedConfig:
    """A fine-tune on more than one process: ``finetune_clip.distributed`` and ``finetune_lipsync.distributed``.

    With one node and one process per node (the default) the stage trains in its own process. Above that, the
    stage runs the Kubeflow Trainer ``TrainJob`` command (``torchrun ... -m pipelines.trainjob_entry``, see
    :mod:`components.common.trainjob`): as a ``TrainJob`` through the Kubeflow SDK's ``TrainerClient`` on the
    cluster (``backend: kubernetes``), or as that same command in a subprocess here (``backend: torchrun``).

    Attributes:
        nodes: Training nodes (pods) of the TrainJob.
        procs_per_node: Processes (``torchrun --nproc_per_node``; one per GPU) on each node.
        backend: ``torchrun`` (the command as a subprocess on this machine) or ``kubernetes`` (a TrainJob).
        runtime: The TrainingRuntime (or ClusterTrainingRuntime) the TrainJob names: ``clipsync-torch``
            (rendered into ``manifests/base`` by ``clipsync render-manifests``, in ``deploy.namespace``) or
            Kubeflow's stock ``torch-distributed``.
        namespace: Where the TrainJob is created (the runtime's namespace, where the Role of ``manifests/base``
            lets the pipeline's service account create TrainJobs); ``""``: the kube config's namespace.
        image: The trainer container image; ``""``: clipsync's train image (``components/common/images.py``).
        gpus_per_node: GPUs each node requests (``resourcesPerNode``); 0 requests none.
        timeout_s: Longest wait for the TrainJob to finish; it is deleted and the stage fails after that.
        poll_s: Seconds between status checks while waiting.
    """

    nodes: int = 1
    procs_per_node: int = 1
    backend: str = "torchrun"
    runtime: str = "clipsync-torch"
    namespace: str = ""
    image: str = ""
    gpus_per_node: int = 0
    timeout_s: int = 86400
    poll_s: int = 10

    def __post_init__(self) -> None:
        require(1 <= self.nodes <= 256, f"distributed.nodes must be 1..256, got {self.nodes}")
        require(1 <= self.procs_per_node <= 64, f"distributed.procs_per_node must be 1..64, got {self.procs_per_node}")
        require(
            self.backend in TRAINJOB_BACKENDS,
            f"distributed.backend must be one of {TRAINJOB_BACKENDS}, got {self.backend!r}",
        )
        require(
            self.backend == "kubernetes" or self.nodes == 1,
            f"distributed.nodes > 1 needs backend kubernetes (torchrun here runs one node), got {self.nodes}",
        )
        require(bool(self.runtime), "distributed.runtime must name a TrainingRuntime")
        require(0 <= self.gpus_per_node <= 16, f"distributed.gpus_per_node must be 0..16, got {self.gpus_per_node}")
        require(1 <= self.poll_s < self.timeout_s, f"distributed.poll_s must be 1..timeout_s-1, got {self.poll_s}")

    @property
    def requested(self) -> bool:
        """Whether the fine-tune runs as a TrainJob (more than one process in all)."""
        return self.nodes * self.procs_per_node > 1

"""Per-client configuration: one YAML file validated into frozen dataclasses.

Every field has a default, so an empty file (or no file) is a valid configuration for the embedded
defaults: a local folder as the client's bucket, MLflow on a local sqlite file, no server at all.
Later stages add their own section here (one dataclass each) and a field on :class:`ClientConfig`.

Paths in the defaults are relative to ``state_dir`` (``$CLIPSYNC_HOME``, else ``.clipsync`` in the
current directory) and are resolved when the config is created, so a config serialized into a kfp task
means the same thing in every task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from components.ab_gate.config import GatePolicy
from components.common.encryption import EncryptionConfig
from components.common.errors import ConfigError, require
from components.common.fleet_config import FleetConfig
from components.deploy.config import DeployConfig
from components.face_tracking.config import FaceTrackingConfig
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.frame_extraction.config import FrameExtractionConfig
from serving.config import ServingConfig

__all__ = ["ClientConfig", "ConfigError", "from_dict", "load_config"]
CLIENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}[a-z0-9]$")


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


@dataclass(frozen=True)
class IngestConfig:
    """What ingest accepts. A video outside these bounds is rejected with the bound it broke.

    Attributes:
        min_duration_s: Shortest accepted video.
        max_duration_s: Longest accepted video.
        min_side: Smallest accepted width or height in pixels.
        max_side: Largest accepted width or height in pixels.
        min_fps: Lowest accepted average frame rate.
        max_fps: Highest accepted average frame rate.
        max_size_mb: Largest accepted file.
        val_fraction: Share of videos in the validation split (by content hash).
        test_fraction: Share of videos in the test split (by content hash).
    """

    min_duration_s: float = 0.5
    max_duration_s: float = 3600.0
    min_side: int = 32
    max_side: int = 4096
    min_fps: float = 5.0
    max_fps: float = 120.0
    max_size_mb: float = 4096.0
    val_fraction: float = 0.15
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        require(
            0 < self.min_duration_s <= self.max_duration_s,
            "ingest: need 0 < min_duration_s <= max_duration_s",
        )
        require(0 < self.min_side <= self.max_side, "ingest: need 0 < min_side <= max_side")
        require(0 < self.min_fps <= self.max_fps, "ingest: need 0 < min_fps <= max_fps")
        require(self.max_size_mb > 0, "ingest.max_size_mb must be > 0")
        require(
            self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1,
            "ingest: val_fraction and test_fraction must be >= 0 and sum to less than 1",
        )


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


@dataclass(frozen=True)
class ClientConfig:
    """Everything one client's monthly run needs. Build it with :func:`load_config` or :func:`from_dict`.

    Attributes:
        client_id: Lower-case letters, digits and dashes (it names buckets, registry models and routes).
        state_dir: Local state (sqlite MLflow, pipeline root, model cache). Absolute after creation.
        pipeline_root: Where kfp writes artifacts; default ``{state_dir}/pipeline_root``.
        cache_dir: Model files fetched at setup (MediaPipe); default ``{state_dir}/cache``.
        storage: See :class:`StorageConfig`.
        tracking: See :class:`TrackingConfig`.
        window: See :class:`WindowConfig`.
        ingest: See :class:`IngestConfig`.
        frame_extraction: See :class:`components.frame_extraction.config.FrameExtractionConfig`.
        face_tracking: See :class:`components.face_tracking.config.FaceTrackingConfig`.
        finetune_clip: See :class:`components.finetune_clip.config.FinetuneClipConfig`.
        finetune_lipsync: See :class:`components.finetune_lipsync.config.FinetuneLipsyncConfig`.
        ab_gate: The promotion policy, :class:`components.ab_gate.config.GatePolicy`.
        deploy: See :class:`components.deploy.config.DeployConfig`.
        serving: See :class:`serving.config.ServingConfig`.
        pipeline_gpu: See :class:`PipelineGpuConfig`.
        encryption: Server-side encryption of what clipsync writes to MinIO / S3, see
            :class:`components.common.encryption.EncryptionConfig`.
        fleet: The client among many (namespace, schedule slot, allowed endpoints), see
            :class:`components.common.fleet_config.FleetConfig`.
    """

    client_id: str
    state_dir: str
    pipeline_root: str
    cache_dir: str
    storage: StorageConfig
    tracking: TrackingConfig
    window: WindowConfig = field(default_factory=WindowConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    frame_extraction: FrameExtractionConfig = field(default_factory=FrameExtractionConfig)
    face_tracking: FaceTrackingConfig = field(default_factory=FaceTrackingConfig)
    finetune_clip: FinetuneClipConfig = field(default_factory=FinetuneClipConfig)
    finetune_lipsync: FinetuneLipsyncConfig = field(default_factory=FinetuneLipsyncConfig)
    ab_gate: GatePolicy = field(default_factory=GatePolicy)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    pipeline_gpu: PipelineGpuConfig = field(default_factory=PipelineGpuConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def __post_init__(self) -> None:
        require(
            bool(CLIENT_ID_PATTERN.match(self.client_id)),
            f"client_id must be 2-42 lower-case letters, digits or dashes, got {self.client_id!r}",
        )
        require(bool(self.state_dir) and Path(self.state_dir).is_absolute(), "state_dir must be absolute")
        if not self.fleet.namespace:  # built directly rather than by from_dict: the client's own namespace
            object.__setattr__(self, "fleet", dataclasses.replace(self.fleet, namespace=f"clipsync-{self.client_id}"))

    def to_json(self) -> str:
        """Serialize for a kfp parameter (the inverse of :meth:`from_json`)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClientConfig:
        """Rebuild a config serialized by :meth:`to_json`."""
        return from_dict(json.loads(text))


_SECTIONS: dict[str, type] = {
    "storage": StorageConfig,
    "tracking": TrackingConfig,
    "window": WindowConfig,
    "ingest": IngestConfig,
    "frame_extraction": FrameExtractionConfig,
    "face_tracking": FaceTrackingConfig,
    "finetune_clip": FinetuneClipConfig,
    "finetune_lipsync": FinetuneLipsyncConfig,
    "ab_gate": GatePolicy,
    "deploy": DeployConfig,
    "serving": ServingConfig,
    "pipeline_gpu": PipelineGpuConfig,
    "encryption": EncryptionConfig,
    "fleet": FleetConfig,
}


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    require(not unknown, f"unknown setting(s) in [{name}]: {', '.join(unknown)}")
    coerced = {}
    for key, value in values.items():
        expected = known[key].type
        # Accept ints where floats are expected (YAML writes 1 for 1.0); refuse other type mismatches.
        if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected == "float" and isinstance(value, str):
            # YAML 1.1 reads exponents without a dot (1e-5) as strings.
            with contextlib.suppress(ValueError):
                value = float(value)
        # YAML and JSON have lists where the dataclasses hold tuples (hashable, frozen).
        if str(expected).startswith("tuple") and isinstance(value, list):
            value = tuple(value)
        type_ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, float),
            "bool": isinstance(value, bool),
        }.get(str(expected), True)
        require(type_ok, f"{name}.{key} must be {expected}, got {value!r}")
        coerced[key] = value
    return cls(**coerced)


def from_dict(data: dict[str, Any] | None) -> ClientConfig:
    """Validate a plain mapping (a parsed YAML file) into a :class:`ClientConfig`.

    Missing values take their documented defaults; derived paths are resolved against ``state_dir``.

    Args:
        data: The parsed file. ``None`` or ``{}`` gives the embedded defaults.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: On an unknown key, a wrong type or a value out of range.
    """
    data = dict(data or {})
    top_known = {f.name for f in fields(ClientConfig)}
    unknown = sorted(set(data) - top_known)
    require(not unknown, f"unknown top-level setting(s): {', '.join(unknown)}")
    client_id = data.get("client_id", "acme")
    require(isinstance(client_id, str), f"client_id must be a string, got {client_id!r}")
    require(  # before the sections: their defaults are named after it
        bool(CLIENT_ID_PATTERN.match(client_id)),
        f"client_id must be 2-42 lower-case letters, digits or dashes, got {client_id!r}",
    )
    state_dir = Path(data.get("state_dir") or default_state_dir()).expanduser().resolve()

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = data.get(name) or {}
        require(isinstance(values, dict), f"[{name}] must be a mapping, got {values!r}")
        values = dict(values)
        if name == "storage":
            values.setdefault("source_uri", str(state_dir / "buckets" / client_id))
            values.setdefault("artifacts_uri", str(state_dir / "artifacts" / client_id))
        if name == "tracking":
            values.setdefault("tracking_uri", f"sqlite:///{state_dir / 'mlflow.db'}")
            values.setdefault("experiment", f"clipsync-{client_id}")
            if values["tracking_uri"].startswith(("sqlite:", "file:")):
                values.setdefault("artifact_location", str(state_dir / "mlartifacts"))
        if name == "fleet":
            values.setdefault("namespace", f"clipsync-{client_id}")
        sections[name] = _build_section(name, cls, values)

    return ClientConfig(
        client_id=client_id,
        state_dir=str(state_dir),
        pipeline_root=str(Path(data.get("pipeline_root") or state_dir / "pipeline_root").resolve()),
        cache_dir=str(Path(data.get("cache_dir") or state_dir / "cache").resolve()),
        **sections,
    )


def load_config(path: str | Path | None = None, **overrides: Any) -> ClientConfig:
    """Read a YAML config file (or none) and apply top-level overrides such as ``client_id``.

    Args:
        path: A YAML file; ``None`` for the embedded defaults.
        **overrides: Top-level keys that replace the file's values (``None`` values are ignored).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: If the file is missing, is not a mapping, or holds an invalid value.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        require(path.is_file(), f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        require(isinstance(loaded, dict), f"config file {path} must hold a mapping at the top level")
        data = loaded
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return from_dict(data)

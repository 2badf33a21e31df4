"""The client's configuration: one YAML file validated into frozen dataclasses, one section per stage.

Every field has a default, so an empty file (or no file) is a valid configuration for the embedded defaults: a
local folder as the client's bucket, MLflow on a local sqlite file, no server at all. Each stage declares its own
section beside its code (``components/<stage>/config.py``); the client-level sections (storage, tracking, window,
pipeline_gpu) are in :mod:`components.common.config`. This module composes them into :class:`ClientConfig`: it is
the one module of ``components`` that imports every stage's settings, and nothing in ``components/common``
imports it. A stage's core takes only its own section and a :class:`~components.common.stage.StageContext`
(:meth:`ClientConfig.context`).

Paths in the defaults are relative to ``state_dir`` (``$CLIPSYNC_HOME``, else ``.clipsync`` in the current
directory) and are resolved when the config is created, so a config serialized into a kfp task means the same
thing in every task. A setting that moved is refused with its new place (each section's ``MOVED``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from components.ab_gate.config import GatePolicy
from components.common.config import (
    PipelineGpuConfig,
    StorageConfig,
    TrackingConfig,
    WindowConfig,
    default_state_dir,
)
from components.common.encryption import EncryptionConfig
from components.common.errors import ConfigError, require
from components.common.fleet_config import FleetConfig
from components.common.names import CLIENT_ID_RULE, experiment_name, is_client_id
from components.common.stage import StageContext
from components.deploy.config import DeployConfig
from components.evaluate.config import EvaluateConfig
from components.face_tracking.config import FaceTrackingConfig
from components.feedback.config import FeedbackConfig
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.frame_extraction.config import FrameExtractionConfig
from components.ingest.config import IngestConfig
from components.monitor.config import MonitorConfig
from serving.config import ServingConfig

__all__ = ["ClientConfig", "ConfigError", "from_dict", "load_config", "task_inputs"]


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
        feedback: See :class:`components.feedback.config.FeedbackConfig`.
        finetune_clip: See :class:`components.finetune_clip.config.FinetuneClipConfig`.
        finetune_lipsync: See :class:`components.finetune_lipsync.config.FinetuneLipsyncConfig`.
        evaluate: Confidence intervals and the optional cross-validation, see
            :class:`components.evaluate.config.EvaluateConfig`.
        ab_gate: The promotion policy, :class:`components.ab_gate.config.GatePolicy`.
        deploy: See :class:`components.deploy.config.DeployConfig`.
        monitor: See :class:`components.monitor.config.MonitorConfig`.
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
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    finetune_clip: FinetuneClipConfig = field(default_factory=FinetuneClipConfig)
    finetune_lipsync: FinetuneLipsyncConfig = field(default_factory=FinetuneLipsyncConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ab_gate: GatePolicy = field(default_factory=GatePolicy)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    pipeline_gpu: PipelineGpuConfig = field(default_factory=PipelineGpuConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def __post_init__(self) -> None:
        require(is_client_id(self.client_id), f"client_id must be {CLIENT_ID_RULE}, got {self.client_id!r}")
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

    def context(self, parent_run_id: str = "", track: bool = True) -> StageContext:
        """What every stage gets besides its own section (see :class:`~components.common.stage.StageContext`).

        Args:
            parent_run_id: The DAG run's parent MLflow run (``""``: a standalone, top-level stage run).
            track: Open the stage run, log and register (off for tests and benchmarks).
        """
        return StageContext(
            client_id=self.client_id,
            state_dir=self.state_dir,
            cache_dir=self.cache_dir,
            storage=self.storage,
            window=self.window,
            tracking=self.tracking,
            encryption=self.encryption,
            parent_run_id=parent_run_id,
            track=track,
        )


def task_inputs(config_json: str, parent_run_id: str) -> tuple[ClientConfig, StageContext]:
    """A kfp task's start: its process's logging, the run's config (the ``config`` parameter) and the stage context.

    Args:
        config_json: The ``config`` output of start_run (:meth:`ClientConfig.to_json`).
        parent_run_id: The ``parent_run_id`` output of start_run.
    """
    from components.common.stage import configure_task_logging

    configure_task_logging()
    config = ClientConfig.from_json(config_json)
    return config, config.context(parent_run_id)


_SECTIONS: dict[str, type] = {
    "storage": StorageConfig,
    "tracking": TrackingConfig,
    "window": WindowConfig,
    "ingest": IngestConfig,
    "frame_extraction": FrameExtractionConfig,
    "face_tracking": FaceTrackingConfig,
    "feedback": FeedbackConfig,
    "finetune_clip": FinetuneClipConfig,
    "finetune_lipsync": FinetuneLipsyncConfig,
    "evaluate": EvaluateConfig,
    "ab_gate": GatePolicy,
    "deploy": DeployConfig,
    "monitor": MonitorConfig,
    "serving": ServingConfig,
    "pipeline_gpu": PipelineGpuConfig,
    "encryption": EncryptionConfig,
    "fleet": FleetConfig,
}


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    """Build the frozen dataclass ``cls`` of section ``name`` (``a.b`` for a sub-config) from a parsed mapping."""
    known = {f.name: f for f in fields(cls)}
    moved = getattr(cls, "MOVED", {})
    for key in sorted(set(values) & set(moved)):
        raise ConfigError(f"setting {name}.{key} has moved: use {moved[key]}")
    unknown = sorted(set(values) - set(known))
    require(not unknown, f"unknown setting(s) in [{name}]: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    coerced = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]):  # a sub-config, e.g. finetune_lipsync.model
            require(isinstance(value, dict), f"[{name}.{key}] must be a mapping, got {value!r}")
            coerced[key] = _build_section(f"{name}.{key}", hints[key], value)
            continue
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
    # before the sections: their defaults are named after it
    require(is_client_id(client_id), f"client_id must be {CLIENT_ID_RULE}, got {client_id!r}")
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
            values.setdefault("experiment", experiment_name(client_id))
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

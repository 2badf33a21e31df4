"""The model repository of the server: which folder a model name means, checked, loaded and swapped in.

A name is looked up, in order, in ``champions.json`` (what local deploy records), in the models given at start
(``--load NAME=DIR``, ``--model_name/--model_dir``), and under the repository folder (``--repository_dir``:
KServe's model agent puts each ``TrainedModel`` in ``/mnt/models/<name>/`` and then calls
``POST /v2/repository/models/<name>/load``). Before loading, the folder is checked against its ``release.json``
(every file present with its SHA-256) and against the server (its kind; a CLIP adapter's base must be the base
this server shares). A new version is loaded beside the one answering and swapped in; the old one is stopped
afterwards. Unloading drops the model (the shared base stays).

Errors: an unknown name is ``ModelNotFound`` (HTTP 404), a bad folder or name is :class:`ModelFolderError`
(HTTP 400); both name the model and the file, and the other models keep serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.config import PREDICTOR_KINDS
from serving.folder_error import ModelFolderError
from serving.kserve_adapter import ModelNotFound, ModelRepository
from serving.release import ReleaseError, verify_release

logger = logging.getLogger("clipsync.serving")

#: Model names: what KServe allows for a TrainedModel, and nothing that could leave the repository folder.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
#: Files a published model folder of each kind cannot be served without.
REQUIRED_FILES = {"clip-search": ("card.json",), "lipsync": ("config.json", "model.safetensors")}


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its name on the server, its kind, its folder and registry version."""

    name: str
    kind: str
    path: str
    version: str = ""


def check_name(name: str) -> str:
    """Refuse names that are not DNS-like (``..``, slashes, upper case) with a 400."""
    if not NAME_PATTERN.match(name or "") or ".." in name:
        raise ModelFolderError(f"invalid model name {name!r}: lower-case letters, digits, '.', '_' and '-' only")
    return name


def detect_kind(path: str | Path, name: str = "") -> str:
    """``lipsync`` for a lip-sync model folder (config.json with ``window_s``), else ``clip-search``."""
    cfg = Path(path) / "config.json"
    if cfg.is_file() and not (Path(path) / "card.json").is_file():
        with contextlib.suppress(ValueError):
            if "window_s" in json.loads(cfg.read_text()):
                return "lipsync"
    if name.startswith("lipsync"):
        return "lipsync"
    return "clip-search"


def check_folder(spec: ModelSpec, require_release: bool) -> ModelSpec:
    """Verify a model folder before loading it; returns the spec with the released version.

    Raises:
        ModelFolderError: Naming the folder or file: not a folder, a required file missing, ``release.json``
            missing (when required), released under another name, a file missing or with another SHA-256.
    """
    folder = Path(spec.path)
    if not folder.is_dir():
        raise ModelFolderError(f"{spec.name}: model folder {folder} does not exist")
    try:
        release = verify_release(folder, spec.name, required=require_release)
    except ReleaseError as exc:
        raise ModelFolderError(str(exc)) from None
    if release is None:
        return spec  # an unpublished local folder (``--load``, ``--clip-dir``): the predictor's own errors apply
    for rel in REQUIRED_FILES[spec.kind]:
        if not (folder / rel).is_file():
            raise ModelFolderError(f"{spec.name}: {spec.kind} model folder {folder} has no {rel}")
    if spec.version and spec.version != release.version:
        raise ModelFolderError(
            f"{spec.name}: {folder} holds version {release.version}, but version {spec.version} was expected"
        )
    return replace(spec, version=release.version)


class ModelFactory:
    """Builds predictors with the shared pieces (CLIP backbones, query log, feedback log, configs)."""

    def __init__(
        self,
        settings: Any,
        cache_dir: str | Path | None = None,
        query_log: Any = None,
        frame_config: Any = None,
        face_config: Any = None,
        base_model: str | None = None,
        feedback_log: Any = None,
    ) -> None:
        from serving.clip_backbones import ClipBackbones

        self.settings = settings
        self.cache_dir = cache_dir
        self.query_log = query_log
        self.feedback_log = feedback_log
        self.frame_config = frame_config
        self.face_config = face_config
        self.backbones = ClipBackbones(cache_dir, base_model, settings.device)

    def create(self, spec: ModelSpec) -> Any:
        if spec.kind == "clip-search":
            from serving.clip_search import ClipSearchModel

            return ClipSearchModel(
                spec.name, spec.path, self.settings, self.backbones, self.query_log, spec.version, self.feedback_log
            )
        if spec.kind == "lipsync":
            from serving.lipsync import LipSyncModel

            return LipSyncModel(
                spec.name, spec.path, self.settings, self.frame_config, self.face_config, self.cache_dir, spec.version
            )
        raise ValueError(f"unknown predictor kind {spec.kind!r}; expected one of {PREDICTOR_KINDS}")


class ClipsyncRepository(ModelRepository):
    """Model repository: ``load(name)`` (re)loads ``name`` from champions.json, the start specs or the folder.

    Args:
        factory: Builds the predictors.
        specs: Models given at start, by name.
        champions: ``champions.json`` re-read on every load (local deploy writes it).
        models_dir: The repository folder (``/mnt/models`` with KServe's model agent): ``<name>/`` per model.
        kind: The one predictor kind of this server (a KServe runtime): a folder of the other kind is refused;
            ``None``: any.
        require_release: Refuse folders without ``release.json`` (in a cluster every folder is published).
    """

    def __init__(
        self,
        factory: ModelFactory,
        specs: dict[str, ModelSpec] | None = None,
        champions: Path | None = None,
        models_dir: Path | None = None,
        kind: str | None = None,
        require_release: bool = False,
    ) -> None:
        super().__init__(models_dir=str(models_dir or "/nonexistent"))
        self.factory = factory
        self.specs = dict(specs or {})
        self.champions = champions
        self.repository_dir = Path(models_dir) if models_dir else None
        self.kind = kind
        self.require_release = require_release
        self.load_errors: dict[str, str] = {}  # name -> why its last load failed (until it loads or is unloaded)
        self._load_lock = threading.Lock()

    def resolve(self, name: str) -> ModelSpec:
        """The spec of ``name`` (see the module doc for the lookup order).

        Raises:
            ModelFolderError: If the name is not a valid model name.
            ModelNotFound: If no source knows it.
        """
        check_name(name)
        if self.champions is not None and self.champions.is_file():
            entry = json.loads(self.champions.read_text()).get(name)
            if entry:
                path = entry["path"]
                return ModelSpec(name, detect_kind(path, name), path, str(entry.get("version", "")))
        if name in self.specs:
            return self.specs[name]
        if self.repository_dir is not None and (self.repository_dir / name).is_dir():
            path = self.repository_dir / name
            return ModelSpec(name, detect_kind(path, name), str(path))
        raise ModelNotFound(name)

    def load(self, name: str) -> bool:
        """Check and load ``name``, swapping it in for a version already loaded (which is then stopped)."""
        try:
            spec = self.resolve(name)
            if self.kind is not None and spec.kind != self.kind:
                raise ModelFolderError(f"{name} is a {spec.kind} model; this server serves {self.kind} models")
            spec = check_folder(spec, self.require_release)
            with self._load_lock:
                model = self.factory.create(spec)
                model.load()
                old = self.models.get(name)
                self.update(model, name)
                self.specs[name] = spec
                if old is not None and old is not model:
                    old.stop()
        except ModelNotFound:
            raise
        except Exception as exc:
            if NAME_PATTERN.match(name or ""):
                self.load_errors[name] = str(exc) or type(exc).__name__
            raise
        self.load_errors.pop(name, None)
        logger.info("model %s loaded (%s v%s from %s)", name, spec.kind, spec.version or "-", spec.path)
        return model.ready

    def unload(self, name: str) -> None:
        self.load_errors.pop(name, None)
        super().unload(name)

    def index(self) -> list[dict[str, str]]:
        """The repository index (Triton's model repository extension): every loaded model with its version, and
        every model whose last load failed, with the reason (what KServe's model agent only logs)."""
        rows = {
            name: {"name": name, "version": str(getattr(m, "version", "") or ""), "state": "READY", "reason": ""}
            for name, m in self.models.items()
        }
        for name, reason in self.load_errors.items():
            row = rows.setdefault(name, {"name": name, "version": "", "state": "UNAVAILABLE", "reason": ""})
            row["reason"] = f"last load failed: {reason}"
        return sorted(rows.values(), key=lambda r: r["name"])

    def load_present(self) -> list[str]:
        """Load every model folder already in the repository folder (a restarted pod); returns the loaded names.

        A folder that fails is logged and skipped: the others are served.
        """
        loaded = []
        if self.repository_dir is None or not self.repository_dir.is_dir():
            return loaded
        for folder in sorted(p for p in self.repository_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                self.load(folder.name)
                loaded.append(folder.name)
            except Exception as exc:
                logger.error("model %s in %s not loaded: %s", folder.name, self.repository_dir, exc)
        return loaded

"""deploy: serve a version, check that the server answers with it, then move the registry aliases.

One transaction per model (:func:`deploy_model`, :func:`rollback_model`):

1. prepare the version's folder (the registry's files, the CLIP search index, ``release.json`` with every file's
   SHA-256) and put it where the target reads it;
2. make the target serve it and probe it until it answers with that version (``versions`` in the V2 model
   metadata): the local model server (or an in-process instance of it when none runs, see
   :mod:`components.deploy.local`), or KServe (a TrainedModel on the pool's InferenceService, or a per-client
   InferenceService with an optional canary step, see :mod:`components.deploy.kserve`);
3. move ``champion`` (and ``previous``) in the registry.

A failure at step 1 or 2 leaves everything as it was; a failure at step 3 (the registry unreachable, say) puts
the former version back into serving (and the local ``champions.json`` back) before the error is raised. So
what is served, ``champions.json`` and the ``champion`` alias agree after any failure.

Registry model names are ``{model}-{client}`` (``clip-acme``, ``lipsync-acme``): also the model's name on the
server, the TrainedModel's name and a per-client InferenceService's name.

Why this file is long: one deploy transaction and its rollback, with the stage's two
entry points; the targets (local, KServe), the endpoint and the manifests are in their own modules.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.champions import CHAMPION, PREVIOUS
from components.common.config import TrackingConfig
from components.common.names import registered_name
from components.common.stage import StageContext
from components.deploy.config import DeployConfig
from components.deploy.errors import DeployError

if TYPE_CHECKING:
    from components.ab_gate.decision import Decision
    from serving.config import ServingConfig

logger = logging.getLogger("clipsync.deploy")

__all__ = ["DeployError", "DeployResult", "Promotion", "deploy_model", "rollback_model", "run_deploy", "run_keep"]

#: model (registry / gate name) -> predictor (serving name)
PREDICTOR_OF = {"clip": "clip-search", "lipsync": "lipsync"}
#: Where the predictor container finds the files KServe's storage initializer / model agent downloaded.
MODEL_DIR = "/mnt/models"
#: The predictor entry point of the serve image (serving/ provides it) and its ports.
SERVER_MODULE = "serving.server"
HTTP_PORT = 8080
GRPC_PORT = 8081
#: KServe's model agent loads and unloads TrainedModels at http://localhost:8080 (hard-coded in kserve's
#: pkg/agent/puller.go, no token): on a multi-model runtime that port is the loopback-only agent listener and
#: the clients' REST port, declared as the container's port, is POOL_HTTP_PORT.
AGENT_PORT = 8080
POOL_HTTP_PORT = 8082


@dataclass(frozen=True)
class Promotion:
    """The registry aliases after :func:`set_champion`.

    Attributes:
        name: Registered model name.
        champion: Version the ``champion`` alias now names.
        previous: Version the ``previous`` alias now names (``None``: no such alias).
        changed: False when the version already was the champion (nothing moved).
        replaced: The version that was champion before (``None`` on the first promotion).
    """

    name: str
    champion: str
    previous: str | None
    changed: bool
    replaced: str | None = None


@dataclass(frozen=True)
class DeployResult:
    """What :func:`deploy_model` or :func:`rollback_model` did.

    Attributes:
        model: ``clip`` or ``lipsync``.
        name: Registered model name.
        version: Version now serving and champion.
        target: ``local`` or ``kserve``.
        serving: ``loaded`` (the local server serves it), ``verified`` (no local server ran: an in-process
            instance of it loaded the version and answered with it; the next ``clipsync serve`` serves it),
            ``ready`` (KServe answers with it).
        location: The storage URI KServe reads, or the local model folder.
        promotion: The aliases afterwards.
        action: ``deploy`` or ``rollback``.
    """

    model: str
    name: str
    version: str
    target: str
    serving: str
    location: str
    promotion: Promotion
    action: str = "deploy"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return asdict(self)

    def to_markdown(self) -> str:
        """One line for the run summary (or the ``rollback`` command)."""
        p = self.promotion
        where = f"{self.serving} on {self.target} ({self.location})"
        if self.action == "rollback":
            was = f"was v{p.replaced}" if p.replaced else "no champion before"
            again = f"; roll forward with --to-version {p.replaced}" if p.replaced else ""
            return (
                f"- rollback {self.model}: {self.name} now serves v{self.version} ({was}), {where}; "
                f"champion -> v{p.champion}, alias previous removed{again}\n"
            )
        before = f"previous: v{p.previous}" if p.previous else "first champion"
        moved = f"champion -> v{p.champion} ({before})" if p.changed else f"champion stays v{p.champion}"
        return f"- deploy {self.model}: {self.name} v{self.version} {where}; {moved}\n"


def storage_uri_for(cfg: DeployConfig, client_id: str, name: str, version: str) -> str:
    """Where a version's files are published for KServe: ``{prefix}/{name}/v{version}``."""
    return f"{cfg.storage_uri_prefix.replace('{client}', client_id)}/{name}/v{version}"


# ----------------------------------------------------------------------------------------------- registry


def _registry(tracking: TrackingConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri, registry_uri=tracking.tracking_uri)


def _set_alias(client: Any, name: str, alias: str, version: str | None) -> None:
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def set_champion(tracking: TrackingConfig, name: str, version: str, previous: str | None) -> Promotion:
    """Point ``champion`` at ``version`` and ``previous`` at ``previous`` (``None`` removes that alias).

    MLflow has no transaction over two aliases, so ``previous`` is written first and ``champion`` last; when the
    ``champion`` write fails, ``previous`` is put back (best effort) and the error is raised: ``champion`` never
    names a version that is not served. Making the current champion champion again moves nothing.

    Raises:
        mlflow.exceptions.MlflowException: If the version does not exist or the registry refused.
        Exception: Whatever the MLflow client raises when the registry cannot be reached.
    """
    from components.common import tracking as tr

    client = _registry(tracking)
    version = str(version)
    client.get_model_version(name, version)  # raises if missing, before anything moves
    current = tr.get_version_by_alias(tracking, name, CHAMPION)
    old_previous = tr.get_version_by_alias(tracking, name, PREVIOUS)
    if current == version:
        logger.info("%s v%s already is the champion", name, version)
        return Promotion(name, version, old_previous, changed=False, replaced=current)
    if previous != old_previous:
        _set_alias(client, name, PREVIOUS, previous)
    try:
        client.set_registered_model_alias(name, CHAMPION, version)
    except Exception:
        if previous != old_previous:
            try:
                _set_alias(client, name, PREVIOUS, old_previous)
            except Exception as undo_exc:  # the registry is gone: previous is wrong until the next promotion
                logger.error("%s: could not put alias previous back to v%s: %s", name, old_previous, undo_exc)
        raise
    logger.info("%s: champion v%s -> v%s (previous: v%s)", name, current, version, previous)
    return Promotion(name, version, previous, changed=True, replaced=current)


def promote(tracking: TrackingConfig, name: str, version: str) -> Promotion:
    """Make ``version`` the champion and remember the one it replaces as ``previous``."""
    from components.common import tracking as tr

    current = tr.get_version_by_alias(tracking, name, CHAMPION)
    return set_champion(tracking, name, version, current if current != str(version) else None)


# ----------------------------------------------------------------------------------------------- publish


def _prepare_folder(
    tracking: TrackingConfig, name: str, version: str, folder: Path, prepare: Callable[[Path], None] | None
) -> Path:
    """The registry's files of ``version`` in ``folder``, the serving additions, then ``release.json``."""
    from components.common import tracking as tr
    from serving.release import write_release

    tr.download_version(tracking, name, version, folder)
    if prepare is not None:
        prepare(folder)
    write_release(folder, name, version)
    return folder


def publish_version(
    tracking: TrackingConfig,
    name: str,
    version: str,
    storage_uri: str,
    prepare: Callable[[Path], None] | None = None,
    encryption: Any = None,
) -> str:
    """Copy a version's folder (with ``release.json``) to ``storage_uri`` where KServe reads it.

    Writes through :mod:`components.common.storage`: ``s3://bucket/prefix`` with the ``MINIO_*`` credentials
    of the environment (the bucket must exist), or an absolute path for a local folder. ``release.json`` is
    written last, so a folder that has one is complete: it is then reused as it is (a retried deploy, a rollback
    to a version published before, with the search index built for it then).

    Args:
        tracking: Where the registry lives.
        name: Registered model name.
        version: Version number.
        storage_uri: Target from :func:`storage_uri_for`.
        prepare: Adds serving files to the downloaded folder before upload (the CLIP search index).

    Returns:
        ``storage_uri``.

    Raises:
        DeployError: If the store cannot be opened or written (missing credentials, no bucket...).
    """
    import json

    from components.common.storage import StorageError, open_store
    from serving.release import RELEASE_FILE

    if not storage_uri.startswith(("s3://", "/")):
        raise DeployError(f"cannot publish to {storage_uri!r}: only s3:// URIs and absolute paths")
    try:
        # KServe's storage initializer and model agent read these files: no SSE-C (EncryptionConfig.for_kserve)
        store = open_store(storage_uri, encryption.for_kserve() if encryption is not None else None)
        if store.exists(RELEASE_FILE):
            published = json.loads(store.get_bytes(RELEASE_FILE))
            if (published.get("name"), str(published.get("version"))) == (name, str(version)):
                logger.info("%s v%s already published at %s", name, version, storage_uri)
                return storage_uri
        with tempfile.TemporaryDirectory(prefix="clipsync-publish-") as tmp:
            files = _prepare_folder(tracking, name, version, Path(tmp) / "model", prepare)
            paths = sorted((p for p in files.rglob("*") if p.is_file()), key=lambda p: p.name == RELEASE_FILE)
            for path in paths:
                store.put_file(path.relative_to(files).as_posix(), path)
    except (StorageError, ValueError) as exc:
        raise DeployError(f"cannot publish {name} v{version} to {storage_uri}: {exc}") from exc
    logger.info("published %s v%s to %s", name, version, storage_uri)
    return storage_uri


# ----------------------------------------------------------------------------------------------- the transaction


def _serve(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    version: str,
    cfg: DeployConfig,
    api: Any,
    prepare: Callable[[Path], None] | None,
    serving: Any,
    cache_dir: Any,
    encryption: Any = None,
) -> tuple[str, str, Callable[[], None]]:
    """Steps 1 and 2: the version served and answering; returns (serving, location, undo)."""
    name = registered_name(model, client_id)
    predictor = PREDICTOR_OF[model]
    if cfg.target == "kserve":
        from components.deploy import kserve
        from components.deploy.endpoint import probe_token

        token = probe_token(serving)
        uri = publish_version(
            tracking, name, version, storage_uri_for(cfg, client_id, name, version), prepare, encryption
        )
        api = api if api is not None else kserve.kserve_client()
        if cfg.kserve_mode == "multi-model":
            undo = kserve.rollout_trained_model(api, name, uri, version, cfg, predictor, token)
        else:
            undo = kserve.rollout_inference_service(api, name, uri, version, cfg, predictor, token)
        return "ready", uri, undo
    from components.deploy.local import rollout_local

    version_dir = Path(state_dir) / "serving" / "models" / name / f"v{version}"
    _prepare_folder(tracking, name, version, version_dir, prepare)
    local = rollout_local(
        name, version, version_dir, Path(state_dir), cfg.local_server_url, cfg.ready_timeout_s, serving, cache_dir
    )
    return local.serving, local.location, local.undo


def _transaction(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    version: str,
    previous: Callable[[str | None], str | None],
    cfg: DeployConfig,
    action: str,
    **serve_kwargs: Any,
) -> DeployResult:
    from components.common import tracking as tr

    name = registered_name(model, client_id)
    try:
        serving, location, undo = _serve(tracking, client_id, state_dir, model, version, cfg, **serve_kwargs)
    except DeployError:
        raise
    except Exception as exc:  # the registry, the store or the index build failed before anything was served
        raise DeployError(f"{name} v{version} could not be served: {type(exc).__name__}: {exc}") from exc
    try:
        current = tr.get_version_by_alias(tracking, name, CHAMPION)
        promotion = set_champion(tracking, name, version, previous(current))
    except Exception as exc:
        undo()
        raise DeployError(
            f"{name} v{version} was served, but the registry aliases could not be moved "
            f"({type(exc).__name__}: {exc}); the former version serves again and the aliases are unchanged"
        ) from exc
    return DeployResult(model, name, version, cfg.target, serving, location, promotion, action)


def deploy_model(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    version: str,
    cfg: DeployConfig,
    api: Any = None,
    prepare: Callable[[Path], None] | None = None,
    serving: Any = None,
    cache_dir: Any = None,
    encryption: Any = None,
) -> DeployResult:
    """Serve ``version`` of a client's model, check it answers, then make it the champion.

    Args:
        tracking: Where the registry lives.
        client_id: The client.
        state_dir: The client's state folder (local target).
        model: ``clip`` or ``lipsync``.
        version: The registry version the gate promoted.
        cfg: The deploy settings.
        api: A ``kserve.KServeClient`` for the kserve target (default: in-cluster).
        prepare: Adds serving files to the version's folder before it is served (the CLIP search index,
            so a new adapter always comes with its own index).
        serving: The client's ``serving`` settings (bearer token variable for the probes).
        cache_dir: MediaPipe face models (a lip-sync version checked in-process).
        encryption: The client's ``encryption`` settings for the published folder (kserve target).

    Returns:
        What was done.

    Raises:
        DeployError: If any step failed; what is served and the aliases are as before.
    """
    return _transaction(
        tracking,
        client_id,
        state_dir,
        model,
        str(version),
        lambda current: current if current != str(version) else None,
        cfg,
        "deploy",
        api=api,
        prepare=prepare,
        serving=serving,
        cache_dir=cache_dir,
        encryption=encryption,
    )


def rollback_model(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    cfg: DeployConfig,
    api: Any = None,
    to_version: str | None = None,
    prepare: Callable[[Path], None] | None = None,
    serving: Any = None,
    cache_dir: Any = None,
    encryption: Any = None,
) -> DeployResult:
    """Serve an earlier version again (``to_version``, default the ``previous`` alias), then make it champion.

    The ``previous`` alias is removed afterwards: a second rollback does not silently put the newer version
    back (it needs ``to_version``, and the result says which one to give to roll forward).

    Raises:
        DeployError: If there is nothing to roll back to, the version already serves, or a step failed
            (what is served and the aliases are then as before).
    """
    from components.common import tracking as tr

    name = registered_name(model, client_id)
    current = tr.get_version_by_alias(tracking, name, CHAMPION)
    target = str(to_version) if to_version else tr.get_version_by_alias(tracking, name, PREVIOUS)
    if target is None:
        raise DeployError(f"{name} has no alias {PREVIOUS!r} (nothing to roll back to): name one with --to-version")
    if target == current:
        raise DeployError(f"{name} v{target} already is the champion: nothing to roll back")
    return _transaction(
        tracking,
        client_id,
        state_dir,
        model,
        target,
        lambda _current: None,
        cfg,
        "rollback",
        api=api,
        prepare=prepare,
        serving=serving,
        cache_dir=cache_dir,
        encryption=encryption,
    )


# ----------------------------------------------------------------------------------------------- the stage


def run_deploy(
    model: str,
    version: str,
    frames_dir: Path,
    cfg: DeployConfig,
    ctx: StageContext,
    *,
    serving: ServingConfig,
    relevance: str = "category",
) -> DeployResult:
    """The deploy task of one model (the gate said promote): :func:`deploy_model` in the stage run ``deploy_<model>``.

    A CLIP adapter is served with the search index of the client's library, built here by that adapter.

    Args:
        model: ``clip`` or ``lipsync``.
        version: The registry version the gate promoted.
        frames_dir: The frame_extraction Dataset (the library the CLIP search index covers).
        cfg: The deploy settings.
        ctx: The client, its state folder and model cache, the registry, the MLflow run.
        serving: The client's ``serving`` settings (index settings, the probes' bearer token).
        relevance: What counts as a right answer when the index's confidence is calibrated
            (``finetune_clip.eval_relevance``).

    Raises:
        DeployError: If any step failed; what is served and the aliases are as before.
    """
    with ctx.stage_run(f"deploy_{model}", {"model": model, "version": version, "target": cfg.target}) as run:
        prepare = None
        if model == "clip":
            from serving.config import IndexSettings
            from serving.index_build import build_index

            def prepare(model_dir: Path) -> None:
                settings = IndexSettings.of(serving)
                built = build_index(
                    model_dir, Path(frames_dir), settings=settings, relevance=relevance, cache_dir=ctx.cache_dir
                )
                run.log_dict(built, "deploy/clip_index.json")

        result = deploy_model(
            ctx.tracking,
            ctx.client_id,
            Path(ctx.state_dir),
            model,
            version,
            cfg,
            prepare=prepare,
            serving=serving,
            cache_dir=ctx.cache_dir,
            encryption=ctx.encryption,
        )
        run.log_dict(result.to_dict(), f"deploy/{model}.json")
        changed = float(result.promotion.changed)
        run.log_metrics({f"deploy_{model}_version": float(version), f"deploy_{model}_changed": changed})
    return result


def run_keep(model: str, decision: Decision, ctx: StageContext) -> str:
    """The keep task of one model (the gate kept the champion): record that outcome, a normal month; change nothing.

    Returns:
        One Markdown line for the run summary.
    """
    from components.common.champions import champion_version

    params = {"model": model, "champion": decision.baseline_version, "challenger": decision.challenger_version}
    with ctx.stage_run(f"deploy_{model}", params) as run:
        run.log_metrics({f"deploy_{model}_changed": 0.0})
    reason = decision.reasons[0] if decision.reasons else "gate said keep"
    champion = decision.baseline_version if decision.baseline == "champion" else ""
    champion = champion or champion_version(ctx.tracking, model, ctx.client_id)
    staying = f"champion v{champion} serves" if champion else "no champion yet, nothing serves"
    what = f"{decision.challenger_label} not deployed" if decision.challenger_version else "nothing to deploy"
    return f"- deploy {model}: {what}, {staying} ({reason})\n"

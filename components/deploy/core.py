"""deploy: roll a promoted model version out to serving, then move the registry alias ``champion``.

The order is the safety rule of this stage: :func:`deploy_model` first makes the new version serve (a KServe
InferenceService that became Ready, or the local model server that loaded it) and only then calls
:func:`promote`. A failed rollout raises :class:`DeployError` before any alias moves, so the registry's
``champion`` keeps naming what is actually serving.

Registry model names are ``{model}-{client}`` (``clip-acme``, ``lipsync-acme``); InferenceServices are named
``{predictor}-{client}`` (``clip-search-acme``, ``lipsync-acme``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.common.config import TrackingConfig
from components.deploy.config import PREDICTORS, DeployConfig

logger = logging.getLogger("clipsync.deploy")

#: model (registry / gate name) -> predictor (serving name)
PREDICTOR_OF = {"clip": "clip-search", "lipsync": "lipsync"}
CHAMPION = "champion"
PREVIOUS = "previous"
KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
#: Where the predictor container finds the files KServe's storage initializer downloaded.
MODEL_DIR = "/mnt/models"
#: The predictor entry point of the serve image (serving/ provides it) and its HTTP port.
SERVER_MODULE = "serving.server"
HTTP_PORT = 8080
PART_OF = {"app.kubernetes.io/part-of": "clipsync"}


class DeployError(RuntimeError):
    """The new version could not be served; the champion alias was not moved."""


@dataclass(frozen=True)
class Promotion:
    """The registry aliases after :func:`promote` or :func:`rollback`.

    Attributes:
        name: Registered model name.
        champion: Version the ``champion`` alias now names.
        previous: Version the ``previous`` alias now names (``None`` on the first promotion).
        changed: False when the version already was the champion (nothing moved).
    """

    name: str
    champion: str
    previous: str | None
    changed: bool


@dataclass(frozen=True)
class DeployResult:
    """What :func:`deploy_model` or :func:`rollback_model` did.

    Attributes:
        model: ``clip`` or ``lipsync``.
        name: Registered model name.
        version: Version now serving and champion.
        target: ``local`` or ``kserve``.
        serving: ``ready`` (InferenceService Ready), ``loaded`` (local server loaded it) or ``recorded``
            (no local server ran; the next ``clipsync serve`` loads it).
        location: The storage URI the InferenceService reads, or the local model folder.
        promotion: The aliases afterwards.
    """

    model: str
    name: str
    version: str
    target: str
    serving: str
    location: str
    promotion: Promotion

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return asdict(self)

    def to_markdown(self) -> str:
        """One line for the run summary."""
        p = self.promotion
        before = f"previous: v{p.previous}" if p.previous else "first champion"
        moved = f"champion -> v{p.champion} ({before})" if p.changed else f"champion stays v{p.champion}"
        where = f"{self.serving} on {self.target} ({self.location})"
        return f"- deploy {self.model}: {self.name} v{self.version} {where}; {moved}\n"


def registered_name(model: str, client_id: str) -> str:
    """The registry name of a client's model (``clip-acme``)."""
    if model not in PREDICTOR_OF:
        raise ValueError(f"model must be one of {', '.join(PREDICTOR_OF)}, got {model!r}")
    return f"{model}-{client_id}"


def isvc_name(predictor: str, client_id: str) -> str:
    """The InferenceService name of a client's predictor (``clip-search-acme``)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
    return f"{predictor}-{client_id}"


def storage_uri_for(cfg: DeployConfig, client_id: str, name: str, version: str) -> str:
    """Where a version's files are published for KServe: ``{prefix}/{name}/v{version}``."""
    return f"{cfg.storage_uri_prefix.replace('{client}', client_id)}/{name}/v{version}"


# ----------------------------------------------------------------------------------------------- registry


def _registry(tracking: TrackingConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri, registry_uri=tracking.tracking_uri)


def promote(tracking: TrackingConfig, name: str, version: str) -> Promotion:
    """Make ``version`` the champion and remember the one it replaces as ``previous``.

    MLflow has no transaction over two aliases, so the calls are ordered: (1) check the version exists,
    (2) point ``previous`` at the current champion, (3) point ``champion`` at ``version``. Each alias update
    is a single atomic write in the registry, and ``champion`` is written last: a failure at any point leaves
    ``champion`` unchanged (at worst ``previous`` already names the current champion, which is what it will
    name after a retry anyway). Promoting the current champion again moves nothing.

    Args:
        tracking: Where the registry lives.
        name: Registered model name.
        version: The version to promote.

    Returns:
        The aliases afterwards.

    Raises:
        mlflow.exceptions.MlflowException: If the version does not exist.
    """
    from components.common import tracking as tr

    client = _registry(tracking)
    version = str(version)
    client.get_model_version(name, version)  # raises if missing, before anything moves
    current = tr.get_version_by_alias(tracking, name, CHAMPION)
    if current == version:
        logger.info("%s v%s already is the champion", name, version)
        return Promotion(name, version, tr.get_version_by_alias(tracking, name, PREVIOUS), changed=False)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("%s: champion v%s -> v%s", name, current, version)
    return Promotion(name, version, current, changed=True)


def rollback(tracking: TrackingConfig, name: str) -> Promotion:
    """Point ``champion`` back at ``previous``; ``previous`` then names the version rolled back from.

    ``champion`` is written first (the alias that matters); a failure before the second write leaves both
    aliases on the restored version, which is safe (a second rollback is then a no-op).

    Args:
        tracking: Where the registry lives.
        name: Registered model name.

    Returns:
        The aliases afterwards.

    Raises:
        DeployError: If there is no ``previous`` version to roll back to.
    """
    from components.common import tracking as tr

    client = _registry(tracking)
    previous = tr.get_version_by_alias(tracking, name, PREVIOUS)
    if previous is None:
        raise DeployError(f"{name} has no alias {PREVIOUS!r}: nothing to roll back to")
    current = tr.get_version_by_alias(tracking, name, CHAMPION)
    if current == previous:
        return Promotion(name, previous, previous, changed=False)
    client.set_registered_model_alias(name, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    logger.info("%s: rolled back champion v%s -> v%s", name, current, previous)
    return Promotion(name, previous, current, changed=True)


# ----------------------------------------------------------------------------------------------- KServe


def build_inference_service(name: str, storage_uri: str, cfg: DeployConfig, predictor: str) -> dict[str, Any]:
    """The InferenceService of one predictor, as the plain dict the Kubernetes API takes.

    Built with KServe's own models (``V1beta1InferenceService``) so field names follow the SDK; the same
    function renders ``manifests/`` (with ``cfg.gpu=False`` in ``base/`` and the GPU part as an overlay).

    Args:
        name: InferenceService name (see :func:`isvc_name`).
        storage_uri: Where KServe's storage initializer fetches the model files (``s3://...``).
        cfg: Namespace, runtime, service account, resources, GPU and canary settings.
        predictor: ``clip-search`` or ``lipsync``.

    Returns:
        The manifest as a dict (camelCase keys, no ``None`` values).
    """
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )
    from kubernetes.client import ApiClient, V1ObjectMeta, V1ResourceRequirements, V1Toleration

    runtime = cfg.runtime(predictor)
    requests = {"cpu": cfg.cpu_request, "memory": cfg.memory_request}
    limits = {"memory": cfg.memory_limit}
    tolerations = node_selector = None
    if cfg.gpu:
        gpus = str(cfg.gpu_count)
        requests["nvidia.com/gpu"] = gpus
        limits["nvidia.com/gpu"] = gpus
        tolerations = [V1Toleration(key=cfg.gpu_toleration_key, operator="Exists", effect="NoSchedule")]
        key, _, value = cfg.gpu_node_selector.partition("=")
        node_selector = {key: value}
    isvc = V1beta1InferenceService(
        api_version=f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=name,
            namespace=cfg.namespace,
            labels={**PART_OF, "clipsync/predictor": predictor},
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                service_account_name=cfg.service_account,
                min_replicas=1,
                canary_traffic_percent=cfg.canary_traffic_percent or None,
                tolerations=tolerations,
                node_selector=node_selector,
                model=V1beta1ModelSpec(
                    name="kserve-container",  # KServe's own container name (the SDK default is "")
                    model_format=V1beta1ModelFormat(name=predictor, version="1"),
                    runtime=runtime,
                    storage_uri=storage_uri,
                    resources=V1ResourceRequirements(requests=requests, limits=limits),
                ),
            )
        ),
    )
    return ApiClient().sanitize_for_serialization(isvc)


def _kserve_client():
    from kserve import KServeClient

    try:
        # In a pod: the service account's in-cluster config; elsewhere ~/.kube/config.
        return KServeClient()
    except Exception as exc:
        raise DeployError(f"no access to a Kubernetes cluster: {type(exc).__name__}: {exc}") from exc


def _api_reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    body = getattr(exc, "body", "") or ""
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(body).get("message", body)
    return f"HTTP {status} {getattr(exc, 'reason', '')}: {body}".strip()


def _not_ready_reason(objects: Any, namespace: str, name: str) -> str:
    try:
        current = objects.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
    except Exception as exc:
        return f"status unavailable ({_api_reason(exc)})"
    conditions = (current.get("status") or {}).get("conditions") or []
    bad = [
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()
        for c in conditions
        if str(c.get("status", "Unknown")).lower() != "true"
    ]
    return "; ".join(bad) if bad else "no Ready condition reported"


def deploy_kserve(isvc: dict[str, Any], cfg: DeployConfig, api: Any = None) -> None:
    """Create or patch an InferenceService and wait until it is Ready.

    On a timeout or an API error it raises :class:`DeployError` with the reason. A patched service is put
    back to its former spec (best effort), so the previous champion keeps serving; KServe itself keeps
    routing traffic to the last ready revision meanwhile.

    Args:
        isvc: The manifest from :func:`build_inference_service`.
        cfg: Namespace, canary and ready timeout.
        api: A ``kserve.KServeClient``; by default one with the in-cluster configuration.

    Raises:
        DeployError: If the cluster cannot be reached, refuses the object, or the service is not Ready
            within ``cfg.ready_timeout_s``.
    """
    from kubernetes.client.rest import ApiException

    api = api if api is not None else _kserve_client()
    objects = api.api_instance
    name = isvc["metadata"]["name"]
    namespace = isvc["metadata"].get("namespace") or cfg.namespace
    where = f"InferenceService {namespace}/{name}"
    try:
        existing = objects.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise DeployError(f"{where}: cannot read it: {_api_reason(exc)}") from exc
        existing = None
    except Exception as exc:
        raise DeployError(f"{where}: cannot reach the cluster: {_api_reason(exc)}") from exc
    try:
        if existing is None:
            out = objects.create_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, isvc)
            logger.info("%s created", where)
        else:
            body = copy.deepcopy(isvc)
            if "canaryTrafficPercent" not in body["spec"]["predictor"]:
                body["spec"]["predictor"]["canaryTrafficPercent"] = None  # merge patch: drop a former canary
            out = objects.patch_namespaced_custom_object(
                KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name, body
            )
            logger.info("%s patched", where)
    except Exception as exc:
        raise DeployError(f"{where}: the API refused it: {_api_reason(exc)}") from exc

    generation = (out or {}).get("metadata", {}).get("generation")
    timeout = cfg.ready_timeout_s
    try:
        api.wait_isvc_ready(
            name,
            namespace=namespace,
            timeout_seconds=timeout,
            polling_interval=min(10.0, max(0.2, timeout / 20)),
            expected_generation=generation,
        )
    except Exception as exc:
        reason = _not_ready_reason(objects, namespace, name)
        if existing is not None:
            _restore(objects, namespace, name, existing)
        raise DeployError(f"{where} not Ready within {timeout} s: {reason}") from exc
    logger.info("%s is Ready (generation %s)", where, generation)


def _restore(objects: Any, namespace: str, name: str, former: dict[str, Any]) -> None:
    """Put the former spec back (PUT with the current resourceVersion); log, never raise."""
    try:
        current = objects.get_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
        body = {k: copy.deepcopy(former[k]) for k in ("apiVersion", "kind", "metadata", "spec") if k in former}
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        objects.replace_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name, body)
        logger.warning("InferenceService %s/%s put back to its former spec", namespace, name)
    except Exception as exc:
        logger.error("InferenceService %s/%s: could not restore the former spec: %s", namespace, name, exc)


def publish_version(
    tracking: TrackingConfig,
    name: str,
    version: str,
    storage_uri: str,
    prepare: Callable[[Path], None] | None = None,
) -> str:
    """Copy a registered version's files to ``storage_uri`` where KServe's storage initializer reads them.

    Writes through :mod:`components.common.storage`: ``s3://bucket/prefix`` with the ``MINIO_*`` credentials
    of the environment (the bucket must exist), or an absolute path for a local folder.

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
    from components.common import tracking as tr
    from components.common.storage import StorageError, open_store

    if not storage_uri.startswith(("s3://", "/")):
        raise DeployError(f"cannot publish to {storage_uri!r}: only s3:// URIs and absolute paths")
    with tempfile.TemporaryDirectory(prefix="clipsync-publish-") as tmp:
        files = tr.download_version(tracking, name, version, Path(tmp) / "model")
        if prepare is not None:
            prepare(files)
        try:
            store = open_store(storage_uri)
            for path in sorted(p for p in files.rglob("*") if p.is_file()):
                store.put_file(path.relative_to(files).as_posix(), path)
        except StorageError as exc:
            raise DeployError(f"cannot publish {name} v{version} to {storage_uri}: {exc}") from exc
    logger.info("published %s v%s to %s", name, version, storage_uri)
    return storage_uri


# ----------------------------------------------------------------------------------------------- local


def champions_file(state_dir: Path) -> Path:
    """The local serving record: ``{state_dir}/serving/champions.json``."""
    return Path(state_dir) / "serving" / "champions.json"


def read_champions(state_dir: Path) -> dict[str, dict[str, str]]:
    """What the next ``clipsync serve`` loads: model name (``clip-acme``) -> ``{"path", "version", "updated_at"}``."""
    path = champions_file(state_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def deploy_local(
    url: str,
    name: str,
    version_dir: Path,
    state_dir: Path,
    version: str = "",
    timeout_s: float = 300.0,
) -> str:
    """Make the local model server serve ``version_dir`` as model ``name``.

    The version is first recorded in ``{state_dir}/serving/champions.json`` (the server's model repository
    reads it), then the server is asked to load it with KServe's repository endpoint
    ``POST {url}/v2/repository/models/{name}/load``. When no server answers, the record stays and the next
    ``clipsync serve`` loads it. When a server answers with an error, the former record is put back.

    Args:
        url: The local server, e.g. ``http://127.0.0.1:8080``.
        name: Model name on the server: the client's registered name (``clip-acme``, ``lipsync-acme``).
        version_dir: Folder with the model files.
        state_dir: The client's state folder.
        version: Registry version, recorded for information.
        timeout_s: How long the server may take to load.

    Returns:
        ``"loaded"`` or ``"recorded"``.

    Raises:
        DeployError: If the server refused or failed to load the model.
    """
    path = champions_file(state_dir)
    before = path.read_text() if path.is_file() else None
    champions = read_champions(state_dir)
    champions[name] = {
        "path": str(Path(version_dir).resolve()),
        "version": str(version),
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json_atomic(path, champions)
    endpoint = f"{url.rstrip('/')}/v2/repository/models/{urllib.parse.quote(name, safe='')}/load"
    request = urllib.request.Request(endpoint, data=b"", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)
        raise DeployError(f"local server {url} failed to load {name}: HTTP {exc.code} {detail}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        logger.info("no model server answers at %s (%s); %s recorded for the next serve", url, exc, name)
        return "recorded"
    logger.info("local server %s loaded %s from %s", url, name, version_dir)
    return "loaded"


# ----------------------------------------------------------------------------------------------- stage


def _rollout(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    version: str,
    cfg: DeployConfig,
    api: Any,
    prepare: Callable[[Path], None] | None = None,
) -> tuple[str, str]:
    from components.common import tracking as tr

    name = registered_name(model, client_id)
    predictor = PREDICTOR_OF[model]
    if cfg.target == "kserve":
        uri = publish_version(tracking, name, version, storage_uri_for(cfg, client_id, name, version), prepare)
        deploy_kserve(build_inference_service(isvc_name(predictor, client_id), uri, cfg, predictor), cfg, api)
        return "ready", uri
    version_dir = Path(state_dir) / "serving" / "models" / name / f"v{version}"
    tr.download_version(tracking, name, version, version_dir)
    if prepare is not None:
        prepare(version_dir)
    # The local server hosts every client's models side by side: one model name per client (``clip-acme``).
    return deploy_local(cfg.local_server_url, name, version_dir, Path(state_dir), version), str(version_dir)


def deploy_model(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    version: str,
    cfg: DeployConfig,
    api: Any = None,
    prepare: Callable[[Path], None] | None = None,
) -> DeployResult:
    """Serve ``version`` of a client's model, then make it the champion.

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

    Returns:
        What was done.

    Raises:
        DeployError: If the rollout failed; the champion alias is then untouched.
    """
    name = registered_name(model, client_id)
    serving, location = _rollout(tracking, client_id, state_dir, model, str(version), cfg, api, prepare)
    promotion = promote(tracking, name, str(version))
    return DeployResult(model, name, str(version), cfg.target, serving, location, promotion)


def rollback_model(
    tracking: TrackingConfig,
    client_id: str,
    state_dir: Path,
    model: str,
    cfg: DeployConfig,
    api: Any = None,
) -> DeployResult:
    """Serve the ``previous`` version again, then point ``champion`` back at it (``clipsync rollback``).

    Raises:
        DeployError: If there is no previous version or its rollout failed (aliases untouched).
    """
    from components.common import tracking as tr

    name = registered_name(model, client_id)
    previous = tr.get_version_by_alias(tracking, name, PREVIOUS)
    if previous is None:
        raise DeployError(f"{name} has no alias {PREVIOUS!r}: nothing to roll back to")
    serving, location = _rollout(tracking, client_id, state_dir, model, previous, cfg, api)
    promotion = rollback(tracking, name)
    return DeployResult(model, name, previous, cfg.target, serving, location, promotion)

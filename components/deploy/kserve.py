"""deploy on KServe: the objects (InferenceServices, TrainedModels) and the two ways to roll a version out.

- multi-model (default): a client's model is a ``TrainedModel`` named like the registered model (``clip-acme``)
  on the pool's shared InferenceService of its predictor (``clip-search-shared``). KServe's model agent pulls
  its ``storageUri`` into the pool's pods and calls the server's repository load; deploy then probes the pool's
  URL until ``/v2/models/clip-acme`` answers with the new version.
- per-client: an InferenceService of its own (``clip-acme``), Ready, then probed; with a canary the new revision
  first gets ``canary_traffic_percent`` of the traffic, is probed on its own URL (tag routing), and only then
  gets 100 %.

A rollout that fails (API error, not Ready, probe never names the version) puts the former object back (or
deletes the one it created) and raises :class:`DeployError` with the reason; the returned ``undo`` does the same
when a later step (the alias move) fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from components.deploy.config import DeployConfig
from components.deploy.endpoint import ServingEndpoint
from components.deploy.errors import DeployError

logger = logging.getLogger("clipsync.deploy")

KSERVE_GROUP = "serving.kserve.io"
ISVC = ("v1beta1", "inferenceservices", "InferenceService")
TRAINED_MODEL = ("v1alpha1", "trainedmodels", "TrainedModel")
PART_OF = {"app.kubernetes.io/part-of": "clipsync"}
#: KServe then gives each revision of an InferenceService its own URL (``latest-``/``prev-``): the canary probe.
TAG_ROUTING = {"serving.kserve.io/enable-tag-routing": "true"}


# ----------------------------------------------------------------------------------------------- objects


def _resources(cfg: DeployConfig) -> tuple[dict, dict, Any, Any]:
    from kubernetes.client import V1Toleration

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
    return requests, limits, tolerations, node_selector


def build_inference_service(
    name: str,
    storage_uri: str | None,
    cfg: DeployConfig,
    predictor: str,
    args: list[str] | None = None,
) -> dict[str, Any]:
    """An InferenceService of one predictor, as the plain dict the Kubernetes API takes.

    Built with KServe's own models (``V1beta1InferenceService``) so field names follow the SDK; the same
    function renders ``manifests/`` (CPU in ``base/``, the GPU part as an overlay).

    Args:
        name: ``clip-acme`` (per-client) or the pool's ``clip-search-shared``.
        storage_uri: Where KServe's storage initializer fetches the model (per-client); ``None``: a pool served
            by the multi-model runtime, whose models are TrainedModels.
        cfg: Namespace, runtime, service account, resources, GPU and canary settings.
        predictor: ``clip-search`` or ``lipsync``.
        args: Extra arguments KServe appends to the runtime's (the pool's ``--base_model``).

    Returns:
        The manifest as a dict (camelCase keys, no ``None`` values).
    """
    from kubernetes.client import ApiClient, V1ObjectMeta, V1ResourceRequirements

    from serving.kserve_adapter import kserve

    requests, limits, tolerations, node_selector = _resources(cfg)
    canary = cfg.canary_traffic_percent if storage_uri else 0
    isvc = kserve.V1beta1InferenceService(
        api_version=f"{KSERVE_GROUP}/{ISVC[0]}",
        kind=ISVC[2],
        metadata=V1ObjectMeta(
            name=name,
            namespace=cfg.namespace,
            labels={**PART_OF, "clipsync/predictor": predictor},
            annotations=dict(TAG_ROUTING) if canary else None,
        ),
        spec=kserve.V1beta1InferenceServiceSpec(
            predictor=kserve.V1beta1PredictorSpec(
                service_account_name=cfg.service_account,
                min_replicas=1,
                canary_traffic_percent=canary or None,
                tolerations=tolerations,
                node_selector=node_selector,
                model=kserve.V1beta1ModelSpec(
                    name="kserve-container",  # KServe's own container name (the SDK default is "")
                    model_format=kserve.V1beta1ModelFormat(name=predictor, version="1"),
                    runtime=cfg.runtime(predictor, multi_model=storage_uri is None),
                    storage_uri=storage_uri,
                    args=args or None,
                    resources=V1ResourceRequirements(requests=requests, limits=limits),
                ),
            )
        ),
    )
    return ApiClient().sanitize_for_serialization(isvc)


def build_trained_model(name: str, storage_uri: str, cfg: DeployConfig, predictor: str) -> dict[str, Any]:
    """The ``TrainedModel`` that puts a client's model on the pool's InferenceService of ``predictor``.

    Args:
        name: The registered model name (``clip-acme``): also the model's name on the server.
        storage_uri: The published version folder, pulled by KServe's model agent into ``/mnt/models/<name>``.
        cfg: Namespace, pool and the memory a model takes.
        predictor: ``clip-search`` or ``lipsync`` (the TrainedModel's ``framework``: the pool's model format).
    """
    from kubernetes.client import ApiClient, V1ObjectMeta

    from serving.kserve_adapter import kserve

    tm = kserve.V1alpha1TrainedModel(
        api_version=f"{KSERVE_GROUP}/{TRAINED_MODEL[0]}",
        kind=TRAINED_MODEL[2],
        metadata=V1ObjectMeta(name=name, namespace=cfg.namespace, labels={**PART_OF, "clipsync/predictor": predictor}),
        spec=kserve.V1alpha1TrainedModelSpec(
            inference_service=cfg.pool_service(predictor),
            model=kserve.V1alpha1ModelSpec(
                storage_uri=storage_uri, framework=predictor, memory=cfg.trained_model_memory
            ),
        ),
    )
    return ApiClient().sanitize_for_serialization(tm)


# ----------------------------------------------------------------------------------------------- API


def kserve_client():
    """``kserve.KServeClient`` with the in-cluster configuration (in a pod) or ``~/.kube/config``."""
    from serving.kserve_adapter import kserve

    try:
        return kserve.KServeClient()
    except Exception as exc:
        raise DeployError(f"no access to a Kubernetes cluster: {type(exc).__name__}: {exc}") from exc


def api_reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    body = getattr(exc, "body", "") or ""
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(body).get("message", body)
    return f"HTTP {status} {getattr(exc, 'reason', '')}: {body}".strip()


class _Objects:
    """get / create / merge-patch / replace / delete of one kind of custom object in one namespace."""

    def __init__(self, api: Any, kind: tuple[str, str, str], namespace: str) -> None:
        self.objects = api.api_instance
        self.version, self.plural, self.kind = kind
        self.namespace = namespace

    def where(self, name: str) -> str:
        return f"{self.kind} {self.namespace}/{name}"

    def _args(self) -> tuple[str, str, str, str]:
        return KSERVE_GROUP, self.version, self.namespace, self.plural

    def get(self, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.objects.get_namespaced_custom_object(*self._args(), name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise DeployError(f"{self.where(name)}: cannot read it: {api_reason(exc)}") from exc
        except Exception as exc:
            raise DeployError(f"{self.where(name)}: cannot reach the cluster: {api_reason(exc)}") from exc

    def apply(self, body: dict, existing: dict | None) -> dict:
        """Create ``body`` or merge-patch the existing object with it."""
        name = body["metadata"]["name"]
        try:
            if existing is None:
                out = self.objects.create_namespaced_custom_object(*self._args(), body)
                logger.info("%s created", self.where(name))
            else:
                out = self.objects.patch_namespaced_custom_object(*self._args(), name, body)
                logger.info("%s patched", self.where(name))
        except Exception as exc:
            raise DeployError(f"{self.where(name)}: the API refused it: {api_reason(exc)}") from exc
        return out or {}

    def restore(self, name: str, former: dict | None) -> None:
        """Put the former spec back (PUT with the current resourceVersion), or delete a new object; never raises."""
        try:
            if former is None:
                self.objects.delete_namespaced_custom_object(*self._args(), name)
                logger.warning("%s deleted (it did not exist before)", self.where(name))
                return
            current = self.objects.get_namespaced_custom_object(*self._args(), name)
            body = {k: copy.deepcopy(former[k]) for k in ("apiVersion", "kind", "metadata", "spec") if k in former}
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.objects.replace_namespaced_custom_object(*self._args(), name, body)
            logger.warning("%s put back to its former spec", self.where(name))
        except Exception as exc:
            logger.error("%s: could not restore the former state: %s", self.where(name), exc)


def _not_ready_reason(objects: _Objects, name: str) -> str:
    try:
        current = objects.get(name) or {}
    except DeployError as exc:
        return f"status unavailable ({exc})"
    conditions = (current.get("status") or {}).get("conditions") or []
    bad = [
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()
        for c in conditions
        if str(c.get("status", "Unknown")).lower() != "true"
    ]
    return "; ".join(bad) if bad else "no Ready condition reported"


def _service_url(isvc: dict, revision: str = "") -> str:
    """The cluster-internal URL of an InferenceService, or of its latest revision (``revision="latest"``)."""
    status = isvc.get("status") or {}
    if revision:
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        for entry in traffic:
            if entry.get("latestRevision") and entry.get("url"):
                return entry["url"]
    address = (status.get("address") or {}).get("url") or status.get("url")
    if not address:
        raise DeployError(f"InferenceService {isvc['metadata']['name']} reports no URL to probe")
    return address


def _probe(url: str, name: str, version: str, timeout_s: float, token: str) -> None:
    import httpx

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=min(30.0, timeout_s)) as client:
            await ServingEndpoint(client, url, token).expect_version(name, version, timeout_s)

    asyncio.run(run())


# ----------------------------------------------------------------------------------------------- rollouts


def _wait_ready(api: Any, objects: _Objects, name: str, generation: Any, timeout: int) -> dict:
    try:
        api.wait_isvc_ready(
            name,
            namespace=objects.namespace,
            timeout_seconds=timeout,
            polling_interval=min(10.0, max(0.2, timeout / 20)),
            expected_generation=generation,
        )
    except Exception as exc:
        raise DeployError(
            f"{objects.where(name)} not Ready within {timeout} s: {_not_ready_reason(objects, name)}"
        ) from exc
    return objects.get(name) or {}


def rollout_inference_service(
    api: Any, name: str, storage_uri: str, version: str, cfg: DeployConfig, predictor: str, token: str = ""
) -> Callable[[], None]:
    """Serve ``version`` from a per-client InferenceService (canary first when configured), probed.

    Returns:
        ``undo``: puts the former InferenceService back (or deletes a new one).

    Raises:
        DeployError: The service was refused, not Ready, or never answered with ``version``; it is put back.
    """
    objects = _Objects(api, ISVC, cfg.namespace)
    existing = objects.get(name)
    body = build_inference_service(name, storage_uri, cfg, predictor)
    if existing is not None and "canaryTrafficPercent" not in body["spec"]["predictor"]:
        body["spec"]["predictor"]["canaryTrafficPercent"] = None  # merge patch: drop a former canary
    canary = bool(cfg.canary_traffic_percent) and existing is not None
    try:
        out = objects.apply(body, existing)
        isvc = _wait_ready(api, objects, name, (out.get("metadata") or {}).get("generation"), cfg.ready_timeout_s)
        _probe(_service_url(isvc, "latest" if canary else ""), name, version, cfg.ready_timeout_s, token)
        if canary:
            logger.info(
                "%s: canary at %d %% answers v%s; sending all traffic", name, cfg.canary_traffic_percent, version
            )
            out = objects.apply(
                {"spec": {"predictor": {"canaryTrafficPercent": 100}}, "metadata": {"name": name}}, isvc
            )
            isvc = _wait_ready(api, objects, name, (out.get("metadata") or {}).get("generation"), cfg.ready_timeout_s)
            _probe(_service_url(isvc), name, version, cfg.ready_timeout_s, token)
    except DeployError:
        objects.restore(name, existing)
        raise
    logger.info("%s serves v%s", objects.where(name), version)
    return lambda: objects.restore(name, existing)


def rollout_trained_model(
    api: Any, name: str, storage_uri: str, version: str, cfg: DeployConfig, predictor: str, token: str = ""
) -> Callable[[], None]:
    """Serve ``version`` as the TrainedModel ``name`` on the pool's InferenceService, probed on the pool's URL.

    Returns:
        ``undo``: puts the former TrainedModel back (or deletes a new one); the model agent reloads it.

    Raises:
        DeployError: The pool is missing or not Ready, the TrainedModel was refused, or the pool never answered
            with ``version`` within ``ready_timeout_s``; the TrainedModel is put back.
    """
    pool = cfg.pool_service(predictor)
    services = _Objects(api, ISVC, cfg.namespace)
    isvc = services.get(pool)
    if isvc is None:
        raise DeployError(f"{services.where(pool)} does not exist: apply manifests/ (kubectl apply -k) first")
    url = _service_url(isvc)
    models = _Objects(api, TRAINED_MODEL, cfg.namespace)
    existing = models.get(name)
    try:
        models.apply(build_trained_model(name, storage_uri, cfg, predictor), existing)
        _probe(url, name, version, cfg.ready_timeout_s, token)
    except DeployError as exc:
        models.restore(name, existing)
        raise DeployError(f"{models.where(name)} on {pool}: {exc}") from exc
    logger.info("%s serves v%s on %s", models.where(name), version, pool)
    return lambda: models.restore(name, existing)

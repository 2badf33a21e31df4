"""The deploy stage's settings (standard library only: kfp wrappers and pipelines/ import it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.common.errors import ConfigError
from serving.config import PREDICTOR_KINDS as PREDICTORS

TARGETS = ("local", "kserve")
#: The Secret holding the model servers' tokens (serving/auth.py): key ``admin``, the admin token (repository
#: load/unload, /metrics; deploy's probes), and key ``clients``, the client tokens (a JSON map token -> client ids).
SERVING_TOKEN_SECRET = "clipsync-serving-tokens"
ADMIN_TOKEN_KEY = "admin"
CLIENT_TOKENS_KEY = "clients"
#: The variables the servers (and the deploy task: the admin token) read them into: in a cluster,
#: ``serving.admin_token_env`` and ``serving.tokens_env`` name these.
ADMIN_TOKEN_ENV = "CLIPSYNC_ADMIN_TOKEN"
CLIENT_TOKENS_ENV = "CLIPSYNC_CLIENT_TOKENS"
#: multi-model: each client's model is a TrainedModel on the pool's shared InferenceService of its predictor;
#: per-client: each client's model is an InferenceService of its own (one pod, one GPU per client and model).
KSERVE_MODES = ("multi-model", "per-client")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class DeployConfig:
    """Where and how a promoted model is served.

    Attributes:
        target: ``"local"`` (a ``kserve.ModelServer`` on this machine, the embedded default) or
            ``"kserve"`` (KServe in the cluster).
        kserve_mode: ``"multi-model"``: the version becomes a ``TrainedModel`` loaded into the pool's shared
            InferenceService of its predictor (``{predictor}-{pool}``); ``"per-client"``: an InferenceService of
            its own, named like the registered model (``clip-acme``).
        pool: Name of the shared InferenceServices (one ``clip-search`` and one ``lipsync`` per GPU pool).
        trained_model_memory: Memory a client's model takes in the pool's server (KServe sums it per pool
            against the predictor's memory limit): the adapter, its search index, the lip-sync detector.
        namespace: Kubernetes namespace of the InferenceServices and TrainedModels.
        canary_traffic_percent: Share of traffic (1-99) a per-client InferenceService's new revision gets first;
            once that revision is Ready and answers with the new version, traffic goes to 100 %. 0: straight to
            100 %. Multi-model swaps a TrainedModel in place (no revisions), so it needs 0.
        ready_timeout_s: How long to wait for the new version to be Ready and to answer the probe.
        local_server_url: The local model server (``clipsync serve``), told to load the new champion. When none
            answers, deploy checks the version on an in-process instance of the same server instead.
        storage_uri_prefix: Where the promoted model files are published for KServe's storage initializer;
            ``{client}`` is replaced by the client id. Each version lands in
            ``{prefix}/{registered model}/v{version}/``.
        service_account: ServiceAccount of the predictor pods (it carries the MinIO credentials secret).
        gpu: Request GPUs for the predictors (limits, toleration and node selector below).
        gpu_count: ``nvidia.com/gpu`` per predictor pod.
        gpu_node_selector: ``key=value`` node label the predictor pods are scheduled on.
        gpu_toleration_key: Taint key of the GPU nodes, tolerated (operator Exists, effect NoSchedule).
        clip_runtime: ServingRuntime of the clip-search predictor.
        lipsync_runtime: ServingRuntime of the lipsync predictor.
        cpu_request: CPU request of a predictor pod.
        memory_request: Memory request of a predictor pod.
        memory_limit: Memory limit of a predictor pod.
    """

    target: str = "local"
    kserve_mode: str = "multi-model"
    pool: str = "shared"
    trained_model_memory: str = "512Mi"
    namespace: str = "clipsync"
    canary_traffic_percent: int = 0
    ready_timeout_s: int = 600
    local_server_url: str = "http://127.0.0.1:8080"
    storage_uri_prefix: str = "s3://clipsync-models/{client}"
    service_account: str = "clipsync-models"
    gpu: bool = True
    gpu_count: int = 1
    gpu_node_selector: str = "nvidia.com/gpu.present=true"
    gpu_toleration_key: str = "nvidia.com/gpu"
    clip_runtime: str = "clipsync-clip-search"
    lipsync_runtime: str = "clipsync-lipsync"
    cpu_request: str = "1"
    memory_request: str = "4Gi"
    memory_limit: str = "8Gi"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"deploy.target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        for name in ("namespace", "service_account", "clip_runtime", "lipsync_runtime"):
            value = getattr(self, name)
            if not _DNS_LABEL.match(value):
                raise ConfigError(f"deploy.{name} must be a DNS label (lower-case, digits, dashes), got {value!r}")
        if self.kserve_mode not in KSERVE_MODES:
            raise ConfigError(f"deploy.kserve_mode must be one of {', '.join(KSERVE_MODES)}, got {self.kserve_mode!r}")
        if not _DNS_LABEL.match(self.pool) or len(self.pool) > 40:
            raise ConfigError(f"deploy.pool must be a short DNS label, got {self.pool!r}")
        if not 0 <= self.canary_traffic_percent <= 99:
            raise ConfigError(f"deploy.canary_traffic_percent must be 0..99, got {self.canary_traffic_percent}")
        if self.canary_traffic_percent and self.kserve_mode != "per-client":
            raise ConfigError(
                "deploy.canary_traffic_percent needs deploy.kserve_mode: per-client (a multi-model TrainedModel is "
                "swapped in place, it has no revisions to split traffic between)"
            )
        if not 1 <= self.ready_timeout_s <= 86_400:
            raise ConfigError(f"deploy.ready_timeout_s must be 1..86400, got {self.ready_timeout_s}")
        if not self.local_server_url.startswith(("http://", "https://")):
            raise ConfigError(f"deploy.local_server_url must be http(s)://..., got {self.local_server_url!r}")
        prefix = self.storage_uri_prefix
        if not prefix or prefix.endswith("/") or ("://" not in prefix and not prefix.startswith("/")):
            raise ConfigError(
                "deploy.storage_uri_prefix must be a URI (s3://bucket/path) or an absolute path without a "
                f"trailing '/', got {prefix!r}"
            )
        leftover = prefix.replace("{client}", "")
        if "{" in leftover or "}" in leftover:
            raise ConfigError(f"deploy.storage_uri_prefix may only use the placeholder {{client}}, got {prefix!r}")
        if not 1 <= self.gpu_count <= 16:
            raise ConfigError(f"deploy.gpu_count must be 1..16, got {self.gpu_count}")
        key, sep, value = self.gpu_node_selector.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not re.match(r"^[A-Za-z0-9._-]{0,63}$", value):
            raise ConfigError(f"deploy.gpu_node_selector must be key=value, got {self.gpu_node_selector!r}")
        if not _LABEL_KEY.match(self.gpu_toleration_key):
            raise ConfigError(f"deploy.gpu_toleration_key is not a valid taint key: {self.gpu_toleration_key!r}")
        for name in ("cpu_request", "memory_request", "memory_limit", "trained_model_memory"):
            if not re.match(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$", getattr(self, name)):
                raise ConfigError(f"deploy.{name} must be a Kubernetes quantity, got {getattr(self, name)!r}")

    def runtime(self, predictor: str, multi_model: bool = False) -> str:
        """The ServingRuntime name of ``predictor`` (``clip-search`` or ``lipsync``); ``-mms`` for the pools'."""
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
        name = self.clip_runtime if predictor == "clip-search" else self.lipsync_runtime
        return f"{name}-mms" if multi_model else name

    def pool_service(self, predictor: str) -> str:
        """The shared InferenceService of ``predictor`` in this pool (``clip-search-shared``)."""
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
        return f"{predictor}-{self.pool}"

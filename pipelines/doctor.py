"""``clipsync doctor``: every endpoint a client's config would make clipsync contact, and whether it is inside the
cluster (the on-premises profile: no model hub, no outbound network).

Inside means one of: a cluster service name (``*.svc``, ``*.svc.cluster.local``), ``localhost``, a loopback or
private address (RFC 1918 ``10/8``, ``172.16/12``, ``192.168/16``; IPv6 ``::1`` and ``fc00::/7``), or an entry of
``fleet.allowed_hosts`` (a host name, a ``*.suffix`` wildcard, a CIDR block). Anything else, a single-label name
included (search domains may send it anywhere), is outside. Names are not resolved: the check reads the config.

Standard library only at module level.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7")
)
CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local")
#: Where a model id that is neither a folder nor ``s3://`` would be fetched from.
MODEL_HUB = "https://huggingface.co"
KUBERNETES_API = "https://kubernetes.default.svc"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the config.

    Attributes:
        kind: What it is (object store, MLflow, ...).
        address: As configured (a URL or ``host:port``).
        settings: The settings (or variables) that name it.
        inside: Whether it is inside the cluster.
        reason: Why it counts as inside or outside.
    """

    kind: str
    address: str
    settings: tuple[str, ...]
    inside: bool
    reason: str


def _host(address: str) -> str:
    parsed = urlparse(address if "://" in address else f"//{address}")
    return (parsed.hostname or "").lower()


def classify(host: str, allowed: tuple[str, ...] = ()) -> tuple[bool, str]:
    """Whether ``host`` is inside the cluster, and why.

    Args:
        host: A host name or IP address (no port).
        allowed: ``fleet.allowed_hosts``.
    """
    host = host.lower().rstrip(".")
    if not host:
        return False, "no host"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in allowed:
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True, f"in fleet.allowed_hosts ({entry})"
            except ValueError:
                pass
        elif (entry.startswith("*.") and host.endswith(entry[1:])) or host == entry:
            return True, f"in fleet.allowed_hosts ({entry})"
    if ip is not None:
        for network in PRIVATE_NETWORKS:
            if ip in network:
                return True, f"private or loopback address ({network})"
        return False, "a public address"
    if host == "localhost":
        return True, "loopback"
    if host.endswith(CLUSTER_SUFFIXES):
        return True, "a cluster service name"
    return False, "not a cluster service name (*.svc, *.svc.cluster.local), private address or allowed host"


def endpoints(config: Any, environ: dict[str, str] | None = None) -> list[Endpoint]:
    """Every endpoint the config makes clipsync contact (stages, deploy, serving, model sources).

    Args:
        config: The client's ``ClientConfig``.
        environ: The environment (``MINIO_ENDPOINT``); default ``os.environ``.
    """
    env = os.environ if environ is None else environ
    allowed = config.fleet.allowed_hosts
    found: dict[tuple[str, str], list[str]] = {}

    def add(kind: str, address: str, setting: str) -> None:
        found.setdefault((kind, address), []).append(setting)

    s3_settings = {
        "storage.source_uri": config.storage.source_uri,
        "storage.artifacts_uri": config.storage.artifacts_uri,
        "serving.query_log_uri": config.serving.query_log_uri,
        "finetune_clip.base_model": config.finetune_clip.base_model,
        "tracking.artifact_location": config.tracking.artifact_location,
    }
    if config.deploy.target == "kserve":
        s3_settings["deploy.storage_uri_prefix"] = config.deploy.storage_uri_prefix
    s3_users = [name for name, uri in s3_settings.items() if uri.startswith("s3://")]
    if s3_users:
        for name in s3_users:
            add("object store (MinIO/S3)", config.fleet.s3_endpoint, name)
        if env.get("MINIO_ENDPOINT") and _host(env["MINIO_ENDPOINT"]) != _host(config.fleet.s3_endpoint):
            add("object store (MinIO/S3)", env["MINIO_ENDPOINT"], "MINIO_ENDPOINT")
    if config.tracking.tracking_uri.startswith(("http://", "https://")):
        add("MLflow", config.tracking.tracking_uri, "tracking.tracking_uri")
    if config.fleet.kfp_host:
        add("Kubeflow Pipelines", config.fleet.kfp_host, "fleet.kfp_host")
    deploy = config.deploy
    if deploy.target == "kserve":
        add("Kubernetes API (KServe objects)", KUBERNETES_API, "deploy.target")
        if deploy.kserve_mode == "multi-model":
            for predictor in ("clip-search", "lipsync"):
                url = f"http://{deploy.pool_service(predictor)}.{deploy.namespace}.svc.cluster.local"
                add("KServe", url, "deploy.pool")
        else:
            for model in ("clip", "lipsync"):
                add("KServe", f"http://{model}-{config.client_id}.{deploy.namespace}.svc.cluster.local", "deploy")
    else:
        add("model server (local)", deploy.local_server_url, "deploy.local_server_url")
    base = config.finetune_clip.base_model
    if base and not base.startswith("s3://") and not Path(base).is_absolute() and not Path(base).exists():
        add("model hub", f"{MODEL_HUB}/{base}", "finetune_clip.base_model")

    result = []
    for (kind, address), settings in found.items():
        inside, reason = classify(_host(address), allowed)
        if kind == "model hub":
            inside, reason = False, "a model hub id: put the base CLIP in the client's MinIO (s3://...)"
        result.append(Endpoint(kind, address, tuple(settings), inside, reason))
    return result


def problems(config: Any, environ: dict[str, str] | None = None) -> list[str]:
    """Settings that would fail at run time (the SSE-C key), each with a message naming the setting."""
    from components.common.encryption import sse_c_key
    from components.common.errors import ConfigError

    found = []
    if config.encryption.mode == "sse-c":
        try:
            sse_c_key(config.encryption, os.environ if environ is None else environ)
        except ConfigError as exc:
            found.append(str(exc))
    return found


def report(config: Any, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """The doctor's report (Markdown) and whether everything is inside the cluster and set."""
    rows = endpoints(config, environ)
    issues = problems(config, environ)
    lines = [
        f"# clipsync doctor: {config.client_id}",
        "| endpoint | address | named by | inside the cluster |",
        "|---|---|---|---|",
    ]
    for e in rows:
        verdict = ("yes: " if e.inside else "NO: ") + e.reason
        lines.append(f"| {e.kind} | {e.address} | {', '.join(e.settings)} | {verdict} |")
    outside = [e for e in rows if not e.inside]
    for e in outside:
        lines.append(f"FAIL {e.kind} {e.address} ({', '.join(e.settings)}) is outside the cluster: {e.reason}")
    lines += [f"FAIL {issue}" for issue in issues]
    ok = not outside and not issues
    lines.append("OK: every endpoint is inside the cluster" if ok else f"{len(outside) + len(issues)} problem(s)")
    return "\n".join(lines), ok

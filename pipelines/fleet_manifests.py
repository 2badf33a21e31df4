"""The Kubernetes objects (and MinIO policy) of one client in a shared cluster, rendered by ``clipsync onboard``.

Everything of a client lives in its own namespace (``fleet.namespace``, its Kubeflow profile namespace, where its
pipeline runs execute as the profile's ``default-editor``):

- ``namespace.yaml``: the Namespace, labelled with the client.
- ``secret-minio.yaml``: ``clipsync-minio-<client>``, the client's own MinIO credentials (values EMPTY: fill them from
  your secret store), in KServe's format; the key ``CLIPSYNC_SSE_C_KEY`` too for an ``sse-c`` client. Only this
  client's compiled pipeline (:func:`pipelines.package.compile_pipeline`) and predictors reference it.
- ``serviceaccount.yaml``: ``clipsync-<client>``, carrying only that Secret: the predictors of ``deploy.kserve_mode:
  per-client`` InferenceServices run as it (KServe's storage initializer takes the credentials from it).
- ``role.yaml`` / ``rolebinding.yaml``: the runs may read that one Secret and manage InferenceServices and
  TrainedModels in the client's namespace; ``rolebinding-deploy.yaml`` lets them use the ``clipsync-deploy`` Role
  in the pools' namespace (``deploy.namespace``) for multi-model TrainedModels.
- ``trainingruntime.yaml``: the client's Kubeflow Trainer ``TrainingRuntime`` ``clipsync-torch``
  (:func:`components.common.trainjob.build_training_runtime`) with the client's Secret, and TrainJob rules in its
  Role: a fine-tune above one process (``finetune_*.distributed``) runs as a TrainJob in the client's namespace
  (``distributed.namespace`` empty: the run's own).
- ``networkpolicy.yaml``: ingress and egress only to and from pods of the cluster (plus the CIDR blocks of
  ``fleet.allowed_hosts``, e.g. the Kubernetes API server's address): no outbound network.
- ``configmap-kfp-launcher.yaml``: KFP's per-namespace launcher settings: the pipeline root (frames, crops) in the
  client's artifacts store, with the client's Secret (the buckets' default encryption covers those objects).
- ``kustomization.yaml``; ``minio-policy.json``: the MinIO policy of the client's access key (uploads read-only,
  its own artifacts and models prefixes read-write), for ``mc admin policy create``.

Standard library only.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from components.common.fleet_config import SSE_C_SECRET_KEY, client_secret_name, client_service_account

PART_OF = {"app.kubernetes.io/part-of": "clipsync"}
#: The ServiceAccount Kubeflow gives a profile namespace's pipeline runs.
PROFILE_RUNNER = "default-editor"
DEPLOY_ROLE = "clipsync-deploy"
CLIENT_ROLE = "clipsync-client"
NETWORK_POLICY = "clipsync-in-cluster-only"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ENDPOINT")


def _meta(name: str, namespace: str, client_id: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**PART_OF, "clipsync/client": client_id}}


def _s3_parts(uri: str) -> tuple[str, str] | None:
    """(bucket, prefix without slashes) of an ``s3://`` URI, ``None`` for anything else."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def minio_policy(config: Any) -> dict[str, Any]:
    """The MinIO (IAM) policy of the client's access key: read-only uploads, read-write artifacts and models.

    Only the ``s3://`` locations of the config appear; the base CLIP (``finetune_clip.base_model``) is read-only.
    """
    client = config.client_id
    read: list[tuple[str, str]] = []
    write: list[tuple[str, str]] = []
    for uri, rw in (
        (config.storage.source_uri, False),
        (config.finetune_clip.base_model, False),
        (config.storage.artifacts_uri, True),
        (config.deploy.storage_uri_prefix.replace("{client}", client), True),
        (config.serving.query_log_uri.replace("{client}", client), True),
    ):
        parts = _s3_parts(uri)
        if parts and parts not in read + write:
            (write if rw else read).append(parts)
    statements = []
    for parts, actions in ((read, ["s3:GetObject"]), (write, ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"])):
        for bucket, prefix in parts:
            objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
            statements.append({"Effect": "Allow", "Action": actions, "Resource": [objects]})
            listing: dict[str, Any] = {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            }
            if prefix:
                listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
            statements.append(listing)
    return {"Version": "2012-10-17", "Statement": statements}


def network_policy(config: Any) -> dict[str, Any]:
    """Only in-cluster traffic for every pod of the client's namespace (and the allow-listed CIDR blocks)."""
    in_cluster = [{"namespaceSelector": {}}]
    egress: list[dict[str, Any]] = [{"to": in_cluster}]
    for entry in config.fleet.allowed_hosts:
        try:
            cidr = str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name cannot be an ipBlock; the doctor accepts it, the policy cannot name it
        egress.append({"to": [{"ipBlock": {"cidr": cidr}}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(NETWORK_POLICY, config.fleet.namespace, config.client_id),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": in_cluster}],
            "egress": egress,
        },
    }


def _launcher_config(config: Any) -> dict[str, Any] | None:
    parts = _s3_parts(config.storage.artifacts_uri)
    if parts is None:
        return None
    bucket, prefix = parts
    root = f"s3://{bucket}/{prefix + '/' if prefix else ''}pipeline-root"
    providers = (
        "s3:\n"
        "  default:\n"
        f"    endpoint: {config.fleet.s3_endpoint}\n"
        "    disableSSL: true\n"
        "    region: us-east-1\n"
        "    credentials:\n"
        "      fromEnv: false\n"
        "      secretRef:\n"
        f"        secretName: {client_secret_name(config.client_id)}\n"
        "        accessKeyKey: AWS_ACCESS_KEY_ID\n"
        "        secretKeyKey: AWS_SECRET_ACCESS_KEY\n"
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("kfp-launcher", config.fleet.namespace, config.client_id),
        "data": {"defaultPipelineRoot": root, "providers": providers},
    }


def _training_runtime(config: Any, secret: str) -> dict[str, Any]:
    """The client's ``clipsync-torch`` TrainingRuntime: its TrainJobs read MinIO with the client's own Secret."""
    from components.common.images import TRAIN_IMAGE
    from components.common.trainjob import build_training_runtime
    from pipelines.monthly_retrain import MINIO_ENV  # what the pipeline's tasks read from the same Secret

    variables = {
        **MINIO_ENV,
        **({SSE_C_SECRET_KEY: config.encryption.sse_c_key_env} if config.encryption.mode == "sse-c" else {}),
    }
    env = [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key, var in variables.items()]
    runtime = build_training_runtime(config.fleet.namespace, TRAIN_IMAGE, env)
    runtime["metadata"]["labels"]["clipsync/client"] = config.client_id
    return runtime


def client_objects(config: Any) -> dict[str, Any]:
    """Every file of the client's folder: name -> object (YAML files) or the MinIO policy (``minio-policy.json``).

    Args:
        config: The client's ``ClientConfig``.
    """
    client, ns = config.client_id, config.fleet.namespace
    secret = client_secret_name(client)
    keys = SECRET_KEYS + ((SSE_C_SECRET_KEY,) if config.encryption.mode == "sse-c" else ())
    annotations = {
        "serving.kserve.io/s3-endpoint": config.fleet.s3_endpoint,
        "serving.kserve.io/s3-usehttps": "1" if config.encryption.mode == "sse-c" else "0",
        "serving.kserve.io/s3-region": "us-east-1",
        "serving.kserve.io/s3-useanoncredential": "false",
    }
    runner = {"kind": "ServiceAccount", "name": PROFILE_RUNNER, "namespace": ns}
    files: dict[str, Any] = {
        "namespace.yaml": {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {**PART_OF, "clipsync/client": client}},
        },
        "secret-minio.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**_meta(secret, ns, client), "annotations": annotations},
            "type": "Opaque",
            "stringData": dict.fromkeys(keys, ""),
        },
        "serviceaccount.yaml": {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(client_service_account(client), ns, client),
            "secrets": [{"name": secret}],
        },
        "role.yaml": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(CLIENT_ROLE, ns, client),
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"]},
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices", "trainedmodels"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
                },
                # the fine-tunes' TrainJobs (finetune_*.distributed), on the client's own runtime
                {
                    "apiGroups": ["trainer.kubeflow.org"],
                    "resources": ["trainjobs"],
                    "verbs": ["get", "list", "watch", "create", "delete"],
                },
                {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainingruntimes"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list", "watch"]},
            ],
        },
        "trainingruntime.yaml": _training_runtime(config, secret),
        "rolebinding.yaml": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(CLIENT_ROLE, ns, client),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CLIENT_ROLE},
            "subjects": [runner],
        },
        "rolebinding-deploy.yaml": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(f"{DEPLOY_ROLE}-{client}", config.deploy.namespace, client),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": DEPLOY_ROLE},
            "subjects": [runner],
        },
        "networkpolicy.yaml": network_policy(config),
    }
    launcher = _launcher_config(config)
    if launcher is not None:
        files["configmap-kfp-launcher.yaml"] = launcher
    files["kustomization.yaml"] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(name for name in files if name.endswith(".yaml")),
    }
    files["minio-policy.json"] = minio_policy(config)
    return files

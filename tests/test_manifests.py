"""manifests/: generated from the deploy code and the cluster config (no drift), valid against the KServe CRD schemas
(InferenceService, ServingRuntime, TrainedModel) and, for the built-in kinds, against Kubernetes' own schemas
(kubernetes-validate --strict); the GPU overlay gives exactly what deploy builds with ``deploy.gpu``; no credential
value anywhere. That the runtimes' commands start and serve is tests/test_serving_runtime.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import yaml
from crd_schemas import CRD_FILES, validate_crd

from components.config import load_config
from components.deploy.config import DeployConfig
from components.deploy.kserve import build_inference_service, build_trained_model
from components.deploy.manifests import (
    apply_merge_patch,
    manifest_objects,
    merge_patch_diff,
    pool_args,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
CLUSTER = load_config(REPO / "configs" / "example-cluster.yaml")
BUILT_IN = {"ServiceAccount", "Secret", "Role", "RoleBinding"}


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*.yaml"))}


def test_committed_manifests_equal_the_rendered_ones(tmp_path):
    # Through the CLI: `--config` once made kserve exit at import (it parses the command line of the process).
    config = str(REPO / "configs" / "example-cluster.yaml")
    cmd = [sys.executable, "-m", "pipelines.cli", "render-manifests", "--config", config, "-o", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rendered, committed = _files(tmp_path), _files(MANIFESTS)
    assert sorted(committed) == sorted(rendered), "manifests/ files differ: run python -m components.deploy.manifests"
    for rel, text in rendered.items():
        assert committed[rel] == text, f"manifests/{rel} drifted: run python -m components.deploy.manifests manifests"


def test_kserve_objects_match_the_crd_schemas():
    objects = [yaml.safe_load(t) for t in _files(MANIFESTS).values()]
    kinds = [o["kind"] for o in objects if o.get("kind") in CRD_FILES and "namespace" in o.get("metadata", {})]
    assert (kinds.count("InferenceService"), kinds.count("ServingRuntime"), kinds.count("TrainedModel")) == (4, 4, 2)
    for obj in objects:
        if (
            obj["kind"] in CRD_FILES
            and obj["apiVersion"].startswith("serving.kserve.io/")
            and "namespace" in obj.get("metadata", {})
        ):
            validate_crd(obj)
    # What deploy creates in every variant is valid too (GPU, canary, pools, TrainedModels).
    per_client = DeployConfig(kserve_mode="per-client", canary_traffic_percent=25, gpu_count=2)
    for predictor in ("clip-search", "lipsync"):
        for cfg in (DeployConfig(), DeployConfig(gpu=False), per_client):
            validate_crd(build_inference_service(f"{predictor}-acme", "s3://b/k", cfg, predictor))
            validate_crd(build_inference_service(f"{predictor}-shared", None, cfg, predictor, ["--base_model=x"]))
        validate_crd(build_trained_model("clip-acme", "s3://b/k", DeployConfig(), predictor))


def test_crd_validation_is_not_vacuous():
    tm = build_trained_model("clip-acme", "s3://b/k", DeployConfig(), "clip-search")
    del tm["spec"]["model"]["memory"]
    with pytest.raises(jsonschema.ValidationError, match="memory"):
        validate_crd(tm)
    isvc = build_inference_service("clip-search-acme", "s3://b/k", DeployConfig(), "clip-search")
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["model"]["storageURI"] = typo["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate_crd(typo)
    bad_type = copy.deepcopy(isvc)
    bad_type["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_crd(bad_type)


def test_built_in_kinds_pass_kubernetes_validate_strict():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    seen = []
    for text in _files(MANIFESTS).values():
        obj = yaml.safe_load(text)
        if obj["kind"] in BUILT_IN:
            kubernetes_validate.validate(obj, version, strict=True)
            seen.append(obj["kind"])
    assert sorted(seen) == ["Role", "RoleBinding", "Secret", "Secret", "ServiceAccount"]
    role = yaml.safe_load((MANIFESTS / "base" / "role-deploy.yaml").read_text())
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, version, strict=True)


def test_gpu_overlay_gives_what_deploy_creates_with_gpu():
    files = {rel: yaml.safe_load(text) for rel, text in _files(MANIFESTS).items()}
    overlay = files["overlays/gpu/kustomization.yaml"]
    assert overlay["resources"] == ["../../base"]
    for entry in overlay["patches"]:
        patch = files[f"overlays/gpu/{entry['path']}"]
        name = entry["target"]["name"]
        (base,) = [
            o for r, o in files.items() if r.startswith("base/inferenceservice-") and o["metadata"]["name"] == name
        ]
        predictor = base["metadata"]["labels"]["clipsync/predictor"]
        gpu = replace(CLUSTER.deploy, gpu=True)
        assert apply_merge_patch(base, patch) == build_inference_service(
            name, None, gpu, predictor, pool_args(predictor, CLUSTER)
        )
        pred = patch["spec"]["predictor"]
        assert pred["model"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        assert pred["tolerations"][0]["key"] == "nvidia.com/gpu" and pred["nodeSelector"]
    assert {entry["target"]["name"] for entry in overlay["patches"]} == {"clip-search-shared", "lipsync-shared"}
    base_kustomization = files["base/kustomization.yaml"]
    assert sorted(base_kustomization["resources"]) == sorted(
        r.removeprefix("base/") for r in files if r.startswith("base/") and not r.endswith("kustomization.yaml")
    )


def test_merge_patch_round_trip():
    a = {"x": 1, "y": {"z": [1, 2], "w": "keep"}, "gone": True}
    b = {"x": 2, "y": {"z": [3], "w": "keep", "new": {"k": "v"}}}
    assert apply_merge_patch(a, merge_patch_diff(a, b)) == b


def test_no_credential_values_anywhere():
    objects = manifest_objects()
    secrets = {o["metadata"]["name"]: o for o in objects.values() if isinstance(o, dict) and o.get("kind") == "Secret"}
    assert sorted(secrets) == ["clipsync-minio", "clipsync-serving-tokens"]
    assert set(secrets["clipsync-serving-tokens"]["stringData"]) == {"admin", "clients"}
    assert all("data" not in s and set(s["stringData"].values()) == {""} for s in secrets.values())
    minio = secrets["clipsync-minio"]
    assert set(minio["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ENDPOINT"}
    assert minio["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
    sa = next(o for o in objects.values() if isinstance(o, dict) and o.get("kind") == "ServiceAccount")
    assert sa["secrets"] == [{"name": "clipsync-minio"}]
    # The runtimes read both through secretKeyRef only: no value in any container.
    for rel, obj in objects.items():
        if isinstance(obj, dict) and obj.get("kind") == "ServingRuntime":
            assert all("value" not in e and "valueFrom" in e for e in obj["spec"]["containers"][0]["env"]), rel


def test_example_cluster_config_deploys_to_kserve_pools():
    assert CLUSTER.deploy.target == "kserve" and CLUSTER.deploy.kserve_mode == "multi-model"
    assert (CLUSTER.serving.tokens_env, CLUSTER.serving.admin_token_env) == (
        "CLIPSYNC_CLIENT_TOKENS",
        "CLIPSYNC_ADMIN_TOKEN",
    )
    assert "{client}" in CLUSTER.serving.query_log_uri

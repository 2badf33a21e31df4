"""deploy: one transaction per model. The registry aliases move only after the target answers with the new version;
a failure at any step leaves what is served, champions.json and the aliases as they were.

Real parts: MLflow (sqlite, and a real ``mlflow server`` stopped in the middle of a deploy), the real model server
(a subprocess, and the same app in-process when none runs), tiny real lip-sync models, and the real
``kserve.KServeClient`` against the stand-in Kubernetes API (tests/kube_standin.py). The multi-model KServe path
against a real pool server is in tests/test_serving_runtime.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kube_standin import HttpStub, StandInKube, kserve_client
from serving_assets import MlflowServer, ServerProcess, free_port, make_lipsync, python_server

from components.common import tracking as tr
from components.common.champions import champions_file, read_champions
from components.common.config import ConfigError, TrackingConfig
from components.deploy.config import DeployConfig
from components.deploy.core import (
    DeployError,
    deploy_model,
    promote,
    publish_version,
    registered_name,
    rollback_model,
    set_champion,
    storage_uri_for,
)
from components.deploy.kserve import build_inference_service, build_trained_model


def register(tracking: TrackingConfig, root: Path, client_id: str, versions: int, model: str = "lipsync") -> str:
    """``versions`` versions of a client's model; lip-sync versions are real tiny detectors (one seed each)."""
    name = registered_name(model, client_id)
    for i in range(1, versions + 1):
        folder = root / "src" / name / str(i)
        if model == "lipsync":
            make_lipsync(folder, seed=i)
        else:
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"version": i}))
        # One run per version: versions registered from one run share its "model" artifact folder.
        run_id = tr.start_parent_run(tracking, f"{name}-{i}", {})
        assert tr.register_model_dir(tracking, name, folder, run_id, alias="challenger") == str(i)
    return name


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One sqlite MLflow registry for the module; each test uses its own client id (own model names)."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking = TrackingConfig(f"sqlite:///{root / 'mlflow.db'}", "deploy-test", str(root / "art"))
    return tracking, lambda client_id, versions=3, model="lipsync": register(tracking, root, client_id, versions, model)


def aliases(tracking, name):
    return tr.get_version_by_alias(tracking, name, "champion"), tr.get_version_by_alias(tracking, name, "previous")


def kserve_cfg(tmp_path: Path, **kw) -> DeployConfig:
    return DeployConfig(target="kserve", storage_uri_prefix=str(tmp_path / "published" / "{client}"), **kw)


# ----------------------------------------------------------------------------------------------- registry


def test_promote_and_set_champion(registry):
    tracking, register = registry
    name = register("promo", model="clip")
    assert aliases(tracking, name) == (None, None)
    p = promote(tracking, name, "1")
    assert (p.champion, p.previous, p.changed, p.replaced) == ("1", None, True, None)
    p = promote(tracking, name, "2")
    assert (p.champion, p.previous, p.changed, p.replaced) == ("2", "1", True, "1")
    assert not promote(tracking, name, "2").changed
    assert aliases(tracking, name) == ("2", "1")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        promote(tracking, name, "9")
    assert aliases(tracking, name) == ("2", "1")
    p = set_champion(tracking, name, "1", previous=None)  # what a rollback does
    assert (p.champion, p.previous, p.replaced) == ("1", None, "2") and aliases(tracking, name) == ("1", None)


# ----------------------------------------------------------------------------------------------- local


def test_local_deploy_is_one_transaction(tmp_path, model_cache, monkeypatch):
    """Each step fails in turn, with a real mlflow server (stopped mid-deploy) and a real local model server."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an outage fails the call now, not in minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mlflow = MlflowServer(tmp_path / "mlflow-root")
    (tmp_path / "mlflow-root").mkdir()
    mlflow.start()
    server = None
    try:
        tracking = TrackingConfig(mlflow.url, "deploy-tx", "")
        name = register(tracking, tmp_path, "tx", versions=3)
        state = tmp_path / "state"
        port = free_port()
        cfg = DeployConfig(local_server_url=f"http://127.0.0.1:{port}", ready_timeout_s=60)

        def deploy(version, prepare=None):
            return deploy_model(tracking, "tx", state, "lipsync", version, cfg, prepare=prepare, cache_dir=model_cache)

        def recorded():
            return read_champions(state)[name]["version"]

        # No server runs: v1 is loaded by an in-process instance of the server, recorded, then promoted.
        first = deploy("1")
        assert (first.serving, recorded(), aliases(tracking, name)) == ("verified", "1", ("1", None))
        args = ["--champions", str(champions_file(state)), "--cache_dir", str(model_cache), "--host", "127.0.0.1",
                "--http_port", str(port), "--grpc_port", str(free_port())]  # fmt: skip
        server = ServerProcess(python_server(args), port, 0, tmp_path / "server.log").wait_ready()

        def served():
            return server.call("GET", f"/v2/models/{name}")[1]["versions"][0]

        assert served() == "1"
        second = deploy("2")
        assert (second.serving, served(), recorded(), aliases(tracking, name)) == ("loaded", "2", "2", ("2", "1"))
        assert "champion -> v2 (previous: v1)" in second.to_markdown()

        # The server cannot load v3 (a file of the folder is gone): nothing changes.
        with pytest.raises(DeployError, match=r"loading lipsync-tx failed: HTTP 400.*has no config.json"):
            deploy("3", prepare=lambda folder: (folder / "config.json").unlink())
        assert (served(), recorded(), aliases(tracking, name)) == ("2", "2", ("2", "1"))

        # The registry stops after v3 was prepared: v3 is loaded and answers, the alias move fails, v2 serves again.
        with pytest.raises(DeployError, match="v3 was served, but the registry aliases could not be moved"):
            deploy("3", prepare=lambda _folder: mlflow.stop())
        assert (served(), recorded()) == ("2", "2")
        # The registry is still down: the version cannot even be fetched; nothing changes.
        with pytest.raises(DeployError, match="lipsync-tx v3 could not be served"):
            deploy("3")
        assert (served(), recorded()) == ("2", "2")
        mlflow.start()
        assert aliases(tracking, name) == ("2", "1")

        # rollback names what it serves; a second one does not silently go forward again.
        back = rollback_model(tracking, "tx", state, "lipsync", cfg, cache_dir=model_cache)
        assert (back.version, served(), recorded(), aliases(tracking, name)) == ("1", "1", "1", ("1", None))
        assert "now serves v1 (was v2)" in back.to_markdown() and "--to-version 2" in back.to_markdown()
        with pytest.raises(DeployError, match=r"no alias 'previous'.*--to-version"):
            rollback_model(tracking, "tx", state, "lipsync", cfg, cache_dir=model_cache)
        with pytest.raises(DeployError, match="already is the champion"):
            rollback_model(tracking, "tx", state, "lipsync", cfg, to_version="1", cache_dir=model_cache)
        forward = rollback_model(tracking, "tx", state, "lipsync", cfg, to_version="3", cache_dir=model_cache)
        assert (forward.version, served(), recorded(), aliases(tracking, name)) == ("3", "3", "3", ("3", None))
    finally:
        if server is not None:
            server.stop()
        mlflow.stop()


def test_local_deploy_refused_by_the_in_process_check(registry, tmp_path, model_cache):
    tracking, register = registry
    name = register("inproc", versions=1)
    cfg = DeployConfig(local_server_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DeployError, match=r"in-process check.*HTTP 400.*has no model.safetensors"):
        deploy_model(
            tracking, "inproc", tmp_path, "lipsync", "1", cfg,
            prepare=lambda folder: (folder / "model.safetensors").unlink(), cache_dir=model_cache,
        )  # fmt: skip
    assert read_champions(tmp_path) == {} and aliases(tracking, name) == (None, None)


# ----------------------------------------------------------------------------------------------- KServe, per client


def test_per_client_canary_goes_to_100_percent_after_the_probe(registry, tmp_path):
    tracking, register = registry
    name = register("kok", model="clip")
    cfg = kserve_cfg(tmp_path, kserve_mode="per-client", ready_timeout_s=5)
    kube = StandInKube(broken=("/v3",))
    with HttpStub(kube) as server:
        kube.revision_url = server.url
        api = kserve_client(server.url)
        result = deploy_model(tracking, "kok", tmp_path, "clip", "1", cfg, api=api)
        assert result.serving == "ready" and result.location.endswith("/clip-kok/v1")
        isvc = kube.objects[("inferenceservices", name)]
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == result.location
        assert isvc["spec"]["predictor"]["model"]["runtime"] == "clipsync-clip-search"

        canary = kserve_cfg(tmp_path, kserve_mode="per-client", ready_timeout_s=5, canary_traffic_percent=20)
        deploy_model(tracking, "kok", tmp_path, "clip", "2", canary, api=api)
        patches = [r["body"] for r in server.requests if r["method"] == "PATCH"]
        assert all(r["type"] == "application/merge-patch+json" for r in server.requests if r["method"] == "PATCH")
        assert patches[0]["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert patches[0]["metadata"]["annotations"] == {"serving.kserve.io/enable-tag-routing": "true"}
        assert patches[1] == {"spec": {"predictor": {"canaryTrafficPercent": 100}}, "metadata": {"name": name}}
        # The canary revision was probed on its own URL before traffic moved, then the service URL.
        probes = [r["path"] for r in server.requests if r["path"].startswith("/rev/")]
        assert probes[-2:] == [f"/rev/{name}/2/v2/models/{name}", f"/rev/{name}/3/v2/models/{name}"]
        assert aliases(tracking, name) == ("2", "1")

        # v3 never becomes Ready: DeployError, the service back to v2's spec, aliases unchanged.
        with pytest.raises(DeployError, match="not Ready within 1 s: PredictorReady=False ModelLoadFailed bad weights"):
            deploy_model(
                tracking,
                "kok",
                tmp_path,
                "clip",
                "3",
                kserve_cfg(tmp_path, kserve_mode="per-client", ready_timeout_s=1),
                api=api,
            )
        assert server.requests[-1]["method"] == "PUT"
        assert kube.objects[("inferenceservices", name)]["spec"]["predictor"]["model"]["storageUri"].endswith("/v2")
        assert aliases(tracking, name) == ("2", "1")


def test_per_client_alias_failure_puts_the_service_back(registry, tmp_path):
    tracking, register = registry
    name = register("kalias", model="clip", versions=2)
    cfg = kserve_cfg(tmp_path, kserve_mode="per-client", ready_timeout_s=5)
    kube = StandInKube()
    with HttpStub(kube) as server:
        kube.revision_url = server.url
        api = kserve_client(server.url)
        deploy_model(tracking, "kalias", tmp_path, "clip", "1", cfg, api=api)
        # The registry refuses the alias move once v2 serves: the version is deleted while the rollout runs.
        kube.on_ready = lambda uri: uri.endswith("/v2") and tr._client(tracking).delete_model_version(name, "2")
        with pytest.raises(DeployError, match="v2 was served, but the registry aliases could not be moved"):
            deploy_model(tracking, "kalias", tmp_path, "clip", "2", cfg, api=api)
        assert kube.objects[("inferenceservices", name)]["spec"]["predictor"]["model"]["storageUri"].endswith("/v1")
        assert aliases(tracking, name) == ("1", None)


def test_kserve_unreachable_cluster_is_a_deploy_error(registry, tmp_path):
    tracking, register = registry
    name = register("knone", versions=1, model="clip")
    api = kserve_client(f"http://127.0.0.1:{free_port()}")
    for mode in ("multi-model", "per-client"):
        with pytest.raises(DeployError, match="cannot reach the cluster"):
            deploy_model(tracking, "knone", tmp_path, "clip", "1", kserve_cfg(tmp_path, kserve_mode=mode), api=api)
    assert aliases(tracking, name) == (None, None)


def test_multi_model_without_its_pool_is_a_deploy_error(registry, tmp_path):
    tracking, register = registry
    name = register("nopool", versions=1, model="clip")
    with HttpStub(StandInKube()) as server, pytest.raises(DeployError, match="clip-search-shared does not exist"):
        deploy_model(tracking, "nopool", tmp_path, "clip", "1", kserve_cfg(tmp_path), api=kserve_client(server.url))
    assert aliases(tracking, name) == (None, None)


# ----------------------------------------------------------------------------------------------- objects, config


def test_inference_service_and_trained_model_fields():
    cfg = DeployConfig(kserve_mode="per-client", canary_traffic_percent=10)
    isvc = build_inference_service("clip-acme", "s3://m/clip-acme/v3", cfg, "clip-search")
    pred = isvc["spec"]["predictor"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["metadata"]["namespace"] == "clipsync"
    assert pred["canaryTrafficPercent"] == 10 and pred["serviceAccountName"] == "clipsync-models"
    assert pred["model"] == {
        "name": "kserve-container",
        "modelFormat": {"name": "clip-search", "version": "1"},
        "runtime": "clipsync-clip-search",
        "storageUri": "s3://m/clip-acme/v3",
        "resources": {
            "requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
        },
    }
    assert pred["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    pool = build_inference_service("lipsync-shared", None, DeployConfig(gpu=False), "lipsync")["spec"]["predictor"]
    assert "storageUri" not in pool["model"] and pool["model"]["runtime"] == "clipsync-lipsync-mms"
    assert "tolerations" not in pool and "canaryTrafficPercent" not in pool
    tm = build_trained_model("clip-acme", "s3://m/clip-acme/v3", DeployConfig(), "clip-search")
    assert tm["spec"] == {
        "inferenceService": "clip-search-shared",
        "model": {"storageUri": "s3://m/clip-acme/v3", "framework": "clip-search", "memory": "512Mi"},
    }


def test_deploy_config_validation():
    assert storage_uri_for(DeployConfig(), "acme", "clip-acme", "3") == "s3://clipsync-models/acme/clip-acme/v3"
    for bad in (
        {"target": "cloud"},
        {"kserve_mode": "shared"},
        {"pool": "Bad_Pool"},
        {"namespace": "Bad_NS"},
        {"canary_traffic_percent": 100},
        {"canary_traffic_percent": 20},  # multi-model has no revisions
        {"ready_timeout_s": 0},
        {"local_server_url": "127.0.0.1:8080"},
        {"storage_uri_prefix": "s3://b/{other}"},
        {"storage_uri_prefix": "relative/path"},
        {"gpu_node_selector": "no-equals"},
        {"memory_limit": "lots"},
        {"trained_model_memory": "much"},
    ):
        with pytest.raises(ConfigError):
            DeployConfig(**bad)
    assert DeployConfig(kserve_mode="per-client", canary_traffic_percent=20).canary_traffic_percent == 20


def test_publish_version_to_s3(registry, monkeypatch):
    """The kserve target copies the version's files and release.json to MinIO/S3 (moto's S3 server)."""
    from minio import Minio
    from moto.server import ThreadedMotoServer

    tracking, register = registry
    name = register("s3pub", versions=2, model="clip")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {
            "MINIO_ENDPOINT": f"127.0.0.1:{port}",
            "MINIO_ACCESS_KEY": "testing",
            "MINIO_SECRET_KEY": "testing",
            "MINIO_SECURE": "0",
        }.items():
            monkeypatch.setenv(key, value)
        client = Minio(f"127.0.0.1:{port}", access_key="testing", secret_key="testing", secure=False)
        client.make_bucket("clipsync-models")
        uri = storage_uri_for(DeployConfig(), "s3pub", name, "2")
        assert publish_version(tracking, name, "2", uri) == "s3://clipsync-models/s3pub/clip-s3pub/v2"
        keys = sorted(o.object_name for o in client.list_objects("clipsync-models", recursive=True))
        assert keys == ["s3pub/clip-s3pub/v2/config.json", "s3pub/clip-s3pub/v2/release.json"]
        assert json.loads(client.get_object("clipsync-models", keys[0]).read()) == {"version": 2}
        release = json.loads(client.get_object("clipsync-models", keys[1]).read())
        assert (release["name"], release["version"], list(release["files"])) == (name, "2", ["config.json"])
        monkeypatch.delenv("MINIO_ENDPOINT")
        with pytest.raises(DeployError, match=r"cannot publish clip-s3pub v2 .*MINIO_ENDPOINT"):
            publish_version(tracking, name, "2", uri)
    finally:
        server.stop()

"""deploy: registry aliases (real MLflow on sqlite), KServe rollout against a local fake Kubernetes API, local
model server load over real HTTP, and the rule that a failed rollout never moves the champion alias."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.common import tracking as tr
from components.common.config import ConfigError, TrackingConfig
from components.deploy.config import DeployConfig
from components.deploy.core import (
    DeployError,
    build_inference_service,
    deploy_local,
    deploy_model,
    promote,
    read_champions,
    registered_name,
    rollback,
    rollback_model,
    storage_uri_for,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One sqlite MLflow registry for the module; each test uses its own client id (own model names)."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="deploy-test", artifact_location=str(root / "art")
    )

    def register(client_id: str, model: str = "clip", versions: int = 3) -> str:
        name = registered_name(model, client_id)
        for i in range(1, versions + 1):
            folder = root / "src" / name / str(i)
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"version": i}))
            # One run per version: versions registered from one run share its "model" artifact folder.
            run_id = tr.start_parent_run(tracking, f"{name}-{i}", {})
            assert tr.register_model_dir(tracking, name, folder, run_id, alias="challenger") == str(i)
        return name

    return tracking, register


def aliases(tracking, name):
    return tr.get_version_by_alias(tracking, name, "champion"), tr.get_version_by_alias(tracking, name, "previous")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 with a handler function; records every request."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw.strip() else None
                outer.requests.append(
                    {"method": self.command, "path": self.path, "type": self.headers.get("Content-Type"), "body": body}
                )
                status, reply = respond(self.command, self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class FakeKube:
    """Just enough of the Kubernetes API for InferenceServices: get/create/patch/replace, and a status that
    becomes Ready or reports a failed model load for the storageUri in ``broken``."""

    def __init__(self, broken: tuple[str, ...] = ()):
        self.objects: dict[str, dict] = {}
        self.broken = broken

    def _status(self, obj):
        gen = obj["metadata"]["generation"]
        uri = obj["spec"]["predictor"]["model"]["storageUri"]
        if any(b in uri for b in self.broken):
            conds = [
                {"type": "PredictorReady", "status": "False", "reason": "ModelLoadFailed", "message": "bad weights"},
                {"type": "Ready", "status": "False"},
            ]
        else:
            conds = [{"type": "Ready", "status": "True"}]
        obj["status"] = {"observedGeneration": gen, "conditions": conds}

    def __call__(self, method, path, body):
        prefix = "/apis/serving.kserve.io/v1beta1/namespaces/"
        if not path.startswith(prefix):
            return 404, {"kind": "Status", "code": 404, "message": f"unknown path {path}"}
        parts = path[len(prefix) :].split("?")[0].split("/")
        name = parts[2] if len(parts) > 2 else None
        if method == "GET":
            if name not in self.objects:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"{name} not found"}
            return 200, self.objects[name]
        if method == "POST":
            obj = json.loads(json.dumps(body))
            obj["metadata"].update(generation=1, resourceVersion="1")
            self._status(obj)
            self.objects[obj["metadata"]["name"]] = obj
            return 201, obj
        obj = self.objects[name]
        if method == "PATCH":
            for key, value in body["spec"]["predictor"].items():
                if value is None:
                    obj["spec"]["predictor"].pop(key, None)
                else:
                    obj["spec"]["predictor"][key] = value
        else:  # PUT
            obj["spec"] = body["spec"]
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self._status(obj)
        return 200, obj


def kserve_client(url: str):
    from kserve import KServeClient

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "clipsync"}}],
        "current-context": "fake",
    }
    return KServeClient(config_dict=kubeconfig, persist_config=False)


def kserve_cfg(tmp_path: Path, **kw) -> DeployConfig:
    return DeployConfig(target="kserve", storage_uri_prefix=str(tmp_path / "published" / "{client}"), **kw)


def test_promote_moves_previous_then_champion_and_rollback_swaps(registry):
    tracking, register = registry
    name = register("promo")
    assert aliases(tracking, name) == (None, None)
    p = promote(tracking, name, "1")
    assert (p.champion, p.previous, p.changed) == ("1", None, True)
    assert aliases(tracking, name) == ("1", None)
    p = promote(tracking, name, "2")
    assert (p.champion, p.previous, p.changed) == ("2", "1", True)
    assert not promote(tracking, name, "2").changed
    assert aliases(tracking, name) == ("2", "1")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        promote(tracking, name, "9")
    assert aliases(tracking, name) == ("2", "1")
    r = rollback(tracking, name)
    assert (r.champion, r.previous) == ("1", "2") and aliases(tracking, name) == ("1", "2")
    rollback(tracking, name)  # rolling back again rolls forward
    assert aliases(tracking, name) == ("2", "1")
    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback(tracking, register("norollback", versions=1))


def test_failed_kserve_deploy_leaves_champion_alias_untouched(registry, tmp_path):
    tracking, register = registry
    name = register("kfail")
    promote(tracking, name, "1")
    cfg = kserve_cfg(tmp_path, ready_timeout_s=1)
    kube = FakeKube(broken=("/v2",))
    with Server(kube) as server:
        api = kserve_client(server.url)
        with pytest.raises(DeployError, match="not Ready within 1 s: PredictorReady=False ModelLoadFailed bad weights"):
            deploy_model(tracking, "kfail", tmp_path, "clip", "2", cfg, api=api)
    assert aliases(tracking, name) == ("1", None)
    assert [r["method"] for r in server.requests][:2] == ["GET", "POST"]  # it really tried
    # The files were published where the InferenceService points.
    published = Path(storage_uri_for(cfg, "kfail", name, "2"))
    assert json.loads((published / "config.json").read_text()) == {"version": 2}


def test_kserve_deploy_creates_patches_and_restores_on_failure(registry, tmp_path):
    tracking, register = registry
    name = register("kok")
    kube = FakeKube(broken=("/v3",))
    with Server(kube) as server:
        api = kserve_client(server.url)
        result = deploy_model(tracking, "kok", tmp_path, "clip", "1", kserve_cfg(tmp_path, ready_timeout_s=2), api=api)
        assert result.serving == "ready" and result.location.endswith("/clip-kok/v1")
        assert aliases(tracking, name) == ("1", None)
        isvc = kube.objects["clip-search-kok"]
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == result.location
        # A canary rollout of v2: a merge patch of the existing service.
        deploy_model(
            tracking,
            "kok",
            tmp_path,
            "clip",
            "2",
            kserve_cfg(tmp_path, ready_timeout_s=2, canary_traffic_percent=20),
            api,
        )
        patch = next(r for r in server.requests if r["method"] == "PATCH")
        assert patch["type"] == "application/merge-patch+json"
        assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert aliases(tracking, name) == ("2", "1")
        # v3 never becomes ready: DeployError, service put back to v2's spec, aliases unchanged.
        with pytest.raises(DeployError, match="ModelLoadFailed"):
            deploy_model(tracking, "kok", tmp_path, "clip", "3", kserve_cfg(tmp_path, ready_timeout_s=1), api)
        assert server.requests[-1]["method"] == "PUT"
        assert kube.objects["clip-search-kok"]["spec"]["predictor"]["model"]["storageUri"].endswith("/clip-kok/v2")
        assert kube.objects["clip-search-kok"]["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert aliases(tracking, name) == ("2", "1")
        # Rollback serves v1 again (canary dropped: merge patch with null), then swaps the aliases.
        back = rollback_model(tracking, "kok", tmp_path, "clip", kserve_cfg(tmp_path, ready_timeout_s=2), api)
        assert back.version == "1" and aliases(tracking, name) == ("1", "2")
        assert "canaryTrafficPercent" not in kube.objects["clip-search-kok"]["spec"]["predictor"]


def test_kserve_unreachable_cluster_is_a_deploy_error(registry, tmp_path):
    tracking, register = registry
    name = register("knone", versions=1)
    api = kserve_client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DeployError, match="cannot reach the cluster"):
        deploy_model(tracking, "knone", tmp_path, "clip", "1", kserve_cfg(tmp_path, ready_timeout_s=1), api=api)
    assert aliases(tracking, name) == (None, None)


def test_deploy_local_loads_into_a_running_server(registry, tmp_path):
    tracking, register = registry
    name = register("loc", model="lipsync", versions=2)
    with Server(lambda method, path, body: (200, {"name": "lipsync", "load": True})) as server:
        cfg = DeployConfig(local_server_url=server.url)
        result = deploy_model(tracking, "loc", tmp_path, "lipsync", "2", cfg)
    assert result.serving == "loaded" and result.target == "local"
    assert [(r["method"], r["path"]) for r in server.requests] == [("POST", "/v2/repository/models/lipsync-loc/load")]
    record = read_champions(tmp_path)["lipsync-loc"]
    assert record["version"] == "2" and json.loads((Path(record["path"]) / "config.json").read_text()) == {"version": 2}
    assert aliases(tracking, name) == ("2", None)
    assert "champion -> v2" in result.to_markdown()


def test_deploy_local_records_when_no_server_runs(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    assert deploy_local(f"http://127.0.0.1:{free_port()}", "clip-search", model_dir, tmp_path, "4") == "recorded"
    assert read_champions(tmp_path)["clip-search"]["path"] == str(model_dir.resolve())


def test_local_server_failure_keeps_record_and_alias(registry, tmp_path):
    tracking, register = registry
    name = register("lfail", versions=2)
    with Server(lambda *a: (200, {})) as ok:
        deploy_model(tracking, "lfail", tmp_path, "clip", "1", DeployConfig(local_server_url=ok.url))
    before = read_champions(tmp_path)
    with (
        Server(lambda *a: (500, {"error": "out of memory"})) as bad,
        pytest.raises(DeployError, match=r"HTTP 500.*memory"),
    ):
        deploy_model(tracking, "lfail", tmp_path, "clip", "2", DeployConfig(local_server_url=bad.url))
    assert read_champions(tmp_path) == before
    assert aliases(tracking, name) == ("1", None)


def test_build_inference_service_fields():
    cfg = DeployConfig(canary_traffic_percent=10)
    isvc = build_inference_service("clip-search-acme", "s3://m/clip-acme/v3", cfg, "clip-search")
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
    cpu = build_inference_service("lipsync-acme", "s3://m/x", DeployConfig(gpu=False), "lipsync")["spec"]["predictor"]
    assert "tolerations" not in cpu and "canaryTrafficPercent" not in cpu
    assert "nvidia.com/gpu" not in cpu["model"]["resources"]["limits"] and cpu["model"]["runtime"] == "clipsync-lipsync"


def test_deploy_config_validation():
    assert storage_uri_for(DeployConfig(), "acme", "clip-acme", "3") == "s3://clipsync-models/acme/clip-acme/v3"
    for bad in (
        {"target": "cloud"},
        {"namespace": "Bad_NS"},
        {"canary_traffic_percent": 100},
        {"ready_timeout_s": 0},
        {"local_server_url": "127.0.0.1:8080"},
        {"storage_uri_prefix": "s3://b/{other}"},
        {"storage_uri_prefix": "relative/path"},
        {"gpu_node_selector": "no-equals"},
        {"memory_limit": "lots"},
    ):
        with pytest.raises(ConfigError):
            DeployConfig(**bad)


def test_publish_version_to_s3(registry, monkeypatch):
    """The kserve target copies the version's files to MinIO/S3 (moto's S3 server stands in for MinIO)."""
    from minio import Minio
    from moto.server import ThreadedMotoServer

    from components.deploy.core import publish_version

    tracking, register = registry
    name = register("s3pub", versions=2)
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
        keys = [o.object_name for o in client.list_objects("clipsync-models", recursive=True)]
        assert keys == ["s3pub/clip-s3pub/v2/config.json"]
        data = client.get_object("clipsync-models", keys[0]).read()
        assert json.loads(data) == {"version": 2}
        monkeypatch.delenv("MINIO_ENDPOINT")
        with pytest.raises(DeployError, match=r"cannot publish clip-s3pub v2 .*MINIO_ENDPOINT"):
            publish_version(tracking, name, "2", uri)
    finally:
        server.stop()

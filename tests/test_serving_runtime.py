"""The generated ServingRuntimes, executed: the exact command + args + env of every runtime (with the args its
InferenceService adds) runs as a subprocess against a folder laid out as KServe lays it, and is called over V1/V2
REST, gRPC, /api/lip-sync, health and metadata.

What a pod provides is mapped onto this machine and nothing else is changed: ``/mnt/models`` is a temporary folder
(the published model folder for a per-client runtime, as the storage initializer leaves it; an empty folder the
stand-in model agent fills for a multi-model runtime), the ports are free loopback ports and the host 127.0.0.1,
the serve image's face model folder is the fetched model cache, the pool's base CLIP is a tiny local base, and the
Secrets' values come from here: MinIO is moto's S3 server (the query log is written there), the token a test value.

Also here: KServe multi-model serving end to end (three clients' adapters pulled as the agent does, loaded,
queried, one unloaded; bad folders refused while the others keep serving) and the multi-model deploy against the
stand-in Kubernetes API whose model agent feeds the real pool server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kube_standin import Agent, HttpStub, StandInKube, kserve_client
from serving_assets import (
    ROOT,
    ServerProcess,
    free_port,
    make_adapter,
    make_base,
    make_face_video,
    make_lipsync,
    multipart,
)
from synthetic_frames import make_frames

from components.common.config import load_config
from components.deploy.config import ADMIN_TOKEN_KEY, CLIENT_TOKENS_KEY
from components.deploy.core import AGENT_PORT, GRPC_PORT, HTTP_PORT, MODEL_DIR, POOL_HTTP_PORT
from components.deploy.manifests import SECRET_NAME, TOKEN_SECRET, manifest_objects

pytestmark = pytest.mark.slow

TOKEN = "runtime-client-s3cret"  # a client token of every client these tests serve
ADMIN = "runtime-admin-s3cret"
CLIENTS = ["acme", "beta", "gamma", "delta", "zeta", "b1", "b2", "b3", "b4", "nobody"]
ADMIN_HEADER = {"Authorization": f"Bearer {ADMIN}"}
CLUSTER_CONFIG = ROOT / "configs" / "example-cluster.yaml"
BUCKET = "clipsync-artifacts"


def publish(src: Path, dest: Path, name: str, version: str) -> Path:
    """A model folder as deploy publishes it: the files plus release.json."""
    from serving.release import write_release

    shutil.copytree(src, dest)
    write_release(dest, name, version)
    return dest


def pod_command(runtime: dict, isvc: dict, mapping: dict[str, str], secrets: dict) -> tuple[list[str], dict]:
    """The kserve-container KServe builds: runtime command + args + the InferenceService's model args, with
    ``{{.Name}}`` templated; then each pod value in ``mapping`` replaced by its local equivalent."""
    (container,) = runtime["spec"]["containers"]
    args = container["command"] + container["args"] + isvc["spec"]["predictor"]["model"].get("args", [])
    args = [a.replace("{{.Name}}", isvc["metadata"]["name"]) for a in args]
    for pod_value, local in mapping.items():
        assert any(pod_value in a for a in args), f"{pod_value!r} not in the runtime's command line: {args}"
        args = [a.replace(pod_value, local) for a in args]
    assert args[:3] == ["python", "-m", "serving.server"]
    env = {e["name"]: secrets[(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])]
           for e in container.get("env", [])}  # fmt: skip
    return [sys.executable, *args[1:]], env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_cache):
    """Render the manifests, build the models, start moto and the four runtimes (in parallel)."""
    from moto.server import ThreadedMotoServer

    config = load_config(CLUSTER_CONFIG)
    files = manifest_objects(config)
    root = tmp_path_factory.mktemp("runtime")
    base = make_base(root / "base")
    frames = make_frames(root / "frames")
    from serving.index_build import build_index

    adapters = {}
    for client, seed in (("acme", 1), ("beta", 2), ("gamma", 3)):
        adapters[client] = make_adapter(base, root / "trained" / f"clip-{client}", seed)
        build_index(adapters[client], frames)
    other_base = make_adapter(base, root / "trained" / "clip-delta", 4, base_ref="s3://other-bucket/other-base")
    lipsync = make_lipsync(root / "trained" / "lipsync-acme")

    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    from minio import Minio

    s3 = Minio(f"127.0.0.1:{s3_port}", access_key="testing", secret_key="testing", secure=False)
    s3.make_bucket(BUCKET)
    secrets = {
        (SECRET_NAME, "AWS_ACCESS_KEY_ID"): "testing",
        (SECRET_NAME, "AWS_SECRET_ACCESS_KEY"): "testing",
        (SECRET_NAME, "MINIO_ENDPOINT"): f"http://127.0.0.1:{s3_port}",
        (TOKEN_SECRET, CLIENT_TOKENS_KEY): json.dumps({TOKEN: CLIENTS}),
        (TOKEN_SECRET, ADMIN_TOKEN_KEY): ADMIN,
    }
    servers: dict[str, ServerProcess] = {}
    dirs: dict[str, Path] = {}
    for predictor, model, src in (("clip-search", "clip", adapters["acme"]), ("lipsync", "lipsync", lipsync)):
        for multi in (False, True):
            runtime = files[f"base/servingruntime-{predictor}{'-mms' if multi else ''}.yaml"]
            isvc = files[
                f"base/inferenceservice-{predictor}-shared.yaml"
                if multi
                else f"examples/inferenceservice-{model}-acme.yaml"
            ]
            key = f"{predictor}{'-mms' if multi else ''}"
            dirs[key] = root / key / "mnt-models"
            if multi:
                dirs[key].mkdir(parents=True)
            else:
                publish(src, dirs[key], f"{model}-acme", "1")  # the storage initializer's download
            http, grpc, agent = free_port(), free_port(), free_port()
            mapping = {
                MODEL_DIR: str(dirs[key]),
                f"--http_port={POOL_HTTP_PORT if multi else HTTP_PORT}": f"--http_port={http}",
                f"--grpc_port={GRPC_PORT}": f"--grpc_port={grpc}",
                "--host=0.0.0.0": "--host=127.0.0.1",
                config.cache_dir: str(model_cache),
            }
            if multi:  # the agent listener: localhost:8080 in the pod, a free loopback port here
                mapping[f"--agent_port={AGENT_PORT}"] = f"--agent_port={agent}"
            if multi and predictor == "clip-search":
                mapping[config.finetune_clip.base_model] = str(base)
            cmd, env = pod_command(runtime, isvc, mapping, secrets)
            servers[key] = ServerProcess(cmd, http, grpc, root / f"{key}.log", env=env, token=TOKEN)
            servers[key].agent_url = f"http://127.0.0.1:{agent}"
    try:
        for srv in servers.values():
            srv.wait_ready()
        yield {
            "config": config, "files": files, "root": root, "servers": servers, "dirs": dirs, "s3": s3,
            "adapters": adapters, "other_base": other_base, "lipsync": lipsync, "base": base,
            "video": make_face_video(root / "talk.mp4"), "frames": frames,
        }  # fmt: skip
    finally:
        for srv in servers.values():
            srv.terminate()  # all at once: each takes a few seconds to shut down
        for srv in servers.values():
            srv.stop()
        moto.stop()


def v1_search(srv: ServerProcess, model: str, text: str = "surgery video", k: int = 3):
    return srv.call("POST", f"/v1/models/{model}:predict", {"instances": [{"text": text, "top_k": k}]})


def v2_text(text: str, k: int = 3) -> dict:
    return {
        "id": "r1",
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]},
            {"name": "top_k", "shape": [1], "datatype": "INT32", "data": [k]},
        ],
    }


def grpc_infer(srv: ServerProcess, model: str, inputs: list, token: str | None = TOKEN):
    from kserve import InferenceGRPCClient, InferRequest

    async def run():
        client = InferenceGRPCClient(url=f"127.0.0.1:{srv.grpc}", timeout=120)
        try:
            headers = (("authorization", f"Bearer {token}"),) if token else None
            return await client.infer(InferRequest(model, inputs, request_id="g"), headers=headers)
        finally:
            await client.close()

    return asyncio.run(run())


def grpc_text(text: str):
    from kserve import InferInput

    inp = InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return [inp]


# ------------------------------------------------------------------------------------------- per-client runtimes


def test_runtimes_carry_query_log_token_and_face_models(cluster):
    config, files = cluster["config"], cluster["files"]
    for rel in ("base/servingruntime-clip-search.yaml", "base/servingruntime-lipsync-mms.yaml"):
        (container,) = files[rel]["spec"]["containers"]
        args = container["args"]
        assert "--query_log_uri=s3://clipsync-artifacts/{client}" in args
        assert f"--query_log_flush_entries={config.serving.query_log_flush_entries}" in args
        assert f"--query_log_flush_s={config.serving.query_log_flush_s:g}" in args
        assert f"--cache_dir={config.cache_dir}" in args
        assert {"--tokens_env=CLIPSYNC_CLIENT_TOKENS", "--admin_token_env=CLIPSYNC_ADMIN_TOKEN"} <= set(args)
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert refs["CLIPSYNC_CLIENT_TOKENS"] == {"name": TOKEN_SECRET, "key": CLIENT_TOKENS_KEY}
        assert refs["CLIPSYNC_ADMIN_TOKEN"] == {"name": TOKEN_SECRET, "key": ADMIN_TOKEN_KEY}
        assert {"MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} <= set(refs)
    assert files["base/servingruntime-clip-search-mms.yaml"]["spec"]["multiModel"] is True


def test_per_client_clip_runtime_answers_every_protocol(cluster):
    srv = cluster["servers"]["clip-search"]
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert srv.call("GET", path, auth=False)[0] == 200  # health stays open
    assert v1_search(srv, "clip-acme")[0] == 200
    status, body = srv.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "x"}]}, auth=False)
    assert status == 401 and "bearer token" in body["error"]
    status, meta = srv.call("GET", "/v2/models/clip-acme")
    assert status == 200 and meta["versions"] == ["1"] and meta["name"] == "clip-acme"
    status, v1 = v1_search(srv, "clip-acme", k=4)
    assert status == 200 and len(v1["predictions"][0]["results"]) == 4
    ids = [r["video_id"] for r in v1["predictions"][0]["results"]]
    status, v2 = srv.call("POST", "/v2/models/clip-acme/infer", v2_text("surgery video", 4))
    assert status == 200, v2
    assert {o["name"]: o for o in v2["outputs"]}["video_ids"]["data"] == ids
    res = grpc_infer(srv, "clip-acme", grpc_text("surgery video"))
    got = [
        x.decode() if isinstance(x, bytes) else x
        for x in {o.name: o for o in res.outputs}["video_ids"].as_numpy().ravel()
    ]
    assert got[:4] == ids


def test_per_client_lipsync_runtime_answers_every_protocol(cluster):
    srv, data = cluster["servers"]["lipsync"], cluster["video"].read_bytes()
    status, meta = srv.call("GET", "/v2/models/lipsync-acme")
    assert status == 200 and meta["versions"] == ["1"]
    status, v1 = srv.call(
        "POST", "/v1/models/lipsync-acme:predict", {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
    )
    assert status == 200, v1
    p_fake = v1["predictions"][0]["manipulation_probability"]
    body, ctype = multipart("video_file", "talk.mp4", data)
    status, api = srv.call("POST", "/api/lip-sync", data=body, headers={"Content-Type": ctype})
    assert status == 200 and api["manipulation_probability"] == p_fake
    req = {
        "id": "v",
        "inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
    }
    status, v2 = srv.call("POST", "/v2/models/lipsync-acme/infer", req)
    assert (
        status == 200
        and abs({o["name"]: o for o in v2["outputs"]}["manipulation_probability"]["data"][0] - p_fake) < 1e-5
    )
    from kserve import InferInput

    video = InferInput("video", [1], "BYTES")
    video.set_data_from_numpy(np.array([data], dtype=np.object_))
    out = {o.name: o for o in grpc_infer(srv, "lipsync-acme", [video]).outputs}
    assert abs(float(out["manipulation_probability"].as_numpy()[0]) - p_fake) < 1e-5


# ------------------------------------------------------------------------------------------- multi-model


def pull(cluster, key: str, src: Path, name: str, version: str) -> Path:
    """What KServe's model agent does for a TrainedModel: the published folder into /mnt/models/<name>."""
    dest = cluster["dirs"][key] / name
    if dest.exists():
        shutil.rmtree(dest)
    return publish(src, dest, name, version)


def agent_call(srv: ServerProcess, name: str, action: str):
    """What KServe's model agent sends: no token, to localhost:8080 (the loopback-only agent listener)."""
    return srv.call("POST", f"/v2/repository/models/{name}/{action}", data=b"{}", auth=False, base=srv.agent_url)


def test_three_clients_on_one_pool_share_the_base(cluster):
    srv = cluster["servers"]["clip-search-mms"]
    for i, client in enumerate(("acme", "beta", "gamma")):
        pull(cluster, "clip-search-mms", cluster["adapters"][client], f"clip-{client}", str(i + 1))
        assert agent_call(srv, f"clip-{client}", "load") == (200, {"name": f"clip-{client}", "load": True})
    answers = {}
    for i, client in enumerate(("acme", "beta", "gamma")):
        assert srv.call("GET", f"/v2/models/clip-{client}")[1]["versions"] == [str(i + 1)]
        status, body = v1_search(srv, f"clip-{client}", k=4)
        assert status == 200, body
        answers[client] = [(r["video_id"], r["score"]) for r in body["predictions"][0]["results"]]
    assert len({tuple(a) for a in answers.values()}) == 3  # three adapters, three different rankings
    # The per-client server holding acme alone ranks like the pool: no adapter cross-talk on the shared base.
    assert [v for v, _ in answers["acme"]] == [
        r["video_id"]
        for r in v1_search(cluster["servers"]["clip-search"], "clip-acme", k=4)[1]["predictions"][0]["results"]
    ]
    assert srv.log().count("base CLIP") == 1 and "shared by every client of this server" in srv.log()
    assert agent_call(srv, "clip-gamma", "unload")[0] == 200
    assert v1_search(srv, "clip-gamma")[0] == 404
    assert v1_search(srv, "clip-acme")[0] == 200 and v1_search(srv, "clip-beta")[0] == 200


def test_repository_needs_the_admin_token_except_on_the_agent_listener(cluster):
    """The pool's clients' port refuses repository calls without the admin token; the agent's loopback listener
    takes load/unload without one (and nothing else)."""
    srv = cluster["servers"]["clip-search-mms"]
    pull(cluster, "clip-search-mms", cluster["adapters"]["acme"], "clip-acme", "1")
    path = "/v2/repository/models/clip-acme/load"
    assert srv.call("POST", path, data=b"{}", auth=False)[0] == 401
    status, body = srv.call("POST", path, data=b"{}")  # a client token, even of this client
    assert status == 403 and "admin token" in body["error"]
    assert srv.call("POST", path, data=b"{}", headers=ADMIN_HEADER)[0] == 200
    assert agent_call(srv, "clip-acme", "load")[0] == 200
    assert srv.call("GET", "/v2/models", auth=False, base=srv.agent_url)[0] == 404  # only load and unload there
    assert (
        srv.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "x"}]}, base=srv.agent_url)[0] == 404
    )
    assert "model agent listener on 127.0.0.1:" in srv.log()


def test_bad_model_folders_are_4xx_and_the_pool_keeps_serving(cluster):
    srv, key = cluster["servers"]["clip-search-mms"], "clip-search-mms"
    pull(cluster, key, cluster["adapters"]["acme"], "clip-acme", "1")
    assert agent_call(srv, "clip-acme", "load")[0] == 200

    broken = pull(cluster, key, cluster["adapters"]["beta"], "clip-b1", "1")
    (broken / "adapter_model.safetensors").unlink()
    status, body = agent_call(srv, "clip-b1", "load")
    assert status == 400 and "adapter_model.safetensors listed in release.json is missing" in body["error"]

    altered = pull(cluster, key, cluster["adapters"]["beta"], "clip-b2", "1")
    with open(altered / "index" / "embeddings.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    status, body = agent_call(srv, "clip-b2", "load")
    assert status == 400 and "index/embeddings.safetensors does not match its sha256" in body["error"]

    pull(cluster, key, cluster["other_base"], "clip-delta", "1")
    status, body = agent_call(srv, "clip-delta", "load")
    assert status == 400 and "trained on base 's3://other-bucket/other-base'" in body["error"]

    unreleased = cluster["dirs"][key] / "clip-b3"
    shutil.copytree(cluster["adapters"]["beta"], unreleased)
    status, body = agent_call(srv, "clip-b3", "load")
    assert status == 400 and "release.json is missing" in body["error"]

    misplaced = pull(cluster, key, cluster["adapters"]["beta"], "clip-b4", "1")
    shutil.copy(cluster["dirs"][key] / "clip-acme" / "release.json", misplaced / "release.json")
    status, body = agent_call(srv, "clip-b4", "load")
    assert status == 400 and "holds the release of 'clip-acme'" in body["error"]

    assert agent_call(srv, "clip-nobody", "load")[0] == 404
    assert agent_call(srv, "clip-nobody", "unload")[0] == 404
    assert agent_call(srv, "..", "load")[0] in (400, 404)  # never a path outside the model folder
    status, body = agent_call(srv, "Clip_Bad", "load")
    assert status == 400 and "invalid model name" in body["error"]
    # A lip-sync folder on the clip-search pool: refused by kind.
    pull(cluster, key, cluster["lipsync"], "lipsync-acme", "1")
    status, body = agent_call(srv, "lipsync-acme", "load")
    assert status == 400 and "this server serves clip-search models" in body["error"]

    assert srv.proc.poll() is None and srv.ready()
    assert v1_search(srv, "clip-acme")[0] == 200
    status, index = srv.call("POST", "/v2/repository/index", {}, headers=ADMIN_HEADER)
    rows = {row["name"]: row for row in index}
    assert status == 200 and rows["clip-acme"]["state"] == "READY" and rows["clip-acme"]["version"] == "1"
    assert rows["clip-b1"]["state"] == "UNAVAILABLE" and "adapter_model.safetensors" in rows["clip-b1"]["reason"]


def test_lipsync_pool_serves_a_detector_pulled_by_the_agent(cluster):
    srv = cluster["servers"]["lipsync-mms"]
    pull(cluster, "lipsync-mms", cluster["lipsync"], "lipsync-acme", "5")
    assert agent_call(srv, "lipsync-acme", "load")[0] == 200
    body, ctype = multipart("video_file", "talk.mp4", cluster["video"].read_bytes())
    status, api = srv.call("POST", "/api/lip-sync?model=lipsync-acme", data=body, headers={"Content-Type": ctype})
    assert status == 200 and 0 <= api["manipulation_probability"] <= 1
    assert srv.call("GET", "/v2/models/lipsync-acme")[1]["versions"] == ["5"]
    assert agent_call(srv, "lipsync-acme", "unload")[0] == 200


def test_startup_errors_name_the_file(cluster, model_cache, tmp_path, capsys, monkeypatch):
    """A per-client runtime whose folder lost a file, a lip-sync runtime whose face model was altered: exit 1."""
    from serving.server import EXIT_STARTUP_FAILED, main

    files, config = cluster["files"], cluster["config"]
    folder = publish(cluster["adapters"]["acme"], tmp_path / "mnt", "clip-acme", "1")
    (folder / "card.json").unlink()
    runtime, isvc = files["base/servingruntime-clip-search.yaml"], files["examples/inferenceservice-clip-acme.yaml"]
    secrets = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]): "x"
               for e in runtime["spec"]["containers"][0]["env"]}  # fmt: skip
    cmd, env = pod_command(runtime, isvc, {MODEL_DIR: str(folder), config.cache_dir: str(model_cache)}, secrets)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    # A token Secret that is not a JSON map: refused at start, naming the setting (never the value).
    assert main(cmd[3:]) == EXIT_STARTUP_FAILED
    assert "serving.tokens_env (CLIPSYNC_CLIENT_TOKENS): not valid JSON" in capsys.readouterr().err
    monkeypatch.setenv("CLIPSYNC_CLIENT_TOKENS", json.dumps({TOKEN: CLIENTS}))
    assert main(cmd[3:]) == EXIT_STARTUP_FAILED
    assert "card.json listed in release.json is missing" in capsys.readouterr().err

    faces = tmp_path / "cache"
    shutil.copytree(model_cache / "mediapipe", faces / "mediapipe")
    with open(faces / "mediapipe" / "face_detection_short_range.tflite", "r+b") as fh:
        fh.write(b"\x00")
    assert main(["--kind=lipsync", f"--repository_dir={tmp_path}", f"--cache_dir={faces}"]) == EXIT_STARTUP_FAILED
    assert "face_detection_short_range.tflite is not the file of mediapipe==0.10.21" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- deploy on KServe


def test_multi_model_deploy_promotes_only_what_the_pool_serves(cluster, tmp_path, monkeypatch):
    """deploy with the example cluster config: a TrainedModel per version; the stand-in agent feeds the real pool."""
    from dataclasses import replace

    from components.common import tracking as tr
    from components.common.config import TrackingConfig
    from components.deploy.core import DeployError, deploy_model, registered_name
    from serving.index_build import build_index

    monkeypatch.setenv("CLIPSYNC_ADMIN_TOKEN", ADMIN)
    tracking = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "rt", str(tmp_path / "art"))
    name = registered_name("clip", "zeta")
    for seed in (7, 8):
        run = tr.start_parent_run(tracking, f"zeta-{seed}", {})
        tr.register_model_dir(tracking, name, make_adapter(cluster["base"], tmp_path / f"z{seed}", seed), run)
    cfg = replace(
        cluster["config"].deploy, storage_uri_prefix=str(tmp_path / "published" / "{client}"), ready_timeout_s=20
    )
    srv = cluster["servers"]["clip-search-mms"]
    agent = Agent(cluster["dirs"]["clip-search-mms"], srv.agent_url)
    kube = StandInKube(agents={cfg.pool_service("clip-search"): agent})
    kube.add_pool(cfg.pool_service("clip-search"), srv.url)

    def index(folder: Path) -> None:
        build_index(folder, cluster["frames"])

    with HttpStub(kube) as api_server:
        api = kserve_client(api_server.url)
        args = dict(api=api, prepare=index, serving=cluster["config"].serving)
        result = deploy_model(tracking, "zeta", tmp_path, "clip", "1", cfg, **args)
        assert result.serving == "ready" and result.promotion.champion == "1"
        assert kube.objects[("trainedmodels", name)]["spec"]["inferenceService"] == "clip-search-shared"
        assert srv.call("GET", f"/v2/models/{name}")[1]["versions"] == ["1"]
        # v2's published folder is incomplete (publish keeps a folder that already has its release.json): the
        # pool refuses it, keeps v1, the probe never sees v2, and the TrainedModel goes back to v1.
        published_v2 = Path(cfg.storage_uri_prefix.replace("{client}", "zeta")) / name / "v2"
        published_v2.mkdir(parents=True)
        release = {"name": name, "version": "2", "files": {"missing.bin": "0" * 64}}
        (published_v2 / "release.json").write_text(json.dumps(release))
        broken_cfg = replace(cfg, ready_timeout_s=3)
        reason = "should answer with version 2 but answers with version 1; the server says: last load failed: "
        with pytest.raises(DeployError, match=reason + "clip-zeta: file missing.bin listed in release.json is missing"):
            deploy_model(tracking, "zeta", tmp_path, "clip", "2", broken_cfg, **args)
        assert tr.get_version_by_alias(tracking, name, "champion") == "1"
        assert kube.objects[("trainedmodels", name)]["spec"]["model"]["storageUri"].endswith("/v1")
        assert srv.call("GET", f"/v2/models/{name}")[1]["versions"] == ["1"]
        assert ("load", name, 400) in agent.calls  # the pool refused the broken folder and kept v1


def test_sigterm_flushes_each_clients_query_log_to_its_own_store(cluster):
    """Runs last: the clip servers stop; their query logs land in MinIO (moto) under each client's prefix."""
    for key in ("clip-search", "clip-search-mms"):
        cluster["servers"][key].terminate()
    assert [cluster["servers"][key].stop() for key in ("clip-search", "clip-search-mms")] == [0, 0]
    keys = [o.object_name for o in cluster["s3"].list_objects(BUCKET, recursive=True)]
    month = time.strftime("%Y-%m", time.gmtime())
    for client in ("acme", "beta"):
        mine = [k for k in keys if k.startswith(f"{client}/querylog/clip-{client}/{month}/")]
        assert mine, keys
        entry = json.loads(cluster["s3"].get_object(BUCKET, mine[0]).read().splitlines()[0])
        assert entry["model"] == f"clip-{client}" and entry["query"] == "surgery video" and "latency_ms" in entry

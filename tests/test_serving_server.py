"""serving: `clipsync serve --config FILE` started as a subprocess on 127.0.0.1, called over REST (V1, V2) and gRPC.

Tiny models (tests/serving_assets.py): a 1-layer CLIP base with two LoRA adapters perturbed differently (clients
acme and beta sharing the base), their indexes built from a small frames Dataset, and a tiny lip-sync detector;
the videos are encoded with PyAV. The server's settings come from the client config file, the bearer token
variable from `--auth-token-env`: the command line that used to exit at start-up (kserve took `--config` for its
own `--configure_logging`).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from serving_assets import ServerProcess, free_port, make_adapter, make_base, make_lipsync, make_video, multipart
from synthetic_frames import CATEGORIES, make_frames

torch = pytest.importorskip("torch")
pytest.importorskip("kserve")

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    base = make_base(root / "base")
    frames = make_frames(root / "frames")
    from serving.index_build import build_index

    adapters = {}
    for client, seed in (("acme", 1), ("beta", 2)):
        adapters[client] = make_adapter(base, root / f"clip-{client}", seed)
        build_index(adapters[client], frames)
    lipsync = make_lipsync(root / "lipsync-acme")
    video = make_video(root / "talk.mp4")
    return {"root": root, "base": base, "frames": frames, "adapters": adapters, "lipsync": lipsync, "video": video}


@pytest.fixture(scope="module")
def server(assets, model_cache):
    root = assets["root"]
    state = root / "state"
    champions = state / "serving" / "champions.json"
    champions.parent.mkdir(parents=True)
    champions.write_text(json.dumps({"clip-acme": {"path": str(assets["adapters"]["acme"]), "version": "1"}}))
    config = {
        "client_id": "acme",
        "state_dir": str(state),
        "cache_dir": str(model_cache),
        "serving": {
            "query_log_uri": str(root / "artifacts"),
            "query_log_flush_entries": 1,
            "max_upload_mb": 0.2,
            "batch_wait_ms": 5,
        },
    }
    (root / "acme.yaml").write_text(yaml.safe_dump(config))
    http, grpc = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "pipelines.cli", "serve", "--config", str(root / "acme.yaml"),
        "--http-port", str(http), "--grpc-port", str(grpc), "--lipsync-dir", str(assets["lipsync"]),
        "--auth-token-env", "CLIPSYNC_TEST_TOKEN",
    ]  # fmt: skip
    srv = ServerProcess(cmd, http, grpc, root / "server.log", env={"CLIPSYNC_TEST_TOKEN": TOKEN}, token=TOKEN)
    srv.champions, srv.work = champions, root
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def v1_search(srv: ServerProcess, model: str, text: str, k: int = 3):
    return srv.call("POST", f"/v1/models/{model}:predict", {"instances": [{"text": text, "top_k": k}]})


def v2_body(text: list[str], k: int | None = 3, text_type: str = "BYTES") -> dict:
    inputs = [{"name": "text", "shape": [len(text)], "datatype": text_type, "data": text}]
    if k is not None:
        inputs.append({"name": "top_k", "shape": [1], "datatype": "INT32", "data": [k]})
    return {"id": "q1", "inputs": inputs}


def outputs(body: dict) -> dict:
    return {o["name"]: o for o in body["outputs"]}


# ------------------------------------------------------------------------------------------- tests


def test_binds_loopback_and_requires_token(server):
    assert server.proc.poll() is None
    status, body = server.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "x"}]}, auth=False)
    assert status == 401 and "bearer token" in body["error"]
    assert server.ready()  # health stays open


def test_v1_and_v2_rest_search_and_adapters_differ(server, assets):
    # beta is not loaded yet: load it through the repository endpoint (champions.json re-read).
    champions = server.champions
    data = json.loads(champions.read_text())
    data["clip-beta"] = {"path": str(assets["adapters"]["beta"]), "version": "7"}
    champions.write_text(json.dumps(data))
    status, _ = server.call("POST", "/v2/repository/models/clip-beta/load", data=b"")
    assert status == 200
    status, listed = server.call("GET", "/v2/models")
    assert status == 200 and set(listed["models"]) >= {"clip-acme", "clip-beta", "lipsync-acme"}

    status, a = v1_search(server, "clip-acme", "surgery video", 4)
    assert status == 200, a
    pred = a["predictions"][0]
    assert len(pred["results"]) == 4 and 0.0 <= pred["confidence"] <= 1.0
    scores = [r["score"] for r in pred["results"]]
    assert scores == sorted(scores, reverse=True)
    assert a["calibration"]["calibrated"] is True and a["calibration"]["n_queries"] == 3
    status, b = v1_search(server, "clip-beta", "surgery video", 4)
    assert status == 200
    ids_a = [r["video_id"] for r in pred["results"]]
    ids_b = [r["video_id"] for r in b["predictions"][0]["results"]]
    assert ids_a != ids_b or scores != [r["score"] for r in b["predictions"][0]["results"]]

    # The server's answer equals the client's model loaded alone (no adapter cross-talk on the shared base).
    from components.finetune_clip.model import encode_texts, load_clip_model
    from serving.index import VideoIndex

    for client, ids in (("acme", ids_a), ("beta", ids_b)):
        bundle = load_clip_model(assets["adapters"][client], merge=False)
        with torch.no_grad():
            emb = encode_texts(bundle.model, bundle.tokenizer, ["surgery video"]).numpy()
        _, expect_ids = VideoIndex.load(assets["adapters"][client] / "index").search(emb, 4)
        assert ids == expect_ids[0]

    status, v2 = server.call("POST", "/v2/models/clip-acme/infer", v2_body(["surgery video", "curling video"], 4))
    assert status == 200, v2
    out = outputs(v2)
    assert out["video_ids"]["shape"] == [2, 4] and out["scores"]["datatype"] == "FP32"
    assert out["video_ids"]["data"][:4] == ids_a
    assert out["confidence"]["shape"] == [2] and out["low_confidence"]["datatype"] == "BOOL"


def test_embeddings_outputs(server):
    status, body = server.call(
        "POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "surgery video", "output": "text_embedding"}]}
    )
    assert status == 200
    vec = np.array(body["predictions"][0]["text_embedding"])
    assert vec.shape == (32,) and abs(np.linalg.norm(vec) - 1) < 1e-4
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), (200, 40, 40), np.uint8)).save(buf, format="PNG")
    status, body = server.call(
        "POST",
        "/v1/models/clip-acme:predict",
        {"instances": [{"image_b64": base64.b64encode(buf.getvalue()).decode()}]},
    )
    assert status == 200 and len(body["predictions"][0]["image_embedding"]) == 32
    req = v2_body(["surgery video"], None)
    req["outputs"] = [{"name": "text_embedding"}]
    status, body = server.call("POST", "/v2/models/clip-acme/infer", req)
    assert status == 200 and outputs(body)["text_embedding"]["shape"] == [1, 32]
    img = {"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [100] * 192}
    status, body = server.call("POST", "/v2/models/clip-acme/infer", {"id": "i", "inputs": [img]})
    assert status == 200 and outputs(body)["image_embedding"]["shape"] == [1, 32]


def test_grpc_search_and_lipsync(server, assets):
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run():
        client = InferenceGRPCClient(url=f"127.0.0.1:{server.grpc}", timeout=60)
        meta = (("authorization", f"Bearer {TOKEN}"),)
        text = InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"surgery video"], dtype=np.object_))
        k = InferInput("top_k", [1], "INT32")
        k.set_data_from_numpy(np.array([4], dtype=np.int32))
        res = await client.infer(InferRequest("clip-acme", [text, k], request_id="g1"), headers=meta)
        out = {o.name: o for o in res.outputs}
        ids = [x.decode() if isinstance(x, bytes) else x for x in out["video_ids"].as_numpy().reshape(-1)]
        _, v1 = v1_search(server, "clip-acme", "surgery video", 4)
        assert ids == [r["video_id"] for r in v1["predictions"][0]["results"]]
        with pytest.raises(grpc.aio.AioRpcError) as err:  # no token
            await client.infer(InferRequest("clip-acme", [text, k], request_id="g2"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = InferInput("text", [1], "FP32")
        bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(InferRequest("clip-acme", [bad], request_id="g3"), headers=meta)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "BYTES" in err.value.details()
        video = InferInput("video", [1], "BYTES")
        video.set_data_from_numpy(np.array([assets["video"].read_bytes()], dtype=np.object_))
        res = await client.infer(InferRequest("lipsync-acme", [video], request_id="g4"), headers=meta)
        out = {o.name: o for o in res.outputs}
        conf, p_fake = float(out["confidence"].as_numpy()[0]), float(out["manipulation_probability"].as_numpy()[0])
        assert abs(conf + p_fake - 1) < 1e-5 and bool(out["is_fake"].as_numpy()[0]) != bool(
            out["is_real"].as_numpy()[0]
        )
        assert len(out["window_probabilities"].as_numpy()) >= 1
        await client.close()

    asyncio.run(run())


def test_lipsync_rest_v1_v2_and_multipart(server, assets):
    data = assets["video"].read_bytes()
    status, body = server.call(
        "POST", "/v1/models/lipsync-acme:predict", {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
    )
    assert status == 200, body
    pred = body["predictions"][0]
    assert set(pred) >= {"is_real", "is_fake", "confidence", "manipulation_probability", "face_track", "fallback_used"}
    assert pred["is_real"] != pred["is_fake"] and abs(pred["confidence"] + pred["manipulation_probability"] - 1) < 1e-5
    assert pred["fallback_used"] is True and pred["face_track"] == -1  # no face in the synthetic clip
    assert len(pred["windows"]) >= 2 and pred["analyzed"]["frames"] == 50

    req = {
        "id": "v",
        "inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
    }
    status, body = server.call("POST", "/v2/models/lipsync-acme/infer", req)
    assert status == 200, body
    assert abs(outputs(body)["manipulation_probability"]["data"][0] - pred["manipulation_probability"]) < 1e-5

    form, ctype = multipart("video_file", "talk.mp4", data)
    status, body = server.call("POST", "/api/lip-sync", data=form, headers={"Content-Type": ctype})
    assert status == 200, body
    assert body["manipulation_probability"] == pred["manipulation_probability"]


def test_bad_inputs_are_4xx_and_server_stays_healthy(server, assets):
    bad_v1 = [
        ({"instances": [{"text": "   "}]}, "empty"),
        ({"instances": [{"text": "surgery", "top_k": 0}]}, "top_k"),
        ({"instances": [{"text": "surgery", "top_k": 10**9}]}, "top_k"),
        ({"instances": [{"text": 5}]}, "string"),
        ({"instances": []}, "instances"),
    ]
    for body, word in bad_v1:
        status, answer = server.call("POST", "/v1/models/clip-acme:predict", body)
        assert status == 400 and word in answer["error"], (body, answer)
    status, answer = server.call("POST", "/v2/models/clip-acme/infer", v2_body(["1.5"], 3, text_type="FP32"))
    assert 400 <= status < 500 and "BYTES" in answer["error"]
    status, answer = server.call("POST", "/v2/models/clip-acme/infer", v2_body(["a"], 0))
    assert status == 400 and "top_k" in answer["error"]

    def lipsync(blob: bytes):
        return server.call(
            "POST", "/v1/models/lipsync-acme:predict", {"instances": [{"video_b64": base64.b64encode(blob).decode()}]}
        )

    good = assets["video"].read_bytes()
    status, answer = lipsync(good[: len(good) // 3] + os.urandom(2000))  # corrupt: truncated + garbage
    assert status == 400, answer
    status, answer = lipsync(b"this is plain text, not a video at all" * 20)
    assert status == 400 and "video" in answer["error"]
    status, answer = lipsync(os.urandom(150_000))  # over the 0.2 MiB limit after base64? no: raw 146 KiB < 205 KiB
    assert status == 400
    status, answer = lipsync(os.urandom(250_000))  # 244 KiB > 0.2 MiB
    assert status == 413 and "limit" in answer["error"]
    # The size guard answers from Content-Length alone, before any of the body is sent (sending a body it
    # will not read would race the server's close: the client may see a broken pipe instead of the 413).
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    conn.putrequest("POST", "/v1/models/lipsync-acme:predict")
    for name, value in (("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")):
        conn.putheader(name, value)
    conn.putheader("Content-Length", "1500000")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "upload limit" in json.loads(response.read())["error"]
    conn.close()
    assert server.ready() and server.proc.poll() is None
    status, _ = v1_search(server, "clip-acme", "surgery video")
    assert status == 200


def test_concurrent_requests_are_batched_without_errors(server):
    texts = [f"{c} video" for c in CATEGORIES] * 8

    def one(i: int):
        if i % 2:
            return v1_search(server, "clip-acme", texts[i], 3)
        return server.call("POST", "/v2/models/clip-beta/infer", v2_body([texts[i]], 3))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(len(texts))))
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    assert server.ready()


def test_unload_then_query_log(server, assets):
    status, _ = server.call("POST", "/v2/repository/models/clip-beta/unload", data=b"")
    assert status == 200
    status, _ = v1_search(server, "clip-beta", "surgery video")
    assert status == 404
    status, _ = v1_search(server, "clip-acme", "surgery video")  # the shared base still serves acme
    assert status == 200
    from components.common.storage import LocalStore
    from serving.querylog import read_month

    month = time.strftime("%Y-%m", time.gmtime())
    entries = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not entries:
        entries = read_month(LocalStore(assets["root"] / "artifacts"), "clip-acme", month)
        time.sleep(0.2)
    assert entries, "no query log written"
    e = entries[0]
    assert e["model"] == "clip-acme" and e["query"] == "surgery video"
    assert set(e) >= {"ts", "top_score", "confidence", "latency_ms", "low_confidence"}
    assert "frames" not in json.dumps(e)


def test_sigterm_stops_cleanly(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert "model server stopped" in server.log()

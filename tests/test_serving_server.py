"""serving: `clipsync serve --config FILE` started as a subprocess on 127.0.0.1, called over REST (V1, V2) and gRPC.

Tiny models (tests/conftest.py `serving_models`): a 1-layer CLIP base with two LoRA adapters perturbed differently
(clients acme and beta sharing the base), their indexes built from a small frames Dataset, and a tiny lip-sync
detector; the videos are encoded with PyAV (a talking head with a real face and speech, and the clips that carry no
evidence for a verdict). The server's settings come from the client config file, the token settings from
`--tokens-env` / `--admin-token-env`: the command line that used to exit at start-up (kserve took `--config` for its
own `--configure_logging`). The server holds at most 8 requests per model and takes bodies up to about 1 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from serving_assets import ROOT, ServerProcess, free_port, multipart, png_bomb, png_header_only
from synthetic_frames import CATEGORIES

torch = pytest.importorskip("torch")
pytest.importorskip("kserve")

pytestmark = pytest.mark.slow

ACME = "acme-client-token-0001"
BETA = "beta-client-token-0002"
ADMIN = "admin-token-000000003"
MAX_QUEUE = 8


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(serving_models, model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    state = root / "state"
    champions = state / "serving" / "champions.json"
    champions.parent.mkdir(parents=True)
    champions.write_text(json.dumps({"clip-acme": {"path": str(serving_models["adapters"]["acme"]), "version": "1"}}))
    config = {
        "client_id": "acme",
        "state_dir": str(state),
        "cache_dir": str(model_cache),
        "serving": {
            "query_log_uri": str(root / "artifacts"),
            "query_log_flush_entries": 1,
            "max_upload_mb": 0.75,  # request bodies up to 4/3 of it + 64 KiB: 1.0 MiB
            "batch_wait_ms": 5,
            "max_queue": MAX_QUEUE,
        },
    }
    (root / "acme.yaml").write_text(yaml.safe_dump(config))
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "pipelines.cli", "serve", "--config", str(root / "acme.yaml"),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--lipsync-dir", str(serving_models["lipsync"]),
        "--tokens-env", "CLIPSYNC_TEST_TOKENS", "--admin-token-env", "CLIPSYNC_TEST_ADMIN",
    ]  # fmt: skip
    env = {"CLIPSYNC_TEST_TOKENS": json.dumps({ACME: ["acme"], BETA: ["beta"]}), "CLIPSYNC_TEST_ADMIN": ADMIN}
    srv = ServerProcess(cmd, http_port, grpc_port, root / "server.log", env=env, token=ACME)
    srv.champions, srv.work = champions, root
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def v1_search(srv: ServerProcess, model: str, text: str, k: int = 3, token: str = ACME):
    return srv.call(
        "POST", f"/v1/models/{model}:predict", {"instances": [{"text": text, "top_k": k}]}, headers=bearer(token)
    )


def v2_body(text: list[str], k: int | None = 3, text_type: str = "BYTES") -> dict:
    inputs = [{"name": "text", "shape": [len(text)], "datatype": text_type, "data": text}]
    if k is not None:
        inputs.append({"name": "top_k", "shape": [1], "datatype": "INT32", "data": [k]})
    return {"id": "q1", "inputs": inputs}


def v2_video(data: bytes) -> dict:
    return {
        "id": "v",
        "inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
    }


def outputs(body: dict) -> dict:
    return {o["name"]: o for o in body["outputs"]}


def grpc_call(srv: ServerProcess, method: str, request, token: str | None = ACME):
    """One unary call on kserve's generated stub; returns the response or the ``grpc.aio.AioRpcError``."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as stubs

    async def run():
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{srv.grpc}", options=[("grpc.max_send_message_length", 8 * 2**20)]
        ) as channel:
            stub = stubs.GRPCInferenceServiceStub(channel)
            try:
                return await getattr(stub, method)(
                    request, metadata=(("authorization", f"Bearer {token}"),) if token else None, timeout=120
                )
            except grpc.aio.AioRpcError as err:
                return err

    return asyncio.run(run())


def grpc_video(data: bytes, model: str = "lipsync-acme"):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="video", datatype="BYTES", shape=[1])
    return pb.ModelInferRequest(
        model_name=model, id="g", inputs=[tensor], raw_input_contents=[struct.pack("<I", len(data)) + data]
    )


def grpc_outputs(response) -> dict:
    """Name -> numpy array of a ModelInferResponse, read from ``raw_output_contents`` (as tritonclient reads it)."""
    from kserve.protocol.infer_type import deserialize_bytes_tensor

    dtypes = {"FP32": np.float32, "INT32": np.int32, "BOOL": np.bool_}
    out = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        out[tensor.name] = (
            deserialize_bytes_tensor(raw) if tensor.datatype == "BYTES" else np.frombuffer(raw, dtypes[tensor.datatype])
        )
    return out


# ------------------------------------------------------------------------------------------- search


def test_binds_loopback_and_requires_token(server):
    assert server.proc.poll() is None
    status, body = server.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "x"}]}, auth=False)
    assert status == 401 and "bearer token" in body["error"]
    status, body = server.call(
        "POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "x"}]}, headers=bearer("x" * 20)
    )
    assert status == 401
    assert server.ready()  # health stays open
    assert ACME not in server.log() and ADMIN not in server.log()  # tokens are never logged


def test_v1_and_v2_rest_search_and_adapters_differ(server, serving_models):
    # beta is not loaded yet: load it through the repository endpoint (admin token; champions.json re-read).
    champions = server.champions
    data = json.loads(champions.read_text())
    data["clip-beta"] = {"path": str(serving_models["adapters"]["beta"]), "version": "7"}
    champions.write_text(json.dumps(data))
    status, _ = server.call("POST", "/v2/repository/models/clip-beta/load", data=b"", headers=bearer(ADMIN))
    assert status == 200
    status, listed = server.call("GET", "/v2/models", headers=bearer(ADMIN))
    assert status == 200 and set(listed["models"]) >= {"clip-acme", "clip-beta", "lipsync-acme"}

    status, a = v1_search(server, "clip-acme", "surgery video", 4)
    assert status == 200, a
    pred = a["predictions"][0]
    assert len(pred["results"]) == 4 and 0.0 <= pred["confidence"] <= 1.0
    scores = [r["score"] for r in pred["results"]]
    assert scores == sorted(scores, reverse=True)
    assert a["calibration"]["calibrated"] is True and a["calibration"]["n_queries"] == 3
    status, b = v1_search(server, "clip-beta", "surgery video", 4, token=BETA)
    assert status == 200
    ids_a = [r["video_id"] for r in pred["results"]]
    ids_b = [r["video_id"] for r in b["predictions"][0]["results"]]
    assert ids_a != ids_b or scores != [r["score"] for r in b["predictions"][0]["results"]]

    # The server's answer equals the client's model loaded alone (no adapter cross-talk on the shared base).
    from components.finetune_clip.model import encode_texts, load_clip_model
    from serving.index import VideoIndex

    for client, ids in (("acme", ids_a), ("beta", ids_b)):
        bundle = load_clip_model(serving_models["adapters"][client], merge=False)
        with torch.no_grad():
            emb = encode_texts(bundle.model, bundle.tokenizer, ["surgery video"]).numpy()
        _, expect_ids = VideoIndex.load(serving_models["adapters"][client] / "index").search(emb, 4)
        assert ids == expect_ids[0]

    status, v2 = server.call("POST", "/v2/models/clip-acme/infer", v2_body(["surgery video", "curling video"], 4))
    assert status == 200, v2
    out = outputs(v2)
    assert out["video_ids"]["shape"] == [2, 4] and out["scores"]["datatype"] == "FP32"
    assert out["video_ids"]["data"][:4] == ids_a
    assert out["confidence"]["shape"] == [2] and out["low_confidence"]["datatype"] == "BOOL"
    assert v2["model_version"] == "1" and "parameters" not in out["scores"]  # no nulls outside the OIP schema


def test_embeddings_outputs(server):
    status, body = server.call(
        "POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "surgery video", "output": "text_embedding"}]}
    )
    assert status == 200
    vec = np.array(body["predictions"][0]["text_embedding"])
    assert vec.shape == (32,) and abs(np.linalg.norm(vec) - 1) < 1e-4
    image = base64.b64encode(png_bomb(side=40)).decode()
    status, body = server.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"image_b64": image}]})
    assert status == 200 and len(body["predictions"][0]["image_embedding"]) == 32
    req = v2_body(["surgery video"], None)
    req["outputs"] = [{"name": "text_embedding"}]
    status, body = server.call("POST", "/v2/models/clip-acme/infer", req)
    assert status == 200 and outputs(body)["text_embedding"]["shape"] == [1, 32]
    img = {"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [100] * 192}
    status, body = server.call("POST", "/v2/models/clip-acme/infer", {"id": "i", "inputs": [img]})
    assert status == 200 and outputs(body)["image_embedding"]["shape"] == [1, 32]


def test_grpc_search_fills_raw_output_contents(server):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run():
        client = InferenceGRPCClient(url=f"127.0.0.1:{server.grpc}", timeout=60)
        text = InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"surgery video"], dtype=np.object_))
        k = InferInput("top_k", [1], "INT32")
        k.set_data_from_numpy(np.array([4], dtype=np.int32))
        res = await client.infer(
            InferRequest("clip-acme", [text, k], request_id="g1"), headers=(("authorization", f"Bearer {ACME}"),)
        )
        await client.close()
        return res

    res = asyncio.run(run())
    out = {o.name: o for o in res.outputs}
    ids = [x.decode() if isinstance(x, bytes) else x for x in out["video_ids"].as_numpy().reshape(-1)]
    _, v1 = v1_search(server, "clip-acme", "surgery video", 4)
    assert ids == [r["video_id"] for r in v1["predictions"][0]["results"]]
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    meta = grpc_call(server, "ModelMetadata", pb.ModelMetadataRequest(name="clip-acme"))
    search_and_feedback = {"text", "top_k", "image", "query_id", "video_id", "relevant", "label"}
    assert list(meta.versions) == ["1"] and {t.name for t in meta.inputs} == search_and_feedback
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    raw = struct.pack("<I", 13) + b"surgery video"
    response = grpc_call(
        server, "ModelInfer", pb.ModelInferRequest(model_name="clip-acme", inputs=[tensor], raw_input_contents=[raw])
    )
    assert len(response.raw_output_contents) == len(response.outputs) == 5  # KServe's form: raw, not typed contents
    assert grpc_outputs(response)["scores"].shape == (5,) and len(grpc_outputs(response)["query_id"][0]) == 32
    bad = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1.0])
    )
    err = grpc_call(server, "ModelInfer", pb.ModelInferRequest(model_name="clip-acme", inputs=[bad]))
    assert err.code().name == "INVALID_ARGUMENT" and "must be BYTES" in err.details()


# ------------------------------------------------------------------------------------------- lipsync


def test_lipsync_verdict_with_its_evidence_on_every_protocol(server, serving_models):
    data = serving_models["face"].read_bytes()
    status, body = server.call(
        "POST", "/v1/models/lipsync-acme:predict", {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
    )
    assert status == 200, body
    pred = body["predictions"][0]
    assert pred["verdict"] in ("real", "fake") and pred["is_real"] != pred["is_fake"]
    assert abs(pred["confidence"] + pred["manipulation_probability"] - 1) < 1e-5
    assert (pred["has_audio"], pred["fallback_used"], pred["faces_seen"], pred["face_track"]) == (True, False, 1, 0)
    assert pred["face_px"] >= 32 and pred["face_score"] >= 0.7
    assert pred["analyzed"]["duration_s"] == 2.0 and pred["analyzed"]["frames"] == 50 and len(pred["windows"]) >= 2

    status, body = server.call("POST", "/v2/models/lipsync-acme/infer", v2_video(data))
    assert status == 200, body
    out = outputs(body)
    assert out["verdict"]["data"] == [pred["verdict"]] and out["has_audio"]["data"] == [True]
    assert out["faces_seen"]["data"] == [1] and out["fallback_used"]["data"] == [False]
    assert out["analyzed_duration_s"]["data"] == [2.0]
    assert abs(out["manipulation_probability"]["data"][0] - pred["manipulation_probability"]) < 1e-5

    form, ctype = multipart("video_file", "talk.mp4", data)
    status, body = server.call("POST", "/api/lip-sync", data=form, headers={"Content-Type": ctype})
    assert status == 200, body
    assert body["manipulation_probability"] == pred["manipulation_probability"] and body["faces_seen"] == 1

    response = grpc_call(server, "ModelInfer", grpc_video(data))
    out = grpc_outputs(response)
    assert (
        out["verdict"][0].decode() == pred["verdict"] and bool(out["has_audio"][0]) and int(out["faces_seen"][0]) == 1
    )
    assert abs(float(out["manipulation_probability"][0]) - pred["manipulation_probability"]) < 1e-5


@pytest.mark.parametrize(
    ("video", "codes"),
    [
        ("no_audio", ["no_audio"]),
        ("no_face", ["no_face"]),
        ("one_frame", ["too_short"]),  # 1 frame: a GIF-like clip
        ("tiny", ["face_too_small", "face_low_confidence"]),  # 16 x 16 noise: MediaPipe's "face" in it
    ],
)
def test_lipsync_without_evidence_gets_no_verdict_on_every_protocol(server, serving_models, video, codes):
    """Before: no audio -> "fake" 0.86; no face and no audio (1 frame) -> "real" 0.98; 16 x 16 -> "fake" 0.985."""
    data = serving_models[video].read_bytes()
    answers = {
        "v1": server.call(
            "POST", "/v1/models/lipsync-acme:predict", {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
        ),
        "v2": server.call("POST", "/v2/models/lipsync-acme/infer", v2_video(data)),
        "api": server.call(
            "POST",
            "/api/lip-sync",
            data=multipart("video_file", "v.mp4", data)[0],
            headers={"Content-Type": multipart("f", "v", b"")[1]},
        ),
    }
    for protocol, (status, body) in answers.items():
        assert status == 422, (protocol, body)
        assert body["reasons"] == codes and body["reason"] == codes[0], protocol
        assert body["error"].startswith(f"no verdict: {codes[0]} (") and "verdict" not in body, protocol
        assert {"has_audio", "faces_seen", "fallback_used", "analyzed"} <= set(body), protocol
    assert answers["v1"][1]["has_audio"] is (video != "no_audio")
    assert answers["v1"][1]["fallback_used"] is (video == "no_face")
    err = grpc_call(server, "ModelInfer", grpc_video(data))
    assert err.code().name == "FAILED_PRECONDITION" and err.details().startswith(f"no verdict: {codes[0]} (")


# ------------------------------------------------------------------------------------------- bad input, limits


def _bad_requests(serving_models) -> list[tuple[str, str, dict, object, set[int]]]:
    """(label, path, headers, body, accepted statuses): every malformed request tried against the server."""
    face = serving_models["face"].read_bytes()
    garbage = os.urandom(3000)
    v1 = "/v1/models/clip-acme:predict"
    v2 = "/v2/models/clip-acme/infer"
    lip_v1, lip_v2 = "/v1/models/lipsync-acme:predict", "/v2/models/lipsync-acme/infer"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "video",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(garbage) + 4},
                }
            ]
        }
    ).encode()
    binary = header + struct.pack("<I", len(garbage)) + garbage

    def tensor(name, shape, datatype, data):
        return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}

    def image(raw: bytes) -> dict:
        return {"instances": [{"image_b64": base64.b64encode(raw).decode()}]}

    def video(raw: bytes) -> dict:
        return {"instances": [{"video_b64": base64.b64encode(raw).decode()}]}

    return [
        ("v1 empty text", v1, {}, {"instances": [{"text": "   "}]}, {400}),
        ("v1 top_k 0", v1, {}, {"instances": [{"text": "surgery", "top_k": 0}]}, {400}),
        ("v1 top_k 2**70", v1, {}, {"instances": [{"text": "surgery", "top_k": 2**70}]}, {400}),
        ("v1 text not a string", v1, {}, {"instances": [{"text": 5}]}, {400}),
        ("v1 no instances", v1, {}, {"instances": []}, {400}),
        ("v1 not JSON", v1, {"Content-Type": "application/json"}, b"{nope", {400}),
        ("v1 bad output", v1, {}, {"instances": [{"text": "a", "output": "x"}]}, {400}),
        ("v1 image 12000x12000 png (140 KB)", v1, {}, image(png_bomb()), {413}),
        ("v1 99-byte png claiming 20000x20000", v1, {}, image(png_header_only()), {413}),
        ("v1 truncated png", v1, {}, image(png_header_only(side=16)), {400}),
        ("v1 image not base64", v1, {}, {"instances": [{"image_b64": "%%%"}]}, {400}),
        (
            "v1 two 4096x4096 images: the request's pixels",
            v1,
            {},
            {"instances": image(png_bomb(4096))["instances"] * 2},
            {413},
        ),
        ("v2 shape [2] with one element", v2, {}, tensor("text", [2], "BYTES", ["a"]), {400}),
        ("v2 image value 300", v2, {}, tensor("image", [1, 1, 1, 3], "UINT8", [300, 0, 0]), {400}),
        ("v2 image value -1", v2, {}, tensor("image", [1, 1, 1, 3], "UINT8", [-1, 0, 0]), {400}),
        ("v2 image shape [1,2,2]", v2, {}, tensor("image", [1, 2, 2], "UINT8", [0] * 4), {400}),
        (
            "v2 top_k 2**70",
            v2,
            {},
            {
                "inputs": [
                    *v2_body(["a"], None)["inputs"],
                    {"name": "top_k", "shape": [1], "datatype": "INT64", "data": [2**70]},
                ]
            },
            {400},
        ),
        ("v2 top_k 0", v2, {}, v2_body(["a"], 0), {400}),
        ("v2 text as FP32", v2, {}, v2_body(["1.5"], 3, text_type="FP32"), {400}),
        ("v2 huge shape", v2, {}, tensor("text", [2**40, 2**40], "BYTES", ["a"]), {400}),
        ("v2 nested ragged data", v2, {}, tensor("image", [1, 1, 2, 3], "UINT8", [[1, 2, 3], [4]]), {400}),
        ("v2 unknown input", v2, {}, tensor("nope", [1], "BYTES", ["a"]), {400}),
        ("v2 unknown output", v2, {}, {**v2_body(["a"]), "outputs": [{"name": "nope"}]}, {400}),
        ("v2 inputs not a list", v2, {}, {"inputs": "x"}, {400}),
        ("v2 no inputs", v2, {}, {"inputs": []}, {400}),
        ("v2 not JSON", v2, {}, b"\xff\xfe not json", {400}),
        ("v2 header length abc", v2, {"Inference-Header-Content-Length": "abc"}, b'{"inputs": []}', {400}),
        ("v2 header length past the body", v2, {"Inference-Header-Content-Length": "999"}, b'{"inputs": []}', {400}),
        (
            "v2 binary size past the body",
            lip_v2,
            {"Inference-Header-Content-Length": str(len(header))},
            binary[:-10],
            {400},
        ),
        (
            "v2 video via binary extension, not a video",
            lip_v2,
            {"Inference-Header-Content-Length": str(len(header))},
            binary,
            {400},
        ),
        ("v2 video not base64", lip_v2, {}, tensor("video", [1], "BYTES", ["%%%"]), {400}),
        ("v2 two videos", lip_v2, {}, tensor("video", [2], "BYTES", ["AAAA", "AAAA"]), {400}),
        ("v1 video garbage", lip_v1, {}, video(garbage), {400}),
        ("v1 video truncated", lip_v1, {}, video(face[: len(face) // 3]), {400, 422}),
        ("v1 video plain text", lip_v1, {}, video(b"this is plain text, not a video at all" * 20), {400}),
        ("v1 two instances", lip_v1, {}, {"instances": [{"video_b64": "AAAA"}] * 2}, {400}),
        ("v1 video over the upload limit", lip_v1, {}, video(os.urandom(800_000)), {413}),
        ("v1 body over the limit", lip_v1, {}, video(os.urandom(900_000)), {413}),
        ("api not multipart", "/api/lip-sync", {"Content-Type": "text/plain"}, b"hello", {400}),
        (
            "api no video_file",
            "/api/lip-sync",
            {"Content-Type": multipart("x", "a", b"")[1]},
            multipart("other", "a", b"1")[0],
            {400},
        ),
        ("unknown model", "/v2/models/clip-zeta/infer", {}, v2_body(["a"]), {403}),
        ("unknown version", "/v2/models/clip-acme/versions/9/infer", {}, v2_body(["a"]), {404}),
    ]


def test_bad_inputs_are_4xx_with_short_messages_and_the_server_stays_healthy(server, serving_models):
    """Before: 500s and reset connections, a 60 KB body echoing the upload, server temp paths in messages."""
    cases = _bad_requests(serving_models)
    outcomes = {}
    for label, path, headers, body, expected in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **headers}
        status, answer = server.call("POST", path, data=data, headers=hdrs)
        outcomes[label] = status
        assert status in expected, (label, status, answer)
        message = answer.get("error", "")
        assert message and len(json.dumps(answer)) < 1000, (label, answer)  # short, never the payload echoed
        assert "/tmp" not in message and str(ROOT) not in message and "clipsync-lipsync-" not in message, (
            label,
            message,
        )
    assert len(cases) == 42 and set(outcomes.values()) <= {400, 403, 404, 413, 422}
    sys.stderr.write(f"bad-input cases: {len(cases)}; outcomes: {sorted(outcomes.items())}\n")
    assert server.ready() and server.proc.poll() is None
    assert v1_search(server, "clip-acme", "surgery video")[0] == 200


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    conn.putrequest("POST", "/v1/models/lipsync-acme:predict")
    for name, value in (("Authorization", f"Bearer {ACME}"), ("Content-Type", "application/json")):
        conn.putheader(name, value)
    conn.putheader("Content-Length", "1500000")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    conn.close()


def test_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server):
    """A 200 MiB chunked body against the 1 MiB limit: before, it was read in full before the 413."""
    chunk = os.urandom(1 << 20)
    sock = socket.create_connection(("127.0.0.1", server.http), timeout=30)
    head = (
        "POST /v1/models/lipsync-acme:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ACME}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    sent, reply = 0, b""
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    try:
        while sent < 200 << 20:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(framed)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in reply:
            piece = sock.recv(65536)
            if not piece:
                break
            reply += piece
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 32 << 20, f"{sent >> 20} MiB were sent before the server answered"
    assert server.ready()


# ------------------------------------------------------------------------------------------- isolation


def test_a_client_token_reaches_only_its_clients_models_on_every_route(server, serving_models):
    """Before: one token covered every client, including unloading another client's model."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    denied = [
        ("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": "surgery"}]}),
        ("GET", "/v1/models/clip-acme", None),
        ("GET", "/v2/models/clip-acme", None),
        ("GET", "/v2/models/clip-acme/ready", None),
        ("GET", "/v2/models/clip-acme/config", None),
        ("GET", "/v2/models/clip-acme/versions/1", None),
        ("POST", "/v2/models/clip-acme/infer", v2_body(["surgery"])),
        ("POST", "/v2/models/clip-acme/versions/1/infer", v2_body(["surgery"])),
        ("POST", "/v2/models/clip-nobody/infer", v2_body(["surgery"])),  # 403 whether it exists or not
        ("POST", "/api/lip-sync?model=lipsync-acme", None),
        ("POST", "/v2/repository/models/clip-acme/unload", {}),  # the repository needs the admin token
        ("POST", "/v2/repository/models/clip-beta/load", {}),  # even for its own client
        ("POST", "/v2/repository/index", {}),
        ("GET", "/metrics", None),  # per-client model names and counts: admin only
    ]
    for method, path, body in denied:
        status, answer = server.call(
            method, path, body, data=b"" if body is None and method == "POST" else None, headers=bearer(BETA)
        )
        assert status == 403, (path, status, answer)
        assert "may not call" in answer["error"] or "admin token" in answer["error"], path
    status, listed = server.call("GET", "/v2/models", headers=bearer(BETA))
    assert status == 200 and "clip-acme" not in listed["models"] and "lipsync-acme" not in listed["models"]
    # With no lip-sync model of its own, /api/lip-sync has nothing for this caller.
    form, ctype = multipart("video_file", "v.mp4", b"x")
    assert server.call("POST", "/api/lip-sync", data=form, headers={**bearer(BETA), "Content-Type": ctype})[0] == 503
    for method, request in (
        (
            "ModelInfer",
            pb.ModelInferRequest(
                model_name="clip-acme",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"a"])
                    )
                ],
            ),
        ),
        ("ModelMetadata", pb.ModelMetadataRequest(name="clip-acme")),
        ("ModelReady", pb.ModelReadyRequest(name="lipsync-acme")),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="clip-beta")),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="clip-beta")),
    ):
        err = grpc_call(server, method, request, token=BETA)
        assert err.code().name == "PERMISSION_DENIED", (method, err)
    assert (
        grpc_call(server, "ModelMetadata", pb.ModelMetadataRequest(name="clip-acme"), token=None).code().name
        == "UNAUTHENTICATED"
    )
    assert grpc_call(server, "ServerReady", pb.ServerReadyRequest(), token=None).ready  # health stays open
    # The admin sees the metrics (the refusals are counted there).
    status, metrics = server.call("GET", "/metrics", headers=bearer(ADMIN))
    assert status == 200 and "clipsync_requests_refused_total" in metrics["raw"]


# ------------------------------------------------------------------------------------------- load


def test_concurrent_requests_are_batched_without_errors(server):
    texts = [f"{c} video" for c in CATEGORIES] * 8

    def one(i: int):
        if i % 2:
            return v1_search(server, "clip-acme", texts[i], 3)
        return server.call("POST", "/v2/models/clip-beta/infer", v2_body([texts[i]], 3), headers=bearer(BETA))

    with ThreadPoolExecutor(max_workers=MAX_QUEUE) as pool:
        answers = list(pool.map(one, range(len(texts))))
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    assert server.ready()


def test_load_past_capacity_is_refused_not_queued(server):
    """128 clients (honouring Retry-After) for 3 s against a queue of 8 (before: nothing refused, p99 22.7 s): no
    5xx, every refusal counted in /metrics, health answered throughout (probed from another process)."""
    from serving_assets import load_benchmark

    bench = load_benchmark()
    before = bench.refused_total(server.url, ADMIN)
    with bench.HealthProbe(server.url) as probe:
        result = asyncio.run(bench.overload(server.url, "clip-acme", ACME, clients=128, seconds=3.0))
    health = probe.latencies_ms
    refused = bench.refused_total(server.url, ADMIN) - before
    slow = sorted(health)[-5:]
    sys.stderr.write(f"load: {json.dumps(result)}; health slowest {slow} ms of {len(health)} probes\n")
    assert result["status"].get("200", 0) > 0 and result["status"].get("429", 0) > 0
    assert set(result["status"]) <= {"200", "429"} and result["transport_errors"] == 0
    assert refused == result["status"]["429"]
    # Every probe answered and none stalled (12 s before). The bounds leave room for a 2-core machine that other
    # processes load (p95 reached 101 ms at load average 8); the 100 ms figure is measured, with its baseline,
    # by benchmarks/serving_load.py, not asserted here.
    assert len(health) >= 20 and probe.failures == 0
    assert sorted(health)[int(0.95 * len(health))] < 500 and max(health) < 2000
    assert result["p99_ms_ok"] < 10_000


def test_grpc_past_the_queue_is_resource_exhausted(server):
    """64 gRPC searches at once against a queue of 8: the ones beyond it are refused at once, nothing else fails."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as stubs

    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    request = pb.ModelInferRequest(model_name="clip-acme", inputs=[tensor], raw_input_contents=[b"\x07\0\0\0surgery"])

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
            stub = stubs.GRPCInferenceServiceStub(channel)

            async def one():
                try:
                    await stub.ModelInfer(request, metadata=(("authorization", f"Bearer {ACME}"),), timeout=60)
                    return "OK"
                except grpc.aio.AioRpcError as err:
                    return err.code().name

            return await asyncio.gather(*(one() for _ in range(64)))

    codes = asyncio.run(run())
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert server.ready()


def test_unload_then_query_log(server, serving_models):
    status, _ = server.call("POST", "/v2/repository/models/clip-beta/unload", data=b"", headers=bearer(ADMIN))
    assert status == 200
    status, _ = v1_search(server, "clip-beta", "surgery video", token=BETA)
    assert status == 404
    status, _ = v1_search(server, "clip-acme", "surgery video")  # the shared base still serves acme
    assert status == 200
    from components.common.storage import LocalStore
    from serving.querylog import read_month

    month = time.strftime("%Y-%m", time.gmtime())
    entries = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not entries:
        entries = read_month(LocalStore(server.work / "artifacts"), "clip-acme", month)
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

"""tritonclient (NVIDIA's V2 client, independent of KServe) against a running clipsync model server; prints JSON.

Run as a subprocess by ``tests/test_serving_conformance.py``: tritonclient's gRPC protos and kserve's both register
``inference.*`` in protobuf's default pool, so the two cannot be imported into one process (the test process
imports kserve). Usage: ``python tests/tritonclient_checks.py CONFIG_JSON`` with ``http``, ``grpc`` (host:port),
``token``, ``other_token`` (a token of another client), ``face``, ``mute`` (video paths).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def bearer(token: str) -> dict[str, str]:
    """A fresh header dict per call (tritonclient's HTTP client adds its own entries to the one it is given);
    lower case, as gRPC metadata keys must be."""
    return {"authorization": f"Bearer {token}"}


def refusal(call) -> dict:
    """Run ``call``; the status and message of the error it raised."""
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "none", "message": ""}


def text_inputs(module, json_mode: bool) -> list:
    text = module.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(
        np.array([b"surgery video"], dtype=np.object_), **({"binary_data": False} if json_mode else {})
    )
    top_k = module.InferInput("top_k", [1], "INT32")
    top_k.set_data_from_numpy(np.array([3], dtype=np.int32), **({"binary_data": False} if json_mode else {}))
    return [text, top_k]


def video_input(module, data: bytes, json_mode: bool = False):
    video = module.InferInput("video", [1], "BYTES")
    if json_mode:
        video.set_data_from_numpy(np.array([base64.b64encode(data)], dtype=np.object_), binary_data=False)
    else:
        video.set_data_from_numpy(np.array([data], dtype=np.object_))
    return video


def main() -> None:
    cfg = json.loads(sys.argv[1])
    token, other_token = cfg["token"], cfg["other_token"]
    face, mute = Path(cfg["face"]).read_bytes(), Path(cfg["mute"]).read_bytes()
    http = httpclient.InferenceServerClient(cfg["http"], network_timeout=120.0, connection_timeout=120.0)
    grpc = grpcclient.InferenceServerClient(cfg["grpc"])
    out: dict = {}

    out["http_live"] = http.is_server_live(headers=bearer(token))
    out["grpc_ready"] = grpc.is_server_ready(headers=bearer(token))
    for model in ("clip-acme", "lipsync-acme"):
        meta = http.get_model_metadata(model, headers=bearer(token))
        gmeta = grpc.get_model_metadata(model, headers=bearer(token), as_json=True)
        config = http.get_model_config(model, headers=bearer(token))
        gconfig = grpc.get_model_config(model, headers=bearer(token), as_json=True)["config"]
        out[model] = {
            "ready": [
                http.is_model_ready(model, headers=bearer(token)),
                grpc.is_model_ready(model, headers=bearer(token)),
            ],
            "versions": [meta["versions"], gmeta["versions"]],
            "inputs": [[t["name"] for t in meta["inputs"]], [t["name"] for t in gmeta["inputs"]]],
            "config_inputs": [
                [(t["name"], t["data_type"]) for t in config["input"]],
                [(t["name"], t["data_type"]) for t in gconfig["input"]],
            ],
            "config_outputs": [len(config["output"]), len(gconfig["output"])],
        }

    # clip-search: JSON mode, binary mode, gRPC; the same ranking each way.
    ids = {}
    json_outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("video_ids", "scores")]
    result = http.infer("clip-acme", text_inputs(httpclient, True), outputs=json_outputs, headers=bearer(token))
    ids["http_json"] = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("video_ids").ravel()]
    result = http.infer("clip-acme", text_inputs(httpclient, False), headers=bearer(token))
    ids["http_binary"] = [v.decode() for v in result.as_numpy("video_ids").ravel()]
    out["http_binary_scores_shape"] = list(result.as_numpy("scores").shape)
    result = grpc.infer("clip-acme", text_inputs(grpcclient, False), headers=bearer(token))
    ids["grpc"] = [v.decode() for v in result.as_numpy("video_ids").ravel()]
    out["grpc_raw_outputs"] = len(result.get_response().raw_output_contents)
    out["clip_ids"] = ids
    image = np.full((1, 8, 8, 3), 120, np.uint8)
    embeddings = []
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        inp = module.InferInput("image", [1, 8, 8, 3], "UINT8")
        inp.set_data_from_numpy(image)
        embeddings.append(client.infer("clip-acme", [inp], headers=bearer(token)).as_numpy("image_embedding").tolist())
    out["image_embedding_shape"] = list(np.array(embeddings[0]).shape)
    out["image_embedding_same"] = bool(np.allclose(embeddings[0], embeddings[1], atol=1e-5))

    # lipsync: the raw video with the binary extension, base64 in JSON mode, raw bytes over gRPC.
    verdicts = {}
    for label, call in (
        ("http_binary", lambda: http.infer("lipsync-acme", [video_input(httpclient, face)], headers=bearer(token))),
        (
            "http_json",
            lambda: http.infer(
                "lipsync-acme",
                [video_input(httpclient, face, json_mode=True)],
                outputs=[
                    httpclient.InferRequestedOutput(n, binary_data=False)
                    for n in ("verdict", "manipulation_probability", "has_audio", "faces_seen")
                ],
                headers=bearer(token),
            ),
        ),
        ("grpc", lambda: grpc.infer("lipsync-acme", [video_input(grpcclient, face)], headers=bearer(token))),
    ):
        result = call()
        verdict = result.as_numpy("verdict")[0]
        verdicts[label] = {
            "verdict": verdict.decode() if isinstance(verdict, bytes) else verdict,
            "p_fake": round(float(result.as_numpy("manipulation_probability")[0]), 5),
            "has_audio": bool(result.as_numpy("has_audio")[0]),
            "faces_seen": int(result.as_numpy("faces_seen")[0]),
        }
    out["lipsync"] = verdicts

    # Refusals: no evidence, not a video, another client's model; short messages.
    out["no_audio_http"] = refusal(
        lambda: http.infer("lipsync-acme", [video_input(httpclient, mute)], headers=bearer(token))
    )
    out["no_audio_grpc"] = refusal(
        lambda: grpc.infer("lipsync-acme", [video_input(grpcclient, mute)], headers=bearer(token))
    )
    garbage = bytes(range(256)) * 200
    out["garbage_http"] = refusal(
        lambda: http.infer("lipsync-acme", [video_input(httpclient, garbage)], headers=bearer(token))
    )
    out["garbage_grpc"] = refusal(
        lambda: grpc.infer("lipsync-acme", [video_input(grpcclient, garbage)], headers=bearer(token))
    )
    out["other_client_http"] = refusal(
        lambda: http.infer("clip-acme", text_inputs(httpclient, False), headers=bearer(other_token))
    )
    out["other_client_grpc"] = refusal(
        lambda: grpc.infer("clip-acme", text_inputs(grpcclient, False), headers=bearer(other_token))
    )
    out["other_client_config_grpc"] = refusal(lambda: grpc.get_model_config("clip-acme", headers=bearer(other_token)))
    http.close()
    grpc.close()
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()

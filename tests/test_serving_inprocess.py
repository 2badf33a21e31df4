"""serving: the model server's app in-process (httpx's ASGI transport, no listener), for the answers that need a
setting or a state a running server is not in: verdicts marked ``inconclusive`` (``serving.inconclusive_verdicts``),
a model that is not ready (HTTP 503 with ``Retry-After``), the per-request deadline (HTTP 504) and the search
index's parameters in the model metadata; and clients' LoRA adapters sharing one base (``ClipBackbones``),
without the server around them."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from serving_assets import multipart

pytest.importorskip("kserve")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(serving_models, model_cache):
    from serving.auth import AccessPolicy
    from serving.config import ServingConfig
    from serving.repository import ModelSpec
    from serving.server import build_server

    settings = ServingConfig(inconclusive_verdicts=True, query_log_uri="off")
    specs = [
        ModelSpec("clip-acme", "clip-search", str(serving_models["adapters"]["acme"]), "1"),
        ModelSpec("lipsync-acme", "lipsync", str(serving_models["lipsync"]), "1"),
    ]
    server, _ = build_server(settings, specs, cache_dir=model_cache, query_log_uri="off", policy=AccessPolicy())
    yield server
    for name in list(server.registered_models.get_models()):
        server.registered_models.unload(name)


def call(server, method: str, path: str, **kwargs) -> httpx.Response:
    async def run():
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=120) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def test_a_client_config_may_ask_for_inconclusive_verdicts(app, serving_models):
    data = serving_models["no_audio"].read_bytes()
    body = {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
    v1 = call(app, "POST", "/v1/models/lipsync-acme:predict", json=body)
    assert v1.status_code == 200, v1.text
    pred = v1.json()["predictions"][0]
    assert (pred["verdict"], pred["reason"], pred["reasons"]) == ("inconclusive", "no_audio", ["no_audio"])
    assert pred["is_real"] is False and pred["is_fake"] is False and "confidence" not in pred
    assert pred["has_audio"] is False and pred["faces_seen"] == 1 and pred["analyzed"]["duration_s"] == 2.0
    v2 = call(app, "POST", "/v2/models/lipsync-acme/infer", json={"inputs": [
        {"name": "video", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}
    ]})  # fmt: skip
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert outputs["verdict"] == ["inconclusive"] and outputs["reason"] == ["no_audio"]
    assert outputs["has_audio"] == [False] and "manipulation_probability" not in outputs
    form, ctype = multipart("video_file", "mute.mp4", data)
    api = call(app, "POST", "/api/lip-sync", content=form, headers={"Content-Type": ctype})
    assert api.status_code == 200 and api.json()["verdict"] == "inconclusive"


def test_a_model_that_is_not_ready_is_503_with_retry_after(app):
    for name in ("clip-acme", "lipsync-acme"):
        app.registered_models.get_model(name).ready = False
    try:
        text = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}
        for path, kwargs in (
            ("/v1/models/clip-acme:predict", {"json": {"instances": [{"text": "surgery"}]}}),
            ("/v2/models/clip-acme/infer", {"json": {"inputs": [text]}}),
            ("/api/lip-sync", {"content": b"", "headers": {"Content-Type": multipart("f", "v", b"")[1]}}),
        ):
            answer = call(app, "POST", path, **kwargs)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["Retry-After"] == "5" and "is not ready" in answer.json()["error"], path
        assert call(app, "GET", "/v2/health/live").status_code == 200
    finally:
        for name in ("clip-acme", "lipsync-acme"):
            app.registered_models.get_model(name).ready = True
    assert (
        call(app, "POST", "/v1/models/clip-acme:predict", json={"instances": [{"text": "surgery"}]}).status_code == 200
    )


def test_a_request_past_its_deadline_is_504(app, serving_models):
    admission = app.dataplane.admission
    data = serving_models["face"].read_bytes()
    before, admission.timeout_s = admission.timeout_s, 0.05
    try:
        body = {"instances": [{"video_b64": base64.b64encode(data).decode()}]}
        answer = call(app, "POST", "/v1/models/lipsync-acme:predict", json=body)
        assert answer.status_code == 504 and "serving.request_timeout_s" in answer.json()["error"]
        form, ctype = multipart("video_file", "face.mp4", data)
        assert call(app, "POST", "/api/lip-sync", content=form, headers={"Content-Type": ctype}).status_code == 504
    finally:
        admission.timeout_s = before
    assert admission.in_flight == {}  # every place in the queues was given back


def test_metadata_carries_the_search_index_parameters(app):
    meta = call(app, "GET", "/v2/models/clip-acme").json()
    assert meta["versions"] == ["1"] and meta["platform"] == "clipsync"
    assert meta["parameters"]["index"] == "exact" and meta["parameters"]["index_videos"] >= 1
    assert call(app, "GET", "/v2/models/clip-acme/versions/1").json() == meta
    assert "parameters" not in call(app, "GET", "/v2/models/lipsync-acme").json()  # nothing to say there


def test_adapters_sharing_a_base_answer_as_if_alone_when_requests_alternate(serving_models):
    """peft's ``set_adapter`` runs only when another adapter was active (it walks every module); requests that
    alternate between clients, and requests after a detach (which activates another adapter), still get their own."""
    import numpy as np

    from serving.clip_backbones import ClipBackbones

    texts = ["a red circle", "surgery"]
    alone = {}
    for client in ("acme", "beta"):
        backbones = ClipBackbones(device="cpu")
        alone[client] = backbones.attach(f"clip-{client}", serving_models["adapters"][client]).encode_texts(texts)
    assert not np.allclose(alone["acme"], alone["beta"], atol=1e-4)  # the two adapters do differ
    shared = ClipBackbones(device="cpu")
    handles = {c: shared.attach(f"clip-{c}", serving_models["adapters"][c]) for c in ("acme", "beta")}
    gamma = shared.attach("clip-gamma", serving_models["adapters"]["acme"])  # acme's weights under a third name
    for client in ("acme", "beta", "beta", "acme", "beta"):
        np.testing.assert_allclose(handles[client].encode_texts(texts), alone[client], atol=1e-5)
    assert handles["beta"].backbone.active == handles["beta"].adapter
    shared.detach(gamma)  # peft activates the first remaining adapter (acme's) while beta's was the last used
    np.testing.assert_allclose(handles["beta"].encode_texts(texts), alone["beta"], atol=1e-5)
    shared.detach(handles["acme"])
    again = shared.attach("clip-acme", serving_models["adapters"]["acme"])
    np.testing.assert_allclose(again.encode_texts(texts), alone["acme"], atol=1e-5)
    np.testing.assert_allclose(handles["beta"].encode_texts(texts), alone["beta"], atol=1e-5)


def test_v1_predict_keeps_the_answers_of_kserves_route(app):
    """``POST /v1/models/<name>:predict`` is answered by ``LeanV1Predict`` (ahead of FastAPI's router): what kserve's
    route answered stays, errors included (status, body, headers; the same table passed on the code before it)."""
    from serving.kserve_adapter import LeanV1Predict
    from serving.routes import Gate

    assert [m.cls for m in app.app.user_middleware] == [Gate, LeanV1Predict]  # the gate first, then the lean path
    v1, json_ = "/v1/models/clip-acme:predict", {"Content-Type": "application/json"}
    search = b'{"instances": [{"text": "surgery", "top_k": 2}]}'
    cases = [  # (method, path, body, headers, status, error message or None for an answer)
        ("POST", v1, search, json_, 200, None),
        ("POST", v1, search, {}, 200, None),  # no content type: JSON all the same
        ("POST", "/v1/models/clip-zeta:predict", search, json_, 404, "Model with name clip-zeta does not exist."),
        (
            "POST",
            v1,
            b"{nope",
            json_,
            400,
            "Unrecognized request format: unexpected character, expected a string key: line 1 column 2 (char 1)",
        ),
        ("POST", v1, b"[1, 2]", json_, 400, "expected a JSON object with 'instances'"),
        ("POST", v1, search, {"Content-Type": "text/plain"}, 400, "expected a JSON object with 'instances'"),
        (
            "POST",
            v1,
            b'{"instances": [{"text": "surgery", "top_k": 0}]}',
            json_,
            400,
            "instance 0: 'top_k' must be 1..100, got 0",
        ),
        ("POST", "/v1/models/:predict", b"{}", json_, 405, "Method Not Allowed"),  # kserve's GET route's path
        ("GET", v1, None, {}, 404, "Model with name clip-acme:predict does not exist."),
    ]
    for method, path, body, headers, status, error in cases:
        answer = call(app, method, path, content=body, headers=headers)
        assert (answer.status_code, answer.headers["content-type"]) == (status, "application/json"), (path, body)
        if error is None:
            results = answer.json()["predictions"][0]["results"]
            assert len(results) == 2 and results[0]["score"] >= results[1]["score"]
        else:
            assert answer.json()["error"].startswith(error), (path, body, answer.text)
    model = app.registered_models.get_model("clip-acme")

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug at /srv/secret")

    async def post():
        transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
            return await client.post(v1, content=search, headers=json_)

    model.predict = broken
    try:
        answer = asyncio.run(post())
    finally:
        del model.predict
    assert answer.status_code == 500 and answer.json() == {"error": "internal error (logged by the server)"}
    assert app.dataplane.admission.in_flight == {}

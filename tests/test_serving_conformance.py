"""serving: Open Inference Protocol (V2) conformance of the model server, for both models.

- tritonclient, NVIDIA's own V2 client (HTTP in JSON and binary mode, gRPC), against the real server: health,
  metadata, model configuration, inference, refusals (``tests/tritonclient_checks.py`` in a subprocess:
  tritonclient's gRPC protos cannot share a process with kserve's).
- schemathesis against KServe's OIP v2 REST spec (vendored: ``tests/specs/``): zero 5xx, zero schema violations
  (status codes, content types, bodies) on the paths served. The spec is adapted at load time, never edited:
  its ``${MODEL_NAME}`` templates become OpenAPI ``{MODEL_NAME}`` (schemathesis would send the ``$``); each
  ``/versions/{MODEL_VERSION}`` path also gets its unversioned form (the version is optional in the protocol,
  and it is the form clients use); ``MODEL_NAME`` and ``MODEL_VERSION`` are the served models and their version
  (other names and versions are 403/404 answers the spec does not list, tested apart below). The fuzzing is
  bounded by ``MAX_EXAMPLES`` per operation and derandomized: schema-valid requests on every operation, and
  request bodies outside the schema on the infer operations.

One server for the module: ``python -m serving.server`` with both models from a ``champions.json`` (version 1),
client tokens and the admin token (schemathesis calls as the admin: the spec has no security scheme).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from serving_assets import ROOT, ServerProcess, free_port, python_server

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("kserve")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402

pytestmark = pytest.mark.slow

SPEC = Path(__file__).parent / "specs" / "rest_predict_v2.yaml"
ACME = "acme-client-token-0001"
BETA = "beta-client-token-0002"
ADMIN = "admin-token-000000003"
MODELS = ["clip-acme", "lipsync-acme"]
#: Examples per operation and strategy (9 operations, the 3 infer ones also with negative bodies for each model).
MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def server(serving_models, model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    champions = root / "champions.json"
    folders = {"clip-acme": serving_models["adapters"]["acme"], "lipsync-acme": serving_models["lipsync"]}
    champions.write_text(json.dumps({name: {"path": str(path), "version": "1"} for name, path in folders.items()}))
    http_port, grpc_port = free_port(), free_port()
    args = [
        f"--champions={champions}", f"--cache_dir={model_cache}", "--query_log_uri=off",
        "--http_port", str(http_port), "--grpc_port", str(grpc_port),
        "--tokens_env=CLIPSYNC_TEST_TOKENS", "--admin_token_env=CLIPSYNC_TEST_ADMIN",
    ]  # fmt: skip
    env = {"CLIPSYNC_TEST_TOKENS": json.dumps({ACME: ["acme"], BETA: ["beta"]}), "CLIPSYNC_TEST_ADMIN": ADMIN}
    srv = ServerProcess(python_server(args), http_port, grpc_port, root / "server.log", env=env, token=ACME)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def adapted_spec() -> dict:
    """The vendored spec in the form schemathesis can drive (see the module doc)."""
    raw = yaml.safe_load(SPEC.read_text())
    spec = copy.deepcopy(raw)
    spec["paths"] = {}
    for path, item in raw["paths"].items():
        path = path.replace("${", "{")
        spec["paths"][path] = item
        if "/versions/{MODEL_VERSION}" in path:
            twin = copy.deepcopy(item)
            twin["parameters"] = [p for p in twin.get("parameters", []) if p["name"] != "MODEL_VERSION"]
            for operation in twin.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    operation["operationId"] += "-unversioned"
            spec["paths"][path.replace("/versions/{MODEL_VERSION}", "")] = twin
    for item in spec["paths"].values():
        for param in item.get("parameters", []):
            param["schema"] = {"type": "string", "enum": MODELS if param["name"] == "MODEL_NAME" else ["1"]}
    return spec


def test_the_vendored_spec_is_kserves_and_its_adaptation_keeps_every_operation():
    assert (SPEC.parent / "KSERVE_LICENSE").read_text().startswith(" " * 33 + "Apache License")
    spec = adapted_spec()
    versioned = [p for p in spec["paths"] if "/versions/" in p]
    assert len(versioned) == 3 and all(p.replace("/versions/{MODEL_VERSION}", "") in spec["paths"] for p in versioned)
    assert {"/v2/health/live", "/v2/health/ready", "/v2/"} < set(spec["paths"]) and len(spec["paths"]) == 9


def test_tritonclient_http_and_grpc_for_both_models(server, serving_models):
    """Before: HTTP JSON mode got 400, gRPC results could not be read with as_numpy, model_config was missing."""
    config = {
        "http": f"127.0.0.1:{server.http}",
        "grpc": f"127.0.0.1:{server.grpc}",
        "token": ACME,
        "other_token": BETA,
        "face": str(serving_models["face"]),
        "mute": str(serving_models["no_audio"]),
    }
    script = Path(__file__).parent / "tritonclient_checks.py"
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(config)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["http_live"] and out["grpc_ready"]
    for model in MODELS:
        facts = out[model]
        assert facts["ready"] == [True, True] and facts["versions"] == [["1"], ["1"]], model
        assert facts["inputs"][0] == facts["inputs"][1] and facts["config_inputs"][0] == facts["config_inputs"][1]

    # clip: 6 search and embedding outputs, query_id, and the feedback outputs feedback_id and query_known
    assert out["clip-acme"]["config_outputs"] == [9, 9] and out["lipsync-acme"]["config_outputs"] == [13, 13]
    assert out["clip-acme"]["config_inputs"][0][0] == ["text", "TYPE_STRING"]
    assert out["lipsync-acme"]["config_inputs"][0] == [["video", "TYPE_STRING"]]
    ids = out["clip_ids"]
    assert len(ids["http_json"]) == 3 and ids["http_json"] == ids["http_binary"] == ids["grpc"]
    assert out["http_binary_scores_shape"] == [1, 3] and out["grpc_raw_outputs"] == 5  # query_id too
    assert out["image_embedding_shape"] == [1, 32] and out["image_embedding_same"]
    verdicts = out["lipsync"]
    assert verdicts["http_binary"] == verdicts["http_json"] == verdicts["grpc"], verdicts
    assert verdicts["grpc"]["verdict"] in ("real", "fake") and verdicts["grpc"]["has_audio"]
    assert verdicts["grpc"]["faces_seen"] == 1
    assert out["no_audio_http"]["status"] == "422" and "no_audio" in out["no_audio_http"]["message"]
    assert out["no_audio_grpc"]["status"] == "StatusCode.FAILED_PRECONDITION"
    for key in ("garbage_http", "garbage_grpc"):  # a video via the binary extension: 400, short, no echo
        assert out[key]["status"] in ("400", "StatusCode.INVALID_ARGUMENT"), out[key]
        assert "not a decodable video" in out[key]["message"] and len(out[key]["message"]) < 300
    assert out["other_client_http"]["status"] == "403"
    assert (
        out["other_client_grpc"]["status"]
        == out["other_client_config_grpc"]["status"]
        == "StatusCode.PERMISSION_DENIED"
    )


def test_open_inference_protocol_spec(server):
    """Every operation, positive data (and negative request bodies, with the served names in the path): no 5xx,
    and every answer's status, content type and body as the spec has them."""
    schema = schemathesis.openapi.from_dict(adapted_spec())
    schema.config.update(base_url=server.url)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[int] = Counter()
    for operation in operations:
        strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
        if operation.body:  # infer: bodies outside the schema, at the real model paths
            for model in MODELS:
                fixed = {p.name: model if p.name == "MODEL_NAME" else "1" for p in operation.path_parameters}
                strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed))
        for strategy in strategies:

            @given(case=strategy)
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                response = case.call(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=checks)

            run()
    sys.stderr.write(
        f"schemathesis: {len(operations)} operations, answers by status {dict(sorted(statuses.items()))}\n"
    )
    assert len(operations) == 9 and set(statuses) <= {200, 400}


def test_versions_the_server_does_not_serve_are_404_in_the_spec_error_shape(server):
    """Before: 501 on every /versions/{v} path; ``versions: null`` in metadata."""
    for path in ("/v2/models/clip-acme/versions/2", "/v2/models/clip-acme/versions/2/ready"):
        status, body = server.call("GET", path)
        assert status == 404 and set(body) == {"error"} and "has no version 2" in body["error"]
    status, body = server.call("POST", "/v2/models/lipsync-acme/versions/0/infer", {"inputs": []})
    assert status == 404 and set(body) == {"error"}
    status, body = server.call("GET", "/v2/models/clip-acme/versions/1")
    assert status == 200 and body["versions"] == ["1"] and body["platform"] == "clipsync"
    status, body = server.call("POST", "/v2/models/clip-acme/infer", {"inputs": "not a list"})
    assert status == 400 and set(body) == {"error"}  # FastAPI's 422 {"detail": [...]} is gone

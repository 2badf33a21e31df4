"""Feedback capture against the real model server (a subprocess on 127.0.0.1) storing into moto's S3 server.

Every search answer carries a query_id (V1, V2, gRPC and the query log); ``POST /api/feedback`` and the V2 feedback
inputs (REST and gRPC) store answers as JSON Lines objects under ``feedback/clip-acme/<YYYY-MM>/`` of the client's
S3 prefix before they acknowledge them; tokens are scoped to their clients; bad input and floods are refused with
short messages; ``clipsync feedback export`` writes the month as CSV.
"""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from serving_assets import ServerProcess, free_port, python_server
from test_storage import ACCESS, SECRET, make_bucket, moto_endpoint  # noqa: F401 (the session's S3 server)

pytest.importorskip("kserve")
pytestmark = pytest.mark.slow

ACME = "acme-client-token-0001"
ACME_FLOOD = "acme-second-token-0009"  # another token of acme: its own feedback budget
BETA = "beta-client-token-0002"
ADMIN = "admin-token-000000003"
PER_MINUTE = 30


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def s3(moto_endpoint):  # noqa: F811
    return {"endpoint": moto_endpoint, "bucket": make_bucket(moto_endpoint)}


@pytest.fixture(scope="module")
def server(serving_models, s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback-serve")
    http_port, grpc_port = free_port(), free_port()
    cmd = python_server(
        [
            "--load", f"clip-acme={serving_models['adapters']['acme']}",
            "--http_port", str(http_port), "--grpc_port", str(grpc_port),
            "--query_log_uri", f"s3://{s3['bucket']}/{{client}}", "--query_log_flush_entries", "1",
            "--feedback_per_minute", str(PER_MINUTE),
            "--tokens_env", "CLIPSYNC_TEST_TOKENS", "--admin_token_env", "CLIPSYNC_TEST_ADMIN",
        ]
    )  # fmt: skip
    env = {
        "CLIPSYNC_TEST_TOKENS": json.dumps({ACME: ["acme"], ACME_FLOOD: ["acme"], BETA: ["beta"]}),
        "CLIPSYNC_TEST_ADMIN": ADMIN,
        "MINIO_ENDPOINT": s3["endpoint"],
        "MINIO_ACCESS_KEY": ACCESS,
        "MINIO_SECRET_KEY": SECRET,
    }
    srv = ServerProcess(cmd, http_port, grpc_port, root / "server.log", env=env, token=ACME)
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture()
def acme_store(s3, monkeypatch):
    from components.common.storage import open_store

    monkeypatch.setenv("MINIO_ENDPOINT", s3["endpoint"])
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    return open_store(f"s3://{s3['bucket']}/acme")


def month() -> str:
    return time.strftime("%Y-%m", time.gmtime())


def search(srv: ServerProcess, text: str, k: int = 3) -> dict:
    status, body = srv.call("POST", "/v1/models/clip-acme:predict", {"instances": [{"text": text, "top_k": k}]})
    assert status == 200, body
    return body["predictions"][0]


def feedback(srv: ServerProcess, body, token: str = ACME, query: str = ""):
    return srv.call("POST", f"/api/feedback{query}", body, headers=bearer(token))


def grpc_infer(srv: ServerProcess, request, token: str = ACME):
    import asyncio

    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as stubs

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc}") as channel:
            try:
                return await stubs.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
                )
            except grpc.aio.AioRpcError as err:
                return err

    return asyncio.run(run())


def grpc_outputs(response) -> dict:
    import numpy as np
    from kserve.protocol.infer_type import deserialize_bytes_tensor

    return {
        t.name: deserialize_bytes_tensor(raw) if t.datatype == "BYTES" else np.frombuffer(raw, np.bool_)
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_every_search_answer_carries_a_query_id_and_the_query_log_has_it(server, acme_store):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from serving.querylog import read_month

    v1 = search(server, "surgery video")
    status, v2 = server.call(
        "POST",
        "/v2/models/clip-acme/infer",
        {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["surgery video", "curling"]}]},
    )
    assert status == 200, v2
    v2_ids = next(o for o in v2["outputs"] if o["name"] == "query_id")
    assert v2_ids["shape"] == [2] and v2_ids["datatype"] == "BYTES"
    text = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"welding"])
    )
    reply = grpc_infer(server, pb.ModelInferRequest(model_name="clip-acme", inputs=[text]))
    grpc_id = grpc_outputs(reply)["query_id"][0].decode()
    ids = [v1["query_id"], *v2_ids["data"], grpc_id]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)

    deadline, logged = time.monotonic() + 15, {}
    while time.monotonic() < deadline and not set(ids) <= set(logged):
        logged = {e["query_id"]: e for e in read_month(acme_store, "clip-acme", month())}
        time.sleep(0.2)
    assert set(ids) <= set(logged)
    assert logged[grpc_id]["query"] == "welding" and logged[grpc_id]["protocol"] == "grpc"


def test_feedback_is_stored_before_the_answer_and_the_latest_answer_wins(server, acme_store):
    from serving.feedback import read_feedback

    pred = search(server, "gallbladder surgery")
    top = pred["results"][0]["video_id"]
    status, body = feedback(server, {"query_id": pred["query_id"], "video_id": top, "relevant": True, "label": "op"})
    assert status == 200, body
    (accepted,) = body["accepted"]
    assert accepted["query_known"] is True and body["model"] == "clip-acme"
    # Acknowledged means stored: it is in S3 now, with the query's text and the video's rank.
    (entry,) = [e for e in read_feedback(acme_store, "clip-acme", month()) if e["query_id"] == pred["query_id"]]
    assert entry["feedback_id"] == accepted["feedback_id"]
    assert (entry["query"], entry["rank"], entry["relevant"], entry["label"]) == ("gallbladder surgery", 1, True, "op")
    assert entry["version"] == "" and entry["protocol"] == "rest"

    status, _ = feedback(server, {"query_id": pred["query_id"], "video_id": top, "relevant": False})
    assert status == 200
    latest = [e for e in read_feedback(acme_store, "clip-acme", month()) if e["query_id"] == pred["query_id"]]
    assert [e["relevant"] for e in latest] == [False]  # the client changed its mind: the latest answer wins
    every = read_feedback(acme_store, "clip-acme", month(), latest_only=False)
    assert [e["relevant"] for e in every if e["query_id"] == pred["query_id"]] == [True, False]  # nothing rewritten

    # A review answer: the right video, found in the library, which the search had not returned (rank empty).
    shown = {r["video_id"] for r in pred["results"]}
    found = next(r["video_id"] for r in search(server, "curling", k=20)["results"] if r["video_id"] not in shown)
    status, _ = feedback(server, {"query_id": pred["query_id"], "video_id": found, "relevant": True})
    assert status == 200
    (named,) = [e for e in read_feedback(acme_store, "clip-acme", month()) if e["video_id"] == found]
    assert (named["query"], named["rank"], named["relevant"]) == ("gallbladder surgery", None, True)


def test_unknown_query_is_recorded_but_flagged_and_bad_input_is_refused(server, acme_store):
    from serving.feedback import read_feedback

    pred = search(server, "forklift")
    video = pred["results"][1]["video_id"]
    status, body = feedback(server, {"query_id": "f" * 32, "video_id": video, "relevant": True})
    assert status == 200 and body["accepted"][0]["query_known"] is False
    flagged = [e for e in read_feedback(acme_store, "clip-acme", month()) if e["query_id"] == "f" * 32]
    assert flagged[0]["query_known"] is False and flagged[0]["query"] == ""

    ok = {"query_id": pred["query_id"], "video_id": video, "relevant": True}
    cases = [
        ({**ok, "video_id": "no-such-video"}, 400, "not in clip-acme's library"),
        ({**ok, "relevant": "yes"}, 400, "'relevant' must be true or false"),
        ({**ok, "query_id": "../etc"}, 400, "query_id"),
        ({**ok, "colour": "red"}, 400, "unknown field"),
        ({"query_id": pred["query_id"]}, 400, "missing"),
        ({**ok, "label": "x" * 1001}, 413, "'label' is longer than 1000"),
        ([ok] * 65, 400, "1..64"),
    ]
    for body, code, message in cases:
        status, answer = feedback(server, body)
        assert status == code and message in answer["error"], (body if len(str(body)) < 200 else code, answer)
    status, answer = server.call("POST", "/api/feedback", data=b"{not json", headers=bearer(ACME))
    assert status == 400 and answer == {"error": "the body is not valid JSON"}
    status, answer = server.call("POST", "/api/feedback", data=b" " * 300_000, headers=bearer(ACME))
    assert status == 413 and "limit" in answer["error"]
    # None of the refused answers was stored.
    assert not [e for e in read_feedback(acme_store, "clip-acme", month()) if e["video_id"] == "no-such-video"]


def test_a_token_writes_only_its_own_clients_feedback(server):
    pred = search(server, "welding")
    answer = {"query_id": pred["query_id"], "video_id": pred["results"][0]["video_id"], "relevant": True}
    status, body = feedback(server, answer, token=BETA, query="?model=clip-acme")
    assert status == 403 and "may not call clip-acme" in body["error"]
    status, _ = feedback(server, answer, token=ACME, query="?model=clip-beta")
    assert status == 403
    status, body = feedback(server, answer, token=BETA)  # beta has no clip model here
    assert status == 503 and "no clip-search model" in body["error"]
    status, _ = server.call("POST", "/api/feedback", answer, auth=False)
    assert status == 401


def test_v2_feedback_over_rest_and_grpc(server, acme_store):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from serving.feedback import read_feedback

    pred = search(server, "cooking show")
    videos = [r["video_id"] for r in pred["results"][:2]]
    body = {
        "inputs": [
            {"name": "query_id", "shape": [2], "datatype": "BYTES", "data": [pred["query_id"]] * 2},
            {"name": "video_id", "shape": [2], "datatype": "BYTES", "data": videos},
            {"name": "relevant", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        ]
    }
    status, reply = server.call("POST", "/v2/models/clip-acme/infer", body)
    assert status == 200, reply
    out = {o["name"]: o["data"] for o in reply["outputs"]}
    assert out["query_known"] == [True, True] and len(set(out["feedback_id"])) == 2

    def tensor(name, datatype, **contents):
        return pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=[1], contents=pb.InferTensorContents(**contents)
        )

    request = pb.ModelInferRequest(
        model_name="clip-acme",
        inputs=[
            tensor("query_id", "BYTES", bytes_contents=[pred["query_id"].encode()]),
            tensor("video_id", "BYTES", bytes_contents=[videos[1].encode()]),
            tensor("relevant", "BOOL", bool_contents=[True]),
            tensor("label", "BYTES", bytes_contents=["réunion".encode()]),
        ],
    )
    grpc_ids = grpc_outputs(grpc_infer(server, request))["feedback_id"]
    stored = {e["feedback_id"]: e for e in read_feedback(acme_store, "clip-acme", month(), latest_only=False)}
    assert set(out["feedback_id"]) | {grpc_ids[0].decode()} <= set(stored)
    latest = {e["video_id"]: e for e in read_feedback(acme_store, "clip-acme", month()) if e["query"] == "cooking show"}
    assert latest[videos[1]]["relevant"] is True and latest[videos[1]]["label"] == "réunion"
    assert latest[videos[1]]["protocol"] == "grpc"

    err = grpc_infer(server, request, token=BETA)
    assert err.code().name == "PERMISSION_DENIED"
    mixed = {"inputs": body["inputs"] + [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    status, reply = server.call("POST", "/v2/models/clip-acme/infer", mixed)
    assert status == 400 and "either a search or feedback" in reply["error"]


def test_a_flood_from_one_token_is_bounded_and_nothing_accepted_is_lost(server, acme_store):
    import http.client

    from serving.feedback import read_feedback

    pred = search(server, "warehouse", k=5)
    answers = [
        {"query_id": pred["query_id"], "video_id": r["video_id"], "relevant": i % 2 == 0, "label": f"flood {n}"}
        for n in range(7)
        for i, r in enumerate(pred["results"])
    ]  # 35 answers
    status, _ = feedback(server, answers[:25], token=ACME_FLOOD)
    assert status == 200
    status, body = feedback(server, answers[25:], token=ACME_FLOOD)  # 10 more: past 30 a minute, all refused
    assert status == 429 and "30 answers per minute" in body["error"]
    status, body = feedback(server, answers[25:30], token=ACME_FLOOD)  # 5 fit exactly
    assert status == 200
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=30)
    headers = {**bearer(ACME_FLOOD), "Content-Type": "application/json"}
    conn.request("POST", "/api/feedback", body=json.dumps(answers[30]).encode(), headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 429 and 1 <= int(response.getheader("Retry-After")) <= 60
    # The limit is per token: acme's other token still sends.
    status, _ = feedback(server, answers[30])
    assert status == 200
    stored = read_feedback(acme_store, "clip-acme", month(), latest_only=False)
    assert sum(e["label"].startswith("flood") for e in stored) == 31  # 30 from the flood token, 1 from the other


def test_feedback_export_writes_the_month_as_csv(server, tmp_path, s3, monkeypatch, capsys):
    import yaml

    from pipelines.cli import main

    monkeypatch.setenv("MINIO_ENDPOINT", s3["endpoint"])
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    config = {
        "client_id": "acme",
        "state_dir": str(tmp_path),
        "storage": {"artifacts_uri": f"s3://{s3['bucket']}/acme"},
    }
    (tmp_path / "acme.yaml").write_text(yaml.safe_dump(config))
    args = ["feedback", "export", "--config", str(tmp_path / "acme.yaml"), "--month", month()]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and {"query_id", "query", "video_id", "relevant", "label", "query_known"} <= set(rows[0])
    assert len({(r["query_id"], r["video_id"]) for r in rows}) == len(rows)  # the latest answer per pair
    assert main([*args, "--all-answers", "-o", str(tmp_path / "all.csv")]) == 0
    assert len((tmp_path / "all.csv").read_text().splitlines()) - 1 > len(rows)
    with pytest.raises(SystemExit):
        main(["feedback", "export", "--client", "acme", "--month", "2026-13"])

    # The review queue of the month so far, to answer within the month: no search with a relevant answer in it.
    args = ["feedback", "review", "--config", str(tmp_path / "acme.yaml"), "--month", month(), "-o", str(tmp_path)]
    assert main(args) == 0
    queue = list(csv.DictReader((tmp_path / "review_queue.csv").read_text().splitlines()))
    answered = {r["query"] for r in rows if r["relevant"] == "True"}
    assert "gallbladder surgery" in answered and not answered & {r["query"] for r in queue}
    assert all(r["reason"] in ("low_confidence", "no_relevant_result") for r in queue)


def test_sigterm_flushes_and_stops(server):
    assert server.stop() == 0
    assert "model server stopped" in server.log()

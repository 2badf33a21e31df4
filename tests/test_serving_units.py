"""serving: config section, query log, index build + calibration, video probing (no server)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from components.common.errors import ConfigError
from serving.config import ServingConfig


def test_config_defaults_and_validation():
    cfg = ServingConfig()
    assert (cfg.host, cfg.http_port, cfg.grpc_port) == ("127.0.0.1", 8080, 8081)
    assert cfg.max_upload_bytes == 100 * 1024 * 1024
    assert cfg.max_body_bytes == -(-cfg.max_upload_bytes * 4 // 3) + 65536 and not cfg.access_controlled
    for bad in (
        {"http_port": 70000},
        {"http_port": 9000, "grpc_port": 9000},
        {"batch_max": 0},
        {"low_confidence_threshold": 1.5},
        {"max_upload_mb": 0},
        {"tokens_env": "not a name"},
        {"admin_token_env": "1ABC"},
        {"tokens_env": "A", "tokens_file": "/run/tokens.json"},
        {"max_queue": 0},
        {"max_image_pixels": 0},
        {"inconclusive_verdicts": "yes"},
        {"agent_port": 8080, "http_port": 8080},
        {"feedback_per_minute": 0},
    ):
        with pytest.raises(ConfigError, match="serving"):
            ServingConfig(**bad)


def test_query_log_flushes_by_count_time_and_close(tmp_path):
    from components.common.storage import LocalStore
    from serving.querylog import QueryLog, read_month

    store = LocalStore(tmp_path)
    log = QueryLog(store, flush_entries=3, flush_s=0.5)
    month = time.strftime("%Y-%m", time.gmtime())
    for i in range(3):
        log.append("clip-acme", {"query": f"q{i}", "top_score": 0.5})
    deadline = time.monotonic() + 5  # by count: the writer thread writes them at once (not the caller's thread)
    while time.monotonic() < deadline and not read_month(store, "clip-acme", month):
        time.sleep(0.02)
    assert [e["query"] for e in read_month(store, "clip-acme", month)] == ["q0", "q1", "q2"]
    assert log.files_written == 1
    log.append("clip-acme", {"query": "late"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(read_month(store, "clip-acme", month)) < 4:
        time.sleep(0.1)
    assert len(read_month(store, "clip-acme", month)) == 4  # by time
    log.append("clip-beta", {"query": "at shutdown"})
    log.close()
    assert read_month(store, "clip-beta", month)[0]["query"] == "at shutdown"
    keys = list(store.list_keys("querylog/"))
    assert all(k.startswith(("querylog/clip-acme/", "querylog/clip-beta/")) and k.endswith(".jsonl") for k in keys)
    assert QueryLog(None).flush() == 0


def test_constant_calibrator_when_every_query_hits():
    from serving.index_build import _constant_calibrator

    cal = _constant_calibrator(np.ones(8))
    conf = cal.confidence(np.array([[0.9, 0.1], [0.2, 0.1]]))
    assert np.allclose(conf, 0.9) and cal.n_queries == 8  # (8 + 1) / (8 + 2)


def test_probe_video_checks_content_and_duration(tmp_path):
    pytest.importorskip("av")
    from kserve.errors import InvalidInput
    from serving_assets import make_video

    from serving.lipsync import PayloadTooLarge, probe_video

    video = make_video(tmp_path / "v.mp4", seconds=1.0)
    assert 0.9 <= probe_video(video, 10.0).duration_s <= 1.2
    with pytest.raises(PayloadTooLarge, match=r"limit is 0\.5 s"):
        probe_video(video, 0.5)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video, whatever the extension says")
    with pytest.raises(InvalidInput, match="not a decodable video"):
        probe_video(text, 10.0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:600])
    with pytest.raises(InvalidInput):
        probe_video(broken, 10.0)


def test_detect_kind(tmp_path):
    from serving.repository import detect_kind

    lip = tmp_path / "lip"
    lip.mkdir()
    (lip / "config.json").write_text(json.dumps({"window_s": 1.0}))
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "card.json").write_text("{}")
    assert detect_kind(lip) == "lipsync" and detect_kind(clip) == "clip-search"
    assert detect_kind(Path(tmp_path / "missing"), "lipsync-acme") == "lipsync"


def test_index_build_writes_index_and_calibration(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from serving_assets import make_adapter, make_base
    from synthetic_frames import make_frames

    from serving.calibration import Calibrator
    from serving.index import VideoIndex
    from serving.index_build import build_index

    base = make_base(tmp_path / "base")
    model = make_adapter(base, tmp_path / "clip-acme", seed=3)
    frames = make_frames(tmp_path / "frames", n=12)
    summary = build_index(model, frames)
    index = VideoIndex.load(model / "index")
    assert len(index) == 12 and summary["videos"] == 12 and summary["calibration_queries"] == 3
    cal = Calibrator.load(model / "index" / "calibration.json")
    assert cal.n_queries == 3 and 0 <= summary["top1_accuracy"] <= 1
    assert json.loads((model / "index" / "build.json").read_text())["relevance"] == "category"
    with pytest.raises(ValueError, match="relevance"):
        build_index(model, frames, relevance="nope")


def test_video_size_and_frame_size_are_checked_before_decoding(tmp_path):
    pytest.importorskip("av")
    from serving_assets import make_video

    from serving.errors import PayloadTooLarge
    from serving.kserve_adapter import InvalidInput
    from serving.lipsync import check_video, probe_video

    settings = ServingConfig(max_upload_mb=0.001)
    with pytest.raises(PayloadTooLarge, match=r"limit is 0\.001 MiB"):
        check_video(b"x" * 2000, settings)
    with pytest.raises(InvalidInput, match="empty"):
        check_video(b"", settings)
    video = make_video(tmp_path / "v.mp4", seconds=0.4, side=64)
    with pytest.raises(PayloadTooLarge, match="64x64 px; the limit is 4000 pixels"):
        probe_video(video, 10.0, max_pixels=4000)
    assert probe_video(video, 10.0, max_pixels=4096).duration_s > 0


def test_champion_specs_explicit_then_local_record(tmp_path):
    pytest.importorskip("mlflow")
    from components.common.champions import champions_file
    from components.config import from_dict
    from serving.server import champion_specs

    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    record = champions_file(Path(config.state_dir))
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"lipsync-acme": {"path": str(tmp_path / "lip"), "version": "3"}}))
    specs = champion_specs(config, clip_dir=tmp_path / "clip")
    assert [(s.name, s.kind, s.version) for s in specs] == [
        ("clip-acme", "clip-search", ""),
        ("lipsync-acme", "lipsync", "3"),
    ]
    assert specs[0].path == str((tmp_path / "clip").resolve())


# ------------------------------------------------------------------------------------------- access, queues, limits


ACME, BETA, ADMIN = "acme-token-0123456789", "beta-token-0123456789", "admin-token-0123456789"


def test_token_map_scopes_clients_and_admin(tmp_path):
    from components.common.names import client_of
    from serving.auth import Caller, load_policy

    env = {"TOKENS": json.dumps({ACME: ["acme"], BETA: ["beta", "gamma"]}), "ADMIN": ADMIN}
    policy = load_policy(ServingConfig(tokens_env="TOKENS", admin_token_env="ADMIN"), env)
    acme, beta, admin = (policy.caller(f"Bearer {t}") for t in (ACME, BETA, ADMIN))
    assert acme.may_call("clip-acme") and acme.may_call("lipsync-acme") and not acme.may_call("clip-beta")
    assert beta.may_call("clip-gamma") and not beta.may_call("clip-acme") and not beta.admin
    assert admin.admin and admin.may_call("clip-zeta")
    assert policy.caller(None) is None and policy.caller("Bearer nope") is None and policy.caller(ACME) is None
    assert [client_of(n) for n in ("clip-acme", "lipsync-a-b", "other", "clip-")] == ["acme", "a-b", None, None]
    assert ACME not in repr(acme) and repr(Caller(admin=True)) == "Caller(admin)"
    # A file from a Kubernetes secret works the same way.
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({ACME: ["acme"]}))
    policy = load_policy(ServingConfig(tokens_file=str(tokens), host="0.0.0.0"), {})
    assert policy.caller(f"Bearer {ACME}").clients == {"acme"}


@pytest.mark.parametrize(
    ("settings", "env", "message"),
    [
        ({"tokens_file": "tokens.json"}, {}, r"serving.tokens_file \(.*tokens.json\): not valid JSON"),
        ({"tokens_env": "T"}, {"T": "{not json"}, r"serving.tokens_env \(T\): not valid JSON"),
        ({"tokens_env": "T"}, {}, "serving.tokens_env names T, which is not set"),
        ({"tokens_env": "T"}, {"T": json.dumps({ACME: "acme"})}, "must map to a non-empty list of client ids"),
        ({"tokens_env": "T"}, {"T": json.dumps({"short": ["acme"]})}, "at least 16 characters"),
        ({"tokens_env": "T"}, {"T": json.dumps({ACME: ["Acme!"]})}, "invalid client ids"),
        ({"tokens_env": "T", "admin_token_env": "A"}, {"T": json.dumps({ACME: ["acme"]}), "A": ACME}, "must differ"),
        ({"admin_token_env": "A"}, {}, "serving.admin_token_env names A, which is not set"),
        ({"host": "0.0.0.0"}, {}, "beyond loopback, and no token is configured"),
    ],
)
def test_bad_token_settings_are_refused_naming_the_setting(tmp_path, settings, env, message):
    from serving.auth import load_policy

    if "tokens_file" in settings:
        (tmp_path / "tokens.json").write_text("{'acme': not json")
        settings = {"tokens_file": str(tmp_path / "tokens.json")}
    with pytest.raises(ConfigError, match=message) as err:
        load_policy(ServingConfig(**settings), env)
    assert ACME not in str(err.value)  # a token never appears in a message


def test_admission_bounds_each_models_queue_and_sets_a_deadline():
    import asyncio

    from serving.admission import REFUSED, Admission
    from serving.errors import Overloaded, RequestTimeout

    admission = Admission(max_queue=2, timeout_s=0.05)
    before = REFUSED.labels(reason="queue_full")._value.get()
    admission.acquire("clip-acme")
    with admission.admit("clip-acme"):
        with pytest.raises(Overloaded, match="busy") as err:
            admission.acquire("clip-acme")
        assert err.value.http_status == 429 and err.value.headers == {"Retry-After": "1"}
        admission.acquire("clip-beta")  # another model's queue is its own
    admission.acquire("clip-acme")  # the block gave its place back
    assert admission.refused == 1 and REFUSED.labels(reason="queue_full")._value.get() == before + 1
    with pytest.raises(RequestTimeout, match=r"longer than 0.05 s"):
        asyncio.run(admission.within_deadline(asyncio.sleep(5)))
    assert asyncio.run(admission.within_deadline(asyncio.sleep(0, result=7))) == 7


def test_every_refusal_has_a_grpc_code_and_an_http_status():
    import grpc

    from serving import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ServingError)]
    assert len(classes) == 9
    for cls in classes:
        assert grpc.StatusCode[cls.grpc_code] and 400 <= cls.http_status <= 599
    assert errors.NoEvidence("x", extra={"reason": "no_audio"}).body() == {"error": "x", "reason": "no_audio"}


def test_image_size_is_checked_from_the_header_before_decoding():
    import base64

    from serving_assets import png_bomb, png_header_only

    from serving.clip_search import decode_image
    from serving.errors import PayloadTooLarge
    from serving.kserve_adapter import InvalidInput

    limit = ServingConfig().max_image_pixels
    bomb = png_bomb()  # 140 KB that decode to 144 million pixels (3.4 GB and 35 s before)
    assert len(bomb) < 150_000
    with pytest.raises(PayloadTooLarge, match="12000x12000 px; the limit is 16777216 pixels"):
        decode_image(base64.b64encode(bomb).decode(), "instance 0", limit)
    header = png_header_only()  # 99 bytes claiming 20000 x 20000 (a 500 before)
    assert len(header) == 99
    with pytest.raises(PayloadTooLarge, match="larger than 16777216 pixels"):
        decode_image(base64.b64encode(header).decode(), "instance 0", limit)
    small = png_header_only(side=16)  # within the limit, but its pixel data is cut short
    with pytest.raises(InvalidInput, match="not a decodable PNG/JPEG image"):
        decode_image(base64.b64encode(small).decode(), "instance 0", limit)
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_image("%%%", "instance 0", limit)
    assert decode_image(base64.b64encode(png_bomb(side=8)).decode(), "i", limit).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [2], "datatype": "BYTES", "data": ["a"]}, r"1 elements for shape \[2\]"),
        ({"shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [300, 1, 2]}, "integers in 0..255"),
        ({"shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [-1, 1, 2]}, "integers in 0..255"),
        ({"shape": [1], "datatype": "INT32", "data": [2**70]}, "integers in -2147483648..2147483647"),
        ({"shape": [1], "datatype": "INT64", "data": [2**70]}, "integers in"),
        ({"shape": [1], "datatype": "INT32", "data": [1.5]}, "integers in"),
        ({"shape": [1], "datatype": "FP32", "data": ["x"]}, "finite numbers"),
        ({"shape": [1], "datatype": "BOOL", "data": [1]}, "true or false"),
        ({"shape": [-1], "datatype": "BYTES", "data": ["a"]}, "negative dimension"),
        ({"shape": [2**40, 2**40], "datatype": "BYTES", "data": ["a"]}, "holds more than"),
        ({"shape": [1], "datatype": "BYTES", "data": [1]}, "must be strings"),
        ({"shape": [1], "datatype": "BYTES", "data": "a"}, "must be a list"),
        ({"shape": [1], "datatype": "FP16", "data": [1.0]}, "must be UINT8"),
        ({"shape": [2, 2], "datatype": "UINT8", "data": [[1, 2], [3]]}, r"3 elements for shape \[2, 2\]"),
    ],
)
def test_malformed_v2_tensors_are_invalid_input_with_short_messages(tensor, message):
    from serving.kserve_adapter import InferInput, InvalidInput, input_tensor

    inp = InferInput("x", tensor["shape"], tensor["datatype"], tensor["data"])
    with pytest.raises(InvalidInput, match=message) as err:
        input_tensor(inp, ("UINT8", "BYTES", "INT32", "INT64", "FP32", "BOOL"), 1000)
    assert len(str(err.value)) < 120


def test_binary_extension_carries_any_bytes_and_refuses_bad_framing():
    import struct

    from serving.kserve_adapter import InvalidInput, _decode_binary_request, input_tensor

    video = bytes(range(256)) * 40  # not UTF-8: kserve answered 500 with the bytes in its message
    size = len(video) + 4
    header = json.dumps(
        {"inputs": [{"name": "video", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
    ).encode()
    body = header + struct.pack("<I", len(video)) + video
    request = _decode_binary_request(body, str(len(header)), "lipsync-acme")
    assert input_tensor(request.inputs[0], ("BYTES",), 1)[0] == video
    for length, payload, message in (
        ("abc", body, "Inference-Header-Content-Length must be an integer"),
        ("-5", body, "must be an integer"),
        (str(len(body) + 1), body, "must be an integer"),
        (str(len(header)), body + b"x", "1 bytes after the inputs"),
        (str(len(header) - 1), body, "not valid JSON"),
        ("2", b"[]x", "JSON object with a list 'inputs'"),
    ):
        with pytest.raises(InvalidInput, match=message) as err:
            _decode_binary_request(payload, length, "lipsync-acme")
        assert len(str(err.value)) < 120
    longer = header.replace(str(size).encode(), str(size + 99).encode())
    with pytest.raises(InvalidInput, match="binary_data_size does not fit"):
        _decode_binary_request(longer + body[len(header) :], str(len(longer)), "lipsync-acme")


def test_feedback_rate_limit_is_a_sliding_minute_per_caller():
    from serving.errors import Overloaded
    from serving.feedback import RateLimiter

    now = [100.0]
    limiter = RateLimiter(5, clock=lambda: now[0])
    limiter.take("a", 3)
    now[0] += 20
    limiter.take("a", 2)
    with pytest.raises(Overloaded) as refused:
        limiter.take("a", 1)
    assert refused.value.headers["Retry-After"] == "40"  # the first three leave the window at 160 s
    limiter.take("b", 5)  # per caller
    now[0] += 40
    limiter.take("a", 3)  # all-or-nothing: the refused answer was not counted
    with pytest.raises(Overloaded):
        limiter.take("a", 1)


def test_feedback_log_acknowledges_only_what_the_store_took(tmp_path):
    from components.common.storage import LocalStore
    from serving.feedback import FeedbackLog, read_feedback

    class Refusing(LocalStore):
        def put_bytes(self, key, data, content_type="application/octet-stream"):
            raise OSError("disk full")

    def entry(n: int, relevant: bool) -> dict:
        return {"ts": f"2026-11-0{n}T00:00:00.000+00:00", "query_id": "q", "video_id": "v", "relevant": relevant}

    log = FeedbackLog(Refusing(tmp_path))
    with pytest.raises(OSError, match="disk full"):
        log.submit("clip-acme", [entry(1, True)]).result(timeout=10)
    log.close()
    assert list(LocalStore(tmp_path).list_keys()) == []
    with pytest.raises(RuntimeError, match="not stored"):
        log.submit("clip-acme", [entry(1, True)])

    store = LocalStore(tmp_path)
    log = FeedbackLog(store)
    futures = [log.submit("clip-acme", [entry(1, True)]), log.submit("clip-acme", [entry(2, False)])]
    log.close()  # whatever is waiting is written at shutdown
    assert all(f.result(timeout=1).startswith("feedback/clip-acme/2026-11/") for f in futures)
    assert [e["relevant"] for e in read_feedback(store, "clip-acme", "2026-11")] == [False]
    assert len(read_feedback(store, "clip-acme", "2026-11", latest_only=False)) == 2


def _keyframed_video(path: Path, seconds: float = 8.0, fps: int = 25, keyint: int = 25) -> Path:
    """Moving blocks over a keyframe every ``keyint`` frames (B-frames on); audio loud from 4.5 to 6.5 s only."""
    import av

    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps, options={"g": str(keyint), "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(n):
            img = np.full((64, 96, 3), 60, np.uint8)
            img[10 + i % 30 : 30 + i % 30, (2 * i) % 70 : (2 * i) % 70 + 20] = (200, 120, 100)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        t = np.arange(int(seconds * 16000)) / 16000
        sound = (0.01 + 0.5 * ((t > 4.5) & (t < 6.5))) * np.sin(t * 2000) + rng.normal(0, 0.001, t.size)
        frame = av.AudioFrame.from_ndarray(sound.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(aus.encode(frame))
        out.mux(aus.encode())
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_lipsync_decodes_only_the_analysis_window_with_trainings_frames(tmp_path, threads):
    from components.common.manifest import VideoRecord
    from components.frame_extraction.config import FrameExtractionConfig
    from components.frame_extraction.core import extract_video
    from serving.lipsync import extract_analysis_clip

    path = _keyframed_video(tmp_path / "talk.mp4")
    config = FrameExtractionConfig(dense_all=True, workers=1)
    record = VideoRecord(video_id="v", key="v", uri=str(path), sha256="", size_bytes=0, uploaded_at="", status="ok")
    training = extract_video(path, record, config)
    clip = extract_analysis_clip(path, config, threads)
    assert clip.status == "ok" and 3.0 < clip.dense_start_s < 5.0  # the loud part, past several keyframes
    assert clip.dense_start_s == training.dense_start_s and clip.dense_fps == training.dense_fps
    np.testing.assert_array_equal(clip.dense_frames, training.dense_frames)  # 75 frames, same pixels
    np.testing.assert_array_equal(clip.audio, training.audio)
    assert (clip.width, clip.height) == (training.width, training.height) == (96, 64)
    assert clip.search_frames.size == 0  # no search crops
    # From the keyframe before the window (at most 1 s earlier) to its end, not the 200 frames of the file.
    assert len(clip.dense_frames) == 75 and clip.decoded_frames <= 75 + 25 + 8
    assert clip.decoded_frames < training.decoded_frames


def test_the_lipsync_detector_runs_on_one_torch_thread_and_the_count_comes_back():
    import threading

    import torch

    from serving.lipsync import one_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []

    def request() -> None:
        with one_torch_thread():
            seen.append(torch.get_num_threads())
            time.sleep(0.05)

    try:
        workers = [threading.Thread(target=request) for _ in range(3)]  # concurrent requests restore nothing early
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

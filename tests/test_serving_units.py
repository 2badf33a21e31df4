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
    for bad in (
        {"http_port": 70000},
        {"http_port": 9000, "grpc_port": 9000},
        {"batch_max": 0},
        {"low_confidence_threshold": 1.5},
        {"max_upload_mb": 0},
        {"auth_token_env": "not a name"},
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
    assert [e["query"] for e in read_month(store, "clip-acme", month)] == ["q0", "q1", "q2"]  # by count
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


def test_lipsync_size_limit_and_timeout(tmp_path):
    import asyncio

    from kserve.errors import InvalidInput

    from serving.lipsync import LipSyncModel, PayloadTooLarge, RequestTimeout

    class Slow(LipSyncModel):
        def analyze_bytes(self, data: bytes) -> dict:
            time.sleep(1.0)
            return {}

    model = Slow("lipsync-acme", tmp_path, ServingConfig(max_upload_mb=0.001, request_timeout_s=0.1))
    with pytest.raises(PayloadTooLarge, match="limit"):
        asyncio.run(model.analyze(b"x" * 2000))
    with pytest.raises(InvalidInput, match="empty"):
        asyncio.run(model.analyze(b""))
    started = time.perf_counter()
    with pytest.raises(RequestTimeout, match=r"longer than 0\.1 s"):
        asyncio.run(model.analyze(b"x" * 100))
    assert time.perf_counter() - started < 1.5


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

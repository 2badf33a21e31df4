"""MLflow helpers against a local sqlite store and against a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow_server import MLFLOW_ENV
from mlflow_server import mlflow_server as start_mlflow_server

from components.common import tracking
from components.common.config import TrackingConfig
from components.config import from_dict

mlflow = pytest.importorskip("mlflow")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; the test fails if anything (mlruns/, mlflow.db) lands in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    yield cwd
    while mlflow.active_run() is not None:  # never leak an active run into the next test
        mlflow.end_run()
    assert sorted(p.name for p in cwd.iterdir()) == []


@pytest.fixture
def local_tracking(tmp_path: Path, workdir: Path) -> TrackingConfig:
    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    assert config.tracking.tracking_uri.startswith("sqlite:///")
    assert config.tracking.artifact_location == str(tmp_path / "state" / "mlartifacts")
    return config.tracking


def _client(config: TrackingConfig):
    return mlflow.MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def _exercise_runs(config: TrackingConfig, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Parent + two stage runs (one fails) + summary; checks everything through a fresh client."""
    client = _client(config)
    experiment_id = tracking.configure(config)
    assert tracking.configure(config) == experiment_id  # get-or-create is idempotent

    parent = tracking.start_parent_run(
        config, "acme-2026-11", {"client_id": "acme", "window": {"days": 30}}, tags={"clipsync.client": "acme"}
    )
    assert mlflow.active_run() is None

    with (
        caplog.at_level(logging.WARNING, logger="clipsync.tracking"),
        tracking.stage_run(config, parent, "ingest", {"n_videos": 3, "min_side": 32}) as ingest_id,
    ):
        assert mlflow.active_run().info.run_id == ingest_id
        tracking.log_metrics({"accepted": 3, "bad_ratio": math.nan, "top_inf": np.float32("inf"), "val loss(%)": 0.5})
        tracking.log_metrics({"a//b/./c/..": np.float64(1.5)}, step=2)
        tracking.log_dict_artifact({"rejected": ["clip_7.mp4"]}, "reports/ingest.json")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'bad_ratio'" in warned and "'top_inf'" in warned
    assert mlflow.active_run() is None

    with (
        pytest.raises(ValueError, match="no faces"),
        tracking.stage_run(config, parent, "face_tracking") as face_id,
    ):
        tracking.log_metrics({"faces": 2.0})
        raise ValueError("no faces in clip_3")
    assert mlflow.active_run() is None

    with pytest.raises(RuntimeError, match="active run"):
        tracking.log_metrics({"orphan": 1.0})

    ingest = client.get_run(ingest_id)
    assert ingest.info.status == "FINISHED"
    assert ingest.info.run_name == "ingest"
    assert ingest.info.experiment_id == experiment_id
    assert ingest.data.tags["mlflow.parentRunId"] == parent
    assert ingest.data.tags["clipsync.stage"] == "ingest"
    assert ingest.data.params == {"n_videos": "3", "min_side": "32"}
    assert ingest.data.metrics == {"accepted": 3.0, "val loss___": 0.5, "a/b/c": 1.5}
    history = client.get_metric_history(ingest_id, "a/b/c")
    assert [(m.step, m.value) for m in history] == [(2, 1.5)]
    report = mlflow.artifacts.load_dict(f"{ingest.info.artifact_uri}/reports/ingest.json")
    assert report == {"rejected": ["clip_7.mp4"]}

    face = client.get_run(face_id)
    assert face.info.status == "FAILED"
    assert face.data.tags["mlflow.parentRunId"] == parent
    assert face.data.tags[tracking.END_REASON_TAG] == "ValueError: no faces in clip_3"  # why, on the run itself
    assert face.data.metrics == {"faces": 2.0}

    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["face_tracking", "ingest"]

    # The failed stage failed the DAG run: the parent is closed as FAILED right away, saying why.
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags[tracking.END_REASON_TAG] == "face_tracking: ValueError: no faces in clip_3"
    tracking.finish_parent_run(
        config, parent, summary={"accepted": 3, "gate": "promote", "auc": 0.91}, markdown="# run summary\n"
    )
    done = client.get_run(parent)
    assert done.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in done.data.tags
    assert done.data.params == {"client_id": "acme", "window": '{"days": 30}'}
    assert done.data.tags["clipsync.client"] == "acme"
    assert done.data.metrics == {"accepted": 3.0, "auc": 0.91}
    assert done.data.tags["clipsync.summary.gate"] == "promote"
    summary = mlflow.artifacts.load_dict(f"{done.info.artifact_uri}/summary.json")
    assert summary == {"accepted": 3, "gate": "promote", "auc": 0.91}
    assert mlflow.artifacts.load_text(f"{done.info.artifact_uri}/summary.md") == "# run summary\n"
    with pytest.raises(ValueError, match="status"):
        tracking.finish_parent_run(config, parent, status="DONE")

    with tracking.stage_run(config, "", "evaluate", {"k": 5}) as alone_id:
        tracking.log_metrics({"recall_at_5": 0.8})
    alone = client.get_run(alone_id)
    assert "mlflow.parentRunId" not in alone.data.tags
    assert alone.info.experiment_id == experiment_id
    assert alone.info.status == "FINISHED"
    return {"experiment_id": experiment_id, "parent": parent}


def _save_weights(folder: Path, scale: float) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"proj.weight": np.arange(12, dtype=np.float32).reshape(3, 4) * scale}
    safetensors_numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    return tensors


def _exercise_registry(config: TrackingConfig, tmp: Path) -> None:
    """Register two versions of a plain folder, move the alias, download both and compare bytes."""
    name = "acme-clip"
    client = _client(config)
    parent = tracking.start_parent_run(config, "acme-registry", {})
    assert tracking.get_version_by_alias(config, name, "challenger") is None  # no model yet

    with tracking.stage_run(config, parent, "finetune_clip") as run1:
        _save_weights(tmp / "v1", 1.0)
        v1 = tracking.register_model_dir(config, name, tmp / "v1", run1, tags={"phase": "2"})
    assert v1 == "1"
    assert tracking.get_version_by_alias(config, name, "challenger") == "1"
    assert tracking.get_version_by_alias(config, name, "champion") is None  # model exists, alias not
    version = client.get_model_version(name, v1)
    assert version.run_id == run1
    assert version.tags == {"phase": "2"}
    assert version.source.endswith(f"{run1}/artifacts/model")

    got1 = tracking.download_version(config, name, "challenger", tmp / "dl1")
    assert got1 == tmp / "dl1"
    assert sorted(p.name for p in got1.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    for file in ("adapter_model.safetensors", "adapter_config.json"):
        assert (got1 / file).read_bytes() == (tmp / "v1" / file).read_bytes()

    with tracking.stage_run(config, parent, "finetune_clip") as run2:
        expected2 = _save_weights(tmp / "v2", 2.0)
        v2 = tracking.register_model_dir(config, name, tmp / "v2", run2)
    assert v2 == "2"
    assert tracking.get_version_by_alias(config, name, "challenger") == "2"

    with tracking.stage_run(config, parent, "deploy") as run3:
        assert tracking.register_model_dir(config, name, tmp / "v1", run3, alias=None) == "3"
    assert tracking.get_version_by_alias(config, name, "challenger") == "2"  # alias=None moved nothing

    client.set_registered_model_alias(name, "champion", v1)
    assert tracking.get_version_by_alias(config, name, "champion") == "1"
    # Downloading into a folder that already holds an older version replaces its files.
    got2 = tracking.download_version(config, name, "challenger", tmp / "dl1")
    loaded = safetensors_numpy.load_file(str(got2 / "adapter_model.safetensors"))
    np.testing.assert_array_equal(loaded["proj.weight"], expected2["proj.weight"])
    assert (got2 / "adapter_model.safetensors").read_bytes() == (tmp / "v2" / "adapter_model.safetensors").read_bytes()
    by_number = tracking.download_version(config, name, "1", tmp / "dl_v1")
    assert (by_number / "adapter_model.safetensors").read_bytes() == (
        tmp / "v1" / "adapter_model.safetensors"
    ).read_bytes()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".dl")]  # temp download folders removed

    with pytest.raises(LookupError, match="no alias 'nope'"):
        tracking.download_version(config, name, "nope", tmp / "dl_none")
    empty = tmp / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="missing or empty"):
        tracking.register_model_dir(config, name, empty, run1)
    tracking.finish_parent_run(config, parent, status="FAILED")
    assert client.get_run(parent).info.status == "FAILED"


def test_runs_nest_under_parent_on_local_sqlite(
    local_tracking: TrackingConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = _exercise_runs(local_tracking, caplog)
    experiment = _client(local_tracking).get_experiment(ids["experiment_id"])
    assert experiment.name == "clipsync-acme"
    assert experiment.artifact_location == local_tracking.artifact_location
    assert (tmp_path / "state" / "mlflow.db").is_file()
    assert (tmp_path / "state" / "mlartifacts" / ids["parent"] / "artifacts" / "summary.json").is_file()
    link = tracking.run_link(local_tracking, ids["parent"])
    assert link.startswith(f"mlflow ui --backend-store-uri {local_tracking.tracking_uri}")
    assert ids["parent"] in link


def test_stage_in_another_process_nests_under_parent(local_tracking: TrackingConfig, workdir: Path) -> None:
    """A kfp task is a separate process: only the parent run id (a string) crosses over."""
    parent = tracking.start_parent_run(local_tracking, "acme-2026-12", {"months": 1})
    code = (
        "import sys, json\n"
        "from components.common import tracking\n"
        "from components.common.config import TrackingConfig\n"
        "cfg = TrackingConfig(**json.loads(sys.argv[1]))\n"
        "with tracking.stage_run(cfg, sys.argv[2], 'frame_extraction', {'fps': 5}) as run_id:\n"
        "    tracking.log_metrics({'frames': 120})\n"
        "print(run_id)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(local_tracking.__dict__), parent],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=workdir,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    child = _client(local_tracking).get_run(done.stdout.strip().splitlines()[-1])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.metrics == {"frames": 120.0}
    assert child.data.params == {"fps": "5"}
    assert child.info.status == "FINISHED"


def test_registry_round_trip_on_local_sqlite(local_tracking: TrackingConfig, tmp_path: Path) -> None:
    _exercise_registry(local_tracking, tmp_path / "models")
    # Registered files live under the configured artifact location, not in the current directory.
    assert list((tmp_path / "state" / "mlartifacts").glob("*/artifacts/model/adapter_model.safetensors"))


def test_sanitize_key() -> None:
    assert tracking.sanitize_key("val/recall@5") == "val/recall_5"
    assert tracking.sanitize_key("/a//b/") == "a/b"
    assert tracking.sanitize_key("../x") == "x"
    assert tracking.sanitize_key("λ") == "_"
    assert tracking.sanitize_key("") == "_"
    assert len(tracking.sanitize_key("k" * 300)) == 250


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts), stopped by PID."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as (url, _):
        yield url


@pytest.fixture
def server_tracking(mlflow_server: str, workdir: Path) -> TrackingConfig:
    config = from_dict(
        {"client_id": "acme", "state_dir": str(workdir.parent / "state"), "tracking": {"tracking_uri": mlflow_server}}
    )
    assert config.tracking.artifact_location == ""
    return config.tracking


def test_runs_nest_under_parent_on_server(server_tracking: TrackingConfig, caplog: pytest.LogCaptureFixture) -> None:
    ids = _exercise_runs(server_tracking, caplog)
    run = _client(server_tracking).get_run(ids["parent"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert tracking.run_link(server_tracking, ids["parent"]) == (
        f"{server_tracking.tracking_uri}/#/experiments/{ids['experiment_id']}/runs/{ids['parent']}"
    )


def test_registry_round_trip_on_server(server_tracking: TrackingConfig, tmp_path: Path) -> None:
    _exercise_registry(server_tracking, tmp_path / "models")
    version = _client(server_tracking).get_model_version("acme-clip", "1")
    assert version.source.startswith("mlflow-artifacts:")

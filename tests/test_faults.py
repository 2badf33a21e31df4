"""Infrastructure faults fail the stage, bounded, and never shrink the data.

Real parts only: a moto S3 server on 127.0.0.1 stopped in the middle of ingest and of frame_extraction (then
restarted for the rerun), a real `mlflow server` killed in the middle of a stage, a run killed with SIGKILL,
and one short DAG run (kfp.local) that fails at ingest.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from mlflow_server import mlflow_server, stop
from test_ingest import make_video
from test_storage import ACCESS, SECRET, make_bucket

from components.common import lease, tracking
from components.common.faults import RetryPolicy, TransientError, is_infrastructure_error, retry_call
from components.common.manifest import read_manifest
from components.common.storage import LocalStore, StorageError, StorageUnavailableError, open_store
from components.config import from_dict
from components.frame_extraction.config import FrameExtractionConfig
from components.frame_extraction.dataset import read_frame_index
from components.ingest import core as ingest_core
from components.start_run.core import start_run
from components.summary.core import finish_run

REPO = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 12, 1)
N_VIDEOS = 6


# ---------------------------------------------------------------- classification and the retry helper


def test_infrastructure_errors_are_told_apart_from_content_errors():
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    assert is_infrastructure_error(StorageUnavailableError("cannot reach http://s3"))
    assert is_infrastructure_error(OSError(errno.EIO, "Input/output error"))
    assert is_infrastructure_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_infrastructure_error(MlflowException("API request to http://m/api failed with exception x"))
    assert is_infrastructure_error(MlflowException("db down", error_code=codes.TEMPORARILY_UNAVAILABLE))
    assert not is_infrastructure_error(MlflowException("no run", error_code=codes.RESOURCE_DOES_NOT_EXIST))
    assert not is_infrastructure_error(MlflowException("invalid metric name"))  # the default code says nothing
    assert not is_infrastructure_error(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_infrastructure_error(ValueError("moov atom not found"))
    assert not is_infrastructure_error(StorageError("bucket 'x' does not exist"))


def test_retry_call_retries_only_transient_faults_within_its_budget(monkeypatch):
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise TransientError("down")
        return "up"

    assert retry_call("flaky", flaky, RetryPolicy(attempts=5, first_wait_s=0.01)) == "up" and len(calls) == 3

    def content():
        calls.append(0)
        raise ValueError("bad video")

    calls.clear()
    with pytest.raises(ValueError):
        retry_call("content", content, RetryPolicy(attempts=5, first_wait_s=0.01))
    assert len(calls) == 1

    def always_down():
        raise StorageUnavailableError("cannot reach http://s3")

    with pytest.raises(StorageUnavailableError, match=r"cannot reach http://s3 \(gave up after 4 attempts in"):
        retry_call("down", always_down, RetryPolicy(attempts=4, first_wait_s=0.01))
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):  # the deadline stops it before the attempts run out
        retry_call("down", always_down, RetryPolicy(attempts=100, first_wait_s=0.05, max_wait_s=0.1, deadline_s=0.5))
    assert time.monotonic() - started < 5

    monkeypatch.setenv("CLIPSYNC_STORE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("CLIPSYNC_STORE_RETRY_SECONDS", "7.5")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=2, deadline_s=7.5)
    monkeypatch.setenv("CLIPSYNC_STORE_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="CLIPSYNC_STORE_RETRY_SECONDS"):
        RetryPolicy.from_env()


# ---------------------------------------------------------------- the object store stops mid-stage


class _S3:
    """A moto server on a fixed loopback port that a test can stop and start again (its data stays)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server_cls = ThreadedMotoServer
        self._server = None
        self.start()

    def start(self) -> None:
        self._server = self._server_cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture()
def s3(monkeypatch):
    """A stoppable S3 server, the MINIO_* variables for it and a short retry budget (2 s) for every store."""
    server = _S3()
    monkeypatch.setenv("MINIO_ENDPOINT", server.endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    monkeypatch.setenv("CLIPSYNC_STORE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("CLIPSYNC_STORE_RETRY_SECONDS", "2")
    try:
        yield server
    finally:
        server.stop()


def _month(s3: _S3, tmp_path: Path) -> str:
    """Upload N_VIDEOS labelled videos of November 2026; returns the source URI."""
    bucket = make_bucket(s3.endpoint)
    store = open_store(f"s3://{bucket}/client")
    records = []
    for i in range(N_VIDEOS):
        src = make_video(tmp_path / "src" / f"v{i}.mp4", seed=40 + i)
        store.put_file(f"videos/v{i}.mp4", src, content_type="video/mp4")
        records.append({"video_path": f"videos/v{i}.mp4", "labels": [f"clip {i}"], "timestamp": f"2026-11-{i + 2:02d}"})
    store.put_bytes("labels/month.jsonl", "\n".join(json.dumps(r) for r in records).encode())
    return store.uri


def _config(tmp_path: Path, source_uri: str):
    window = {"as_of": AS_OF.isoformat()}
    return from_dict({"state_dir": str(tmp_path / "state"), "storage": {"source_uri": source_uri}, "window": window})


def _ingest(config, manifest: Path):
    return ingest_core.run_ingest(manifest, config.ingest, config.context(track=False))


def _stop_after(s3: _S3, fetch, n: int):
    """``fetch`` (fetch_to_local), stopping the S3 server just before its ``n``-th call."""
    calls = []

    def fetch_then_stop(store, key, cache_dir):
        calls.append(key)
        if len(calls) == n:
            s3.stop()
        return fetch(store, key, cache_dir)

    return fetch_then_stop


def test_store_outage_mid_ingest_fails_the_stage_and_the_rerun_gets_the_whole_month(s3, tmp_path, monkeypatch):
    source = _month(s3, tmp_path)
    config = _config(tmp_path, source)
    before = {i.key: i.etag for i in open_store(source).list()}
    manifest = tmp_path / "manifest.jsonl"
    fetch = ingest_core.fetch_to_local
    monkeypatch.setattr(ingest_core, "fetch_to_local", _stop_after(s3, fetch, 3))

    with pytest.raises(StorageUnavailableError, match=rf"cannot reach {s3.endpoint} .*gave up after \d attempts"):
        _ingest(config, manifest)
    assert not manifest.exists()  # no manifest: no video was recorded as rejected or unreadable

    monkeypatch.setattr(ingest_core, "fetch_to_local", fetch)
    s3.start()
    report = _ingest(config, manifest)
    rows = read_manifest(manifest)
    assert (report.accepted, report.rejected, report.duplicates) == (N_VIDEOS, {}, 0)
    assert sorted(r.key for r in rows) == [f"videos/v{i}.mp4" for i in range(N_VIDEOS)]
    assert len({r.video_id for r in rows}) == N_VIDEOS
    assert {i.key: i.etag for i in open_store(source).list()} == before  # the client's data is untouched


@pytest.mark.parametrize("workers", [1, 2])
def test_store_outage_mid_extraction_fails_the_stage_and_the_rerun_gets_every_video(s3, tmp_path, monkeypatch, workers):
    from components.common import storage
    from components.frame_extraction.core import run_frame_extraction

    source = _month(s3, tmp_path)
    config = _config(tmp_path, source)
    manifest = tmp_path / "manifest.jsonl"
    assert _ingest(config, manifest).accepted == N_VIDEOS
    fx = FrameExtractionConfig(workers=workers)
    fetch = storage.fetch_to_local
    if workers == 1:  # stopped after two videos were fetched (the fetch runs in this process)
        monkeypatch.setattr(storage, "fetch_to_local", _stop_after(s3, fetch, 3))
    else:  # the worker processes meet a server that is already down; their error crosses the process pool
        s3.stop()

    failed = tmp_path / "frames-failed"
    with pytest.raises(StorageUnavailableError, match=rf"cannot reach {s3.endpoint}"):
        run_frame_extraction(manifest, failed, fx, config.context(track=False))
    assert not (failed / "index.jsonl").exists()  # no video recorded as fetch_error

    monkeypatch.setattr(storage, "fetch_to_local", fetch)
    s3.start()
    frames = tmp_path / "frames"
    report = run_frame_extraction(manifest, frames, fx, config.context(track=False))
    index = read_frame_index(frames)
    assert (report.ok, report.rejected) == (N_VIDEOS, 0)
    assert sorted(r.video_id for r in index) == sorted(r.video_id for r in read_manifest(manifest))


# ---------------------------------------------------------------- the tracking server stops mid-stage


@pytest.mark.slow
def test_tracking_outage_fails_the_stage_with_the_cause_within_the_bound(tmp_path, monkeypatch):
    for name in tracking.HTTP_LIMITS:  # the defaults this module sets are what is measured
        monkeypatch.delenv(name, raising=False)
    import mlflow

    with mlflow_server(tmp_path) as (url, proc):
        config = from_dict({"state_dir": str(tmp_path / "state"), "tracking": {"tracking_uri": url}})
        started = start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="outage-1")
        with (
            pytest.raises(Exception) as info,
            tracking.stage_run(config.tracking, started.parent_run_id, "finetune_clip"),
        ):
            tracking.log_metrics({"loss": 1.0}, step=0)
            stop(proc)
            began = time.monotonic()
            try:
                tracking.log_metrics({"loss": 0.5}, step=1)
            finally:
                call_s = time.monotonic() - began
        total_s = time.monotonic() - began
    assert is_infrastructure_error(info.value), info.value
    assert "Connection refused" in str(info.value) or "NewConnectionError" in str(info.value)
    assert call_s < tracking.TRACKING_CALL_BOUND_S, call_s  # about 15 s when refused; never MLflow's ~4 minutes
    assert total_s - call_s < 10, total_s  # recording the failure makes single, short attempts
    assert mlflow.active_run() is None


# ---------------------------------------------------------------- killed runs, one run per client, the exit handler


def _sqlite_config(tmp_path: Path):
    return from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})


def _mlflow(config):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking.tracking_uri, registry_uri=config.tracking.tracking_uri)


def test_a_run_killed_with_sigkill_is_closed_by_the_next_start_which_refuses_a_concurrent_one(tmp_path, monkeypatch):
    config = _sqlite_config(tmp_path)
    script = f"""
import os, signal, socket
os.environ["{lease.DRIVER_ENV}"] = f"{{socket.gethostname()}}:{{os.getpid()}}"
from components.common import tracking
from components.config import ClientConfig
from components.start_run.core import start_run
started = start_run("acme", {config.to_json()!r}, "2026-11-01", 0, dag_run_id="killed-1")
cfg = ClientConfig.from_json(started.config_json)
with tracking.stage_run(cfg.tracking, started.parent_run_id, "finetune_clip") as stage:
    tracking.log_metrics({{"loss": 1.0}})
    print(started.parent_run_id, stage, os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    parent_1, stage_1, pid = killed.stdout.split()
    client = _mlflow(config)
    assert {client.get_run(r).info.status for r in (parent_1, stage_1)} == {"RUNNING"}
    store = LocalStore(config.storage.artifacts_uri)
    assert lease.read_lease(store).holder == "killed-1"

    monkeypatch.setenv(lease.DRIVER_ENV, f"{socket.gethostname()}:{os.getpid()}")  # this test drives the next run
    second = start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="next-2")
    for run_id in (parent_1, stage_1):
        run = client.get_run(run_id)
        reason = run.data.tags[tracking.END_REASON_TAG]
        assert run.info.status == "KILLED" and "left RUNNING" in reason and "DAG run next-2" in reason
        assert f"its process {pid} on {socket.gethostname()} is gone" in reason
    assert client.get_run(second.parent_run_id).info.status == "RUNNING"
    held = lease.read_lease(store)
    assert (held.holder, held.run_id, held.pid) == ("next-2", second.parent_run_id, os.getpid())

    # A second run of the client meanwhile is refused, naming the first; a retried start keeps its run.
    with pytest.raises(lease.RunInProgressError, match=rf"DAG run next-2 \(MLflow parent run {second.parent_run_id}\)"):
        start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="third-3")
    assert start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="next-2") == second
    assert client.get_run(second.parent_run_id).info.status == "RUNNING"


def test_lease_expiry_release_and_holders(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    first, note = lease.acquire(store, "acme", "a", hours=2, now=start)
    assert note == "" and first.expires_at == "2026-11-01T02:00:00+00:00" and first.pid == 0
    with pytest.raises(lease.RunInProgressError, match="DAG run a, started 2026-11-01T00:00:00"):
        lease.acquire(store, "acme", "b", hours=2, now=start + timedelta(hours=1))
    assert not lease.release(store, "b", "not mine")  # only the holder gives it back
    second, note = lease.acquire(store, "acme", "b", hours=2, now=start + timedelta(hours=3))
    assert second.expires_at == "2026-11-01T05:00:00+00:00"
    assert "took over the lease of DAG run a" in note and "expired at 2026-11-01T02:00:00+00:00" in note
    assert lease.release(store, "b", "DAG run ended SUCCEEDED")
    assert lease.read_lease(store).released_reason == "DAG run ended SUCCEEDED"
    third, note = lease.acquire(store, "acme", "c", hours=2, now=start + timedelta(hours=3))
    assert third.holder == "c" and note == ""  # a released lease is free, no take-over needed


def test_finish_run_says_what_failed_why_and_what_was_still_promoted(tmp_path, monkeypatch):
    monkeypatch.setenv(lease.DRIVER_ENV, f"{socket.gethostname()}:{os.getpid()}")
    config = _sqlite_config(tmp_path)
    started = start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="dag-1")
    model = tmp_path / "model"
    model.mkdir()
    (model / "adapter_config.json").write_text("{}")
    with tracking.stage_run(config.tracking, started.parent_run_id, "finetune_clip") as run_id:
        version = tracking.register_model_dir(config.tracking, "clip-acme", model, run_id, alias="champion")
    with (
        pytest.raises(StorageUnavailableError),
        tracking.stage_run(config.tracking, started.parent_run_id, "finetune_lipsync"),
    ):
        raise StorageUnavailableError("cannot reach http://minio:9000 (get faces/a.npy on s3://b)")

    # A second run while dag-1 holds the lease is refused; its exit handler names dag-1 and leaves its lease.
    with pytest.raises(lease.RunInProgressError):
        start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="dag-2")
    refused = finish_run("acme", config.to_json(), "2026-11-01", 0, "dag-2", "FAILED", "Task exit-handler-1 failed.")
    assert (
        "- start_run: no MLflow run was opened for this DAG run; the client's run lease is held by DAG run dag-1"
        in (refused)
    )
    assert "- orchestrator: Task exit-handler-1 failed." in refused
    store = LocalStore(config.storage.artifacts_uri)
    assert lease.read_lease(store).holder == "dag-1" and not lease.read_lease(store).released_at

    summary = finish_run("acme", config.to_json(), "2026-11-01", 0, "dag-1", "FAILED")
    assert summary.startswith("# monthly_retrain: acme, window of 30 days up to 2026-11-01: **FAILED**")
    assert "- finetune_lipsync: FAILED: StorageUnavailableError: cannot reach http://minio:9000" in summary
    assert f"## Promoted by this run\n\n- clip: clip-acme v{version} is the champion now" in summary
    assert "| finetune_clip | FINISHED |" in summary
    parent = _mlflow(config).get_run(started.parent_run_id)
    assert parent.info.status == "FAILED" and "finetune_lipsync: FAILED" in parent.data.tags[tracking.END_REASON_TAG]
    import mlflow

    assert mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/summary.md") == summary
    assert lease.read_lease(store).released_at  # given back: the next run may start
    assert start_run("acme", config.to_json(), "2026-11-01", 0, dag_run_id="dag-3").parent_run_id


def test_finish_run_still_reports_when_mlflow_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = from_dict({"state_dir": str(tmp_path / "state"), "tracking": {"tracking_uri": dead}})
    summary = finish_run("acme", config.to_json(), "2026-11-01", 0, "dag-9", "FAILED")
    assert "**FAILED**" in summary and "which stage failed is unknown: MLflow could not be read" in summary
    assert f"Note: the run's record could not be read from MLflow ({dead})" in summary


@pytest.mark.slow
def test_a_dag_that_fails_at_ingest_ends_with_the_summary_and_a_non_zero_exit(tmp_path, capsys):
    """The one DAG run of this file: the source folder is missing, so ingest fails a few seconds in."""
    from pipelines.cli import main

    state = tmp_path / "state"
    cfg = tmp_path / "client.yaml"
    cfg.write_text(f"client_id: gone\nstate_dir: {state}\nstorage:\n  source_uri: {tmp_path / 'no-such-folder'}\n")
    assert main(["run", "--config", str(cfg), "--as-of", "2026-11-01"]) == 1
    out = capsys.readouterr().out  # kfp.local's log lines, then the summary
    out = out[out.index("# monthly_retrain: gone") :]
    assert out.startswith("# monthly_retrain: gone, window of 30 days up to 2026-11-01: **FAILED**")
    assert f"- ingest: FAILED: StorageError: source folder {tmp_path / 'no-such-folder'} does not exist" in out
    assert "## Promoted by this run\n\n- nothing" in out
    assert "Pipeline outputs: " in out

    config = from_dict({"client_id": "gone", "state_dir": str(state)})
    client = _mlflow(config)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("clipsync-gone").experiment_id], filter_string="tags.`clipsync.role` = 'parent'"
    )
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.END_REASON_TAG].startswith("ingest: FAILED: StorageError: source folder")
    assert lease.read_lease(LocalStore(config.storage.artifacts_uri)).released_reason == "DAG run ended FAILED"

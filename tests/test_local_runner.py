"""run_local's MLflow server for the DAG's tasks (pipelines/local.py): when there is one, and its fallback.

The server's normal path (every task tracking through it) is what tests/test_pipeline_local.py runs.
"""

from __future__ import annotations

from pathlib import Path

from components.config import load_config
from pipelines.local import tracking_server


def test_a_server_not_ready_in_time_is_stopped_and_the_tasks_keep_the_sqlite_file(tmp_path: Path):
    config = load_config(state_dir=str(tmp_path / "state"), client_id="acme")
    assert config.tracking.tracking_uri.startswith("sqlite:///")
    with tracking_server(config) as server:
        assert server is not None and server.url.startswith("http://127.0.0.1:")
        assert server.task_config(config, ready_s=0) == config
        # Stopped at once, so that it never opens the database beside the tasks.
        assert server.proc.poll() is not None
    assert not (tmp_path / "state" / "mlflow.db").exists()


def test_a_config_that_tracks_to_a_server_gets_no_local_one(tmp_path: Path):
    config = load_config(
        state_dir=str(tmp_path / "state"), client_id="acme", tracking={"tracking_uri": "http://127.0.0.1:9"}
    )
    with tracking_server(config) as server:
        assert server is None

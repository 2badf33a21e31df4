"""start_run: resolve the client's configuration and the window, take the client's run lease, close what a killed
run left RUNNING in MLflow, and open the DAG run's parent MLflow run."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from components.common.config import ConfigError
from components.config import ClientConfig, from_dict

logger = logging.getLogger("clipsync.start_run")


@dataclass(frozen=True)
class RunStart:
    """What every later task needs: the resolved config (JSON), the window end and the parent run id."""

    config_json: str
    as_of: str
    parent_run_id: str


def resolve_config(client_id: str, config_yaml: str, as_of: str, window_days: int) -> ClientConfig:
    """Build the run's configuration from the pipeline parameters.

    Args:
        client_id: Overrides ``client_id`` of the YAML when non-empty.
        config_yaml: The client's YAML config text (empty for the embedded defaults).
        as_of: End of the window (ISO date, exclusive); empty means the YAML's value, else today (UTC).
        window_days: Window length; 0 keeps the YAML's value.

    Returns:
        The validated configuration with ``window.as_of`` always set.

    Raises:
        ConfigError: If the YAML or a parameter is invalid.
    """
    import yaml

    try:  # the DAG passes JSON (valid YAML too, but YAML 1.1 reads 1e-05 as a string)
        data = json.loads(config_yaml) if config_yaml.strip() else {}
    except json.JSONDecodeError:
        data = yaml.safe_load(config_yaml)
    if not isinstance(data, dict):
        raise ConfigError("config_yaml must hold a mapping at the top level")
    if client_id:
        data["client_id"] = client_id
    window = dict(data.get("window") or {})
    if as_of:
        window["as_of"] = as_of
    window.setdefault("as_of", "")
    if not window["as_of"]:
        window["as_of"] = datetime.now(UTC).date().isoformat()
    if window_days:
        window["days"] = window_days
    data["window"] = window
    return from_dict(data)


def start_run(client_id: str, config_yaml: str, as_of: str, window_days: int, dag_run_id: str = "") -> RunStart:
    """Resolve the configuration, take the client's run lease and open the parent MLflow run of this DAG run.

    Runs a killed or crashed run left RUNNING (parent and stages) are marked KILLED with the reason first. A
    retried start_run of the same DAG run keeps its lease and its parent run.

    Args:
        client_id: Overrides ``client_id`` of the YAML when non-empty.
        config_yaml: The client's YAML config text (empty for the embedded defaults).
        as_of: End of the window (ISO date, exclusive); empty means the YAML's value, else today (UTC).
        window_days: Window length; 0 keeps the YAML's value.
        dag_run_id: The orchestrator's id of this DAG run (the lease holder); empty: a new standalone id.

    Returns:
        The serialized config, the resolved ``as_of`` and the parent run id.

    Raises:
        ConfigError: If the configuration is invalid.
        RunInProgressError: Another run of the client holds the lease (the message names it).
    """
    from components.common import lease, tracking
    from components.common.storage import open_store

    config = resolve_config(client_id, config_yaml, as_of, window_days)
    end = date.fromisoformat(config.window.as_of)
    dag_run_id = dag_run_id or f"standalone-{uuid.uuid4().hex}"
    store = open_store(config.storage.artifacts_uri, config.encryption)
    held, took_over = lease.acquire(store, config.client_id, dag_run_id, config.storage.lease_hours)
    reason = f"left RUNNING by a run that was killed or lost the tracking server; closed as DAG run {dag_run_id} began"
    tracking.close_stale_runs(
        config.tracking, config.client_id, f"{reason} ({took_over})" if took_over else reason, keep_dag_run=dag_run_id
    )
    existing = tracking.find_parent_run(config.tracking, dag_run_id)
    if existing is not None and existing.info.status == "RUNNING":
        run_id = existing.info.run_id
    else:
        params = {
            "client_id": config.client_id,
            "as_of": end.isoformat(),
            "window_days": config.window.days,
            "source_uri": config.storage.source_uri,
        }
        run_id = tracking.start_parent_run(
            config.tracking,
            run_name=f"monthly_retrain {config.client_id} {end.isoformat()}",
            params=params,
            tags={tracking.CLIENT_TAG: config.client_id, tracking.DAG_RUN_TAG: dag_run_id},
        )
    lease.record_run(store, held, run_id)
    logger.info(
        "start_run: client %s, window %s days up to %s, DAG run %s, parent MLflow run %s",
        config.client_id,
        config.window.days,
        end,
        dag_run_id,
        run_id,
    )
    return RunStart(config_json=config.to_json(), as_of=end.isoformat(), parent_run_id=run_id)

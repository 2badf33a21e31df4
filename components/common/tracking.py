"""MLflow helpers shared by every stage: one parent run per DAG run, one nested run per stage, registry.

A DAG run is ONE parent MLflow run, opened by the first task (or the launcher) with
:func:`start_parent_run` and closed by the last one with :func:`finish_parent_run`. Each stage runs in its
own process (a kfp task) and opens a nested run with :func:`stage_run`, given the parent run id as a
plain string. Inside the block the nested run is MLflow's active run, so :func:`log_metrics` and
:func:`log_dict_artifact` need no run id.

Model files are plain folders (safetensors + JSON), not MLflow flavors: :func:`register_model_dir` logs
the folder as the artifacts ``model`` of a run and registers a version whose source is that artifact
folder; :func:`download_version` fetches the files back by version number or alias.

Every call to a tracking server has a bounded total time: unless the environment says otherwise,
:func:`_client` sets MLflow's own HTTP settings to 4 attempts (3 retries) with backoff waits of 0, 4 and 8 s
(plus up to 1 s of jitter each) and a 10 s socket timeout, so one call gives up after about 13 s when the server
refuses connections and after at most :data:`TRACKING_CALL_BOUND_S` (54 s) when it hangs, then raises with the
cause (MLflow's own defaults take about 4 minutes, and 20 when the server hangs; benchmarks/tracking_outage.py).

A stage that fails records why on its run and its parent (tag ``clipsync.end_reason``) with single, short calls,
so a failure is never slowed down by the server that caused it. Runs a killed process left RUNNING are closed by
the next :func:`close_stale_runs` (start_run calls it).

``mlflow`` is imported inside the functions so that importing this module stays cheap.

Why this file is long: every MLflow call of clipsync is here (runs, artifacts,
registry, the bounded HTTP settings, closing stale runs), so that the rest of the code never imports mlflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.config import TrackingConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger("clipsync.tracking")

STAGE_TAG = "clipsync.stage"
ROLE_TAG = "clipsync.role"
CLIENT_TAG = "clipsync.client"
#: The orchestrator's id of the DAG run (the KFP run's uuid) on its parent MLflow run.
DAG_RUN_TAG = "clipsync.dag_run"
#: Why a run did not end FINISHED (the failed stage's error, or what closed a run left RUNNING).
END_REASON_TAG = "clipsync.end_reason"
#: A stage run's figures that could not be computed, and why (the run summary shows it beside the figures).
NOT_EVALUATED_TAG = "clipsync.not_evaluated"
PARENT_RUN_TAG = "mlflow.parentRunId"
#: MLflow's HTTP settings used unless the environment sets them (see the module docstring).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Worst case of one call with :data:`HTTP_LIMITS`: 4 attempts of 10 s, waits 0 + 4 + 8 s, up to 1 s jitter each.
TRACKING_CALL_BOUND_S = 4 * 10 + (0 + 4 + 8) + 2 * 1
# For the calls that record a failure: one attempt, a short timeout.
_QUICK_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
MODEL_ARTIFACT_PATH = "model"
_TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
# What MLflow accepts in metric/param keys (ASCII only: the server may validate differently).
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\- :/]")
_MAX_KEY_LENGTH = 250
_MAX_PARAM_LENGTH = 6000
_MAX_TAG_LENGTH = 8000
_DAG_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or ``None`` for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _client(tracking: TrackingConfig) -> MlflowClient:
    """Point MLflow (fluent API included) at the configured stores and return a client for them.

    Also bounds the time of every HTTP call this process makes to MLflow (:data:`HTTP_LIMITS`, unless set).
    """
    import mlflow

    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    db = _sqlite_path(tracking.tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking.tracking_uri)
    mlflow.set_registry_uri(tracking.tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri, registry_uri=tracking.tracking_uri)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


@contextlib.contextmanager
def _quick_calls() -> Iterator[None]:
    """MLflow calls inside the block make one attempt with a short timeout (MLflow reads these per request)."""
    saved = {name: os.environ.get(name) for name in _QUICK_LIMITS}
    os.environ.update(_QUICK_LIMITS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _best_effort(what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``fn`` once, quickly; log instead of raising (used on paths that already fail)."""
    try:
        with _quick_calls():
            fn(*args, **kwargs)
    except Exception as exc:
        logger.warning("could not %s: %s: %s", what, type(exc).__name__, exc)


def _reason(text: str) -> str:
    return text[:_MAX_TAG_LENGTH]


def configure(tracking: TrackingConfig) -> str:
    """Set the tracking and registry URI and get or create the experiment.

    A new experiment is created with ``tracking.artifact_location`` when it is set (the local sqlite
    default), so that no artifact lands in ``./mlruns`` of the current directory. A deleted experiment
    of that name is restored.

    Args:
        tracking: Where MLflow lives and which experiment to use.

    Returns:
        The experiment id.
    """
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    client = _client(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        try:
            return client.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location or None)
        except MlflowException as exc:
            # Two tasks started at once may both try to create it; the loser reads the winner's.
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == LifecycleStage.DELETED:
        logger.warning("experiment %r was deleted; restoring it", tracking.experiment)
        client.restore_experiment(experiment.experiment_id)
    if tracking.artifact_location and experiment.artifact_location.removeprefix("file://") != (
        tracking.artifact_location.removeprefix("file://")
    ):
        logger.warning(
            "experiment %r keeps its artifact location %s (config asks for %s)",
            tracking.experiment,
            experiment.artifact_location,
            tracking.artifact_location,
        )
    return experiment.experiment_id


def sanitize_key(key: str) -> str:
    """Turn ``key`` into a metric/param name MLflow accepts.

    Characters MLflow refuses become ``_``; empty, ``.`` and ``..`` path segments are dropped (MLflow
    refuses names that are not normalized paths); the result is cut to 250 characters.

    Args:
        key: Any name.

    Returns:
        A valid name (``"_"`` if nothing usable is left).
    """
    cleaned = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    cleaned = "/".join(parts)[:_MAX_KEY_LENGTH].rstrip("/")
    return cleaned or "_"


def _param_value(key: str, value: object) -> str:
    import json

    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    if len(text) > _MAX_PARAM_LENGTH:
        logger.warning("param %r is %d characters long; truncated to %d", key, len(text), _MAX_PARAM_LENGTH)
        text = text[:_MAX_PARAM_LENGTH]
    return text


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, object] | None) -> None:
    from mlflow.entities import Param

    if not params:
        return
    entries = {sanitize_key(key): _param_value(key, value) for key, value in params.items()}
    items = [Param(key, value) for key, value in entries.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def _create_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, object] | None,
) -> str:
    from mlflow.tracking.context import registry

    # resolve_tags adds what mlflow.start_run would (user, source name and type).
    resolved = registry.resolve_tags({"mlflow.runName": run_name, **tags})
    run = client.create_run(experiment_id, tags=resolved, run_name=run_name)
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def start_parent_run(
    tracking: TrackingConfig,
    run_name: str,
    params: dict[str, object],
    tags: dict[str, str] | None = None,
) -> str:
    """Open the parent run of one DAG run.

    The run is left RUNNING but is not an active run in this process: pass its id to the tasks and close
    it with :func:`finish_parent_run`.

    Args:
        tracking: Where MLflow lives.
        run_name: Display name (for instance ``acme-2026-11``).
        params: Parameters of the whole DAG run (values become strings; dicts and lists JSON).
        tags: Extra tags (start_run sets :data:`CLIENT_TAG` and :data:`DAG_RUN_TAG`).

    Returns:
        The run id.
    """
    client = _client(tracking)
    experiment_id = configure(tracking)
    all_tags = {ROLE_TAG: "parent", **(tags or {})}
    run_id = _create_run(client, experiment_id, run_name, all_tags, params)
    logger.info("parent run %s (%s) started", run_id, run_name)
    return run_id


def find_parent_run(tracking: TrackingConfig, dag_run_id: str) -> Any | None:
    """The parent run opened for the DAG run ``dag_run_id`` (:data:`DAG_RUN_TAG`), or ``None``.

    Returns:
        An ``mlflow.entities.Run`` (the latest one if a retried start_run opened several).

    Raises:
        ValueError: If ``dag_run_id`` is not made of letters, digits, ``.``, ``_`` and ``-``.
    """
    if not _DAG_RUN_ID.fullmatch(dag_run_id):
        raise ValueError(f"DAG run id must be 1-128 letters, digits, '.', '_' or '-', got {dag_run_id!r}")
    client = _client(tracking)
    experiment_id = configure(tracking)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'parent' and tags.`{DAG_RUN_TAG}` = '{dag_run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def close_stale_runs(tracking: TrackingConfig, client_id: str, reason: str, keep_dag_run: str = "") -> list[str]:
    """Mark every RUNNING parent and stage run of ``client_id`` KILLED, with ``reason`` as their end reason.

    Call it only while holding the client's run lease (no other run of the client is alive then): a run still
    RUNNING was left so by a process that was killed or lost the tracking server.

    Args:
        tracking: Where MLflow lives.
        client_id: Whose runs (the parent's :data:`CLIENT_TAG`; a stage run belongs to its parent's client).
        reason: Recorded as :data:`END_REASON_TAG` on each closed run.
        keep_dag_run: The DAG run calling this (a retried start_run): its own runs stay open.

    Returns:
        The ids of the runs closed.
    """
    client = _client(tracking)
    experiment_id = configure(tracking)
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    owners: dict[str, Any] = {}

    def owner(run: Any) -> Any | None:
        tags = run.data.tags
        if tags.get(ROLE_TAG) == "parent":
            return run
        parent_id = tags.get(PARENT_RUN_TAG) if tags.get(ROLE_TAG) == "stage" else None
        if not parent_id:
            return None
        if parent_id not in owners:
            owners[parent_id] = client.get_run(parent_id)
        return owners[parent_id]

    closed = []
    for run in running:
        parent = owner(run)
        if parent is None or parent.data.tags.get(CLIENT_TAG) != client_id:
            continue
        if keep_dag_run and parent.data.tags.get(DAG_RUN_TAG) == keep_dag_run:
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG, _reason(reason))
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    if closed:
        logger.warning("closed %d runs left RUNNING (KILLED): %s", len(closed), reason)
    return closed


@contextlib.contextmanager
def stage_run(
    tracking: TrackingConfig,
    parent_run_id: str,
    stage: str,
    params: dict[str, object] | None = None,
) -> Iterator[str]:
    """Open a stage's run, nested under the DAG run's parent, as the active MLflow run.

    The run is named ``stage`` and tagged ``mlflow.parentRunId`` and ``clipsync.stage``. It ends FINISHED,
    or FAILED if the block raised: the error becomes the run's :data:`END_REASON_TAG`, and the parent run is
    marked FAILED with it too, since the DAG run stops there (KILLED on KeyboardInterrupt/SystemExit). The
    exception is re-raised. Those closing calls make one short attempt each (the tracking server may be what
    failed); a run they cannot close is closed by the next :func:`close_stale_runs`.

    Args:
        tracking: Where MLflow lives.
        parent_run_id: The parent run's id; ``""`` runs the stage standalone (a top-level run).
        stage: The stage's name (``face_tracking``, ...).
        params: The stage's parameters.

    Yields:
        The stage run's id.
    """
    import mlflow

    client = _client(tracking)
    tags = {STAGE_TAG: stage, ROLE_TAG: "stage"}
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
        tags[PARENT_RUN_TAG] = parent_run_id
    else:
        experiment_id = configure(tracking)
    run_id = _create_run(client, experiment_id, stage, tags, params)
    # nested=True only lets this start while the caller has a run of its own active.
    mlflow.start_run(run_id=run_id, nested=True)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        logger.error("stage %s failed (%s); run %s marked FAILED", stage, cause, run_id)
        _best_effort("record the failure", client.set_tag, run_id, END_REASON_TAG, _reason(cause))
        if parent_run_id:
            # A failed stage fails the DAG run, and no later task will close the parent: close it here.
            _best_effort(
                "tag the parent run", client.set_tag, parent_run_id, END_REASON_TAG, _reason(f"{stage}: {cause}")
            )
            _best_effort("close the parent run", client.set_terminated, parent_run_id, status="FAILED")
        raise
    except BaseException:
        status = "KILLED"
        raise
    finally:
        active = mlflow.active_run()
        # end_run pops the active run before it calls the server, so a failed call leaves no active run behind.
        if active is not None and active.info.run_id == run_id:
            end = functools.partial(mlflow.end_run, status=status)
        else:
            # The block ended or replaced the active run itself; close ours by id.
            logger.warning("stage %s: run %s was not the active run at exit", stage, run_id)
            end = functools.partial(client.set_terminated, run_id, status=status)
        if status == "FINISHED":
            end()  # the stage's work is only done once its record is: an error here fails the stage
        else:
            _best_effort(f"end run {run_id} {status}", end)


def _require_active_run(what: str) -> Any:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        # mlflow.log_* would silently start a run in the default experiment (./mlruns or ./mlflow.db).
        raise RuntimeError(f"{what} needs an active run: call it inside `with stage_run(...)`")
    return run


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics into the active run.

    NaN and infinite values are skipped with a warning naming the key; names MLflow refuses are
    sanitized (see :func:`sanitize_key`).

    Args:
        metrics: Name to number (numpy scalars and bools are accepted).
        step: Training step or epoch, if any.

    Raises:
        RuntimeError: If no run is active.
        TypeError: If a value is not a number.
    """
    import mlflow

    _require_active_run("log_metrics")
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metric {key!r} must be a number, got {value!r}") from exc
        if not math.isfinite(number):
            logger.warning("metric %r is %s; not logged", key, number)
            continue
        name = sanitize_key(key)
        if name != key:
            logger.debug("metric %r logged as %r", key, name)
        clean[name] = number
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_dict_artifact(data: dict | list, artifact_file: str) -> None:
    """Write ``data`` as a JSON artifact of the active run.

    Args:
        data: Anything JSON can write.
        artifact_file: Path inside the run's artifacts, e.g. ``reports/summary.json``.

    Raises:
        RuntimeError: If no run is active.
    """
    import mlflow

    _require_active_run("log_dict_artifact")
    mlflow.log_dict(data, artifact_file)


def finish_parent_run(
    tracking: TrackingConfig,
    parent_run_id: str,
    status: str = "FINISHED",
    summary: dict[str, object] | None = None,
    markdown: str | None = None,
    reason: str = "",
) -> None:
    """Log the DAG run's summary on the parent run and terminate it.

    Finite numbers of ``summary`` become metrics, everything else tags (``clipsync.summary.<key>``);
    the whole summary is also written as the artifact ``summary.json``.

    Args:
        tracking: Where MLflow lives.
        parent_run_id: The id :func:`start_parent_run` returned.
        status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        summary: Outcome of the DAG run (counts, scores, the gate's decision...).
        markdown: The human-readable summary, logged as the artifact ``summary.md``.
        reason: Why the DAG run did not finish (:data:`END_REASON_TAG`), for ``FAILED`` / ``KILLED``.

    Raises:
        ValueError: On an unknown status.
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.utils.time import get_current_time_millis

    status = status.upper()
    if status not in _TERMINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(_TERMINAL_STATUSES)}, got {status!r}")
    client = _client(tracking)
    if summary:
        now = get_current_time_millis()
        metrics: list[Metric] = []
        tags: list[RunTag] = []
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                metrics.append(Metric(sanitize_key(key), float(value), now, 0))
            else:
                text = _param_value(key, value)[:_MAX_TAG_LENGTH]
                tags.append(RunTag(f"clipsync.summary.{sanitize_key(key)}", text))
        for start in range(0, max(len(metrics), len(tags)), 100):
            client.log_batch(parent_run_id, metrics=metrics[start : start + 100], tags=tags[start : start + 100])
        client.log_dict(parent_run_id, summary, "summary.json")
    if markdown:
        client.log_text(parent_run_id, markdown, "summary.md")
    if reason:
        client.set_tag(parent_run_id, END_REASON_TAG, _reason(reason))
    client.set_terminated(parent_run_id, status=status)
    logger.info("parent run %s ended %s", parent_run_id, status)


def run_link(tracking: TrackingConfig, run_id: str) -> str:
    """A pointer a person can follow to a run.

    Args:
        tracking: Where MLflow lives.
        run_id: Any run id.

    Returns:
        For an http(s) server the UI URL (``<uri>/#/experiments/<id>/runs/<run>``); for a sqlite store
        the ``mlflow ui`` command that serves it, plus the run id.
    """
    uri = tracking.tracking_uri
    if uri.startswith(("http://", "https://")):
        try:
            experiment_id = _client(tracking).get_run(run_id).info.experiment_id
        except Exception as exc:  # a pointer must not break the caller
            logger.warning("cannot look up run %s: %s", run_id, exc)
            return f"{uri.rstrip('/')} (run {run_id})"
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}  (run {run_id})"
    return f"{uri} (run {run_id})"


def register_model_dir(
    tracking: TrackingConfig,
    name: str,
    local_dir: Path,
    run_id: str,
    alias: str | None = "challenger",
    tags: dict[str, str] | None = None,
) -> str:
    """Register a plain folder of model files as a new version of a registered model.

    The folder's files are logged as the artifacts ``model`` of run ``run_id``; the version's source is
    that artifact folder (no MLmodel flavor needed).

    Args:
        tracking: Where MLflow lives.
        name: Registered model name (created if missing).
        local_dir: Folder with the files (safetensors, JSON).
        run_id: The run that produced them (usually the fine-tune stage's run).
        alias: Alias moved to the new version; ``None`` sets none.
        tags: Tags of the new version.

    Returns:
        The new version number, as a string.

    Raises:
        FileNotFoundError: If ``local_dir`` is not a folder or holds no file.
    """
    from mlflow.exceptions import MlflowException

    local_dir = Path(local_dir)
    if not local_dir.is_dir() or not any(p.is_file() for p in local_dir.rglob("*")):
        raise FileNotFoundError(f"model folder {local_dir} is missing or empty")
    client = _client(tracking)
    client.log_artifacts(run_id, str(local_dir), MODEL_ARTIFACT_PATH)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or None)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s version %s from run %s (alias %s)", name, version.version, run_id, alias)
    return str(version.version)


def get_version_by_alias(tracking: TrackingConfig, name: str, alias: str) -> str | None:
    """The version an alias points at.

    Args:
        tracking: Where MLflow lives.
        name: Registered model name.
        alias: e.g. ``champion``.

    Returns:
        The version number as a string, or ``None`` if the model or the alias does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        code = _error_code(exc)
        if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()):
            return None
        raise


def version_tags(tracking: TrackingConfig, name: str) -> dict[str, dict[str, str]]:
    """Every version of a registered model with its tags (``{}`` when the model does not exist yet).

    Args:
        tracking: Where MLflow lives.
        name: Registered model name.

    Returns:
        Version number (as a string) -> its tags.
    """
    client = _client(tracking)
    found = client.search_model_versions(f"name = '{name}'")
    return {str(v.version): dict(v.tags or {}) for v in found}


def download_version(tracking: TrackingConfig, name: str, version_or_alias: str, dest: Path) -> Path:
    """Download the files of one model version into ``dest`` (the files themselves, no extra folder).

    Args:
        tracking: Where MLflow lives.
        name: Registered model name.
        version_or_alias: A version number (``"3"``) or an alias (``"champion"``).
        dest: Target folder (created; files of the same name are replaced).

    Returns:
        ``dest``.

    Raises:
        LookupError: If the alias does not exist.
    """
    from mlflow.artifacts import download_artifacts

    version = str(version_or_alias)
    if not version.isdigit():
        resolved = get_version_by_alias(tracking, name, version)
        if resolved is None:
            raise LookupError(f"registered model {name!r} has no alias {version!r}")
        version = resolved
    client = _client(tracking)
    source = client.get_model_version_download_uri(name, version)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Download beside dest first so that a failed transfer leaves no half-written model in dest.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        fetched = Path(download_artifacts(artifact_uri=source, dst_path=tmp))
        for item in fetched.iterdir() if fetched.is_dir() else [fetched]:
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(item), target)
    logger.info("downloaded %s version %s into %s", name, version, dest)
    return dest

"""Scheduling monthly_retrain on a Kubeflow Pipelines server: a recurring run per client, or one run now.

``schedule`` compiles the DAG with the client's config baked into its defaults, uploads it as a new version
of the pipeline ``clipsync-monthly-retrain-<client>`` (created on first use), and creates a KFP recurring
run: by default at 02:00 on the 1st of each month (``0 0 2 1 * *``: KFP cron has 6 fields, seconds first),
at most one run at a time, no catch-up of missed months. ``submit`` launches one run now.

Only the standard library and kfp are imported at module level.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger("clipsync.schedule")

DEFAULT_CRON = "0 0 2 1 * *"  # what `schedule` used for every client before fleet.* planned a slot per client


class ScheduleError(ValueError):
    """A schedule argument is invalid, or the server refused the request."""


@dataclass(frozen=True)
class ScheduleResult:
    """What :func:`schedule` created on the server.

    Attributes:
        pipeline_id: The uploaded pipeline.
        version_id: The uploaded pipeline version (this compile).
        experiment_id: The experiment the recurring run belongs to.
        recurring_run_id: The recurring run.
        cron: Its schedule.
        replaced: Ids of former recurring runs of the same name that were deleted.
    """

    pipeline_id: str
    version_id: str
    experiment_id: str
    recurring_run_id: str
    cron: str
    replaced: tuple[str, ...] = ()


def validate_cron(expr: str) -> str:
    """Check a KFP cron expression (see :func:`components.common.cron.validate_cron`).

    Returns:
        The expression with its whitespace normalized.

    Raises:
        ScheduleError: With the offending field.
    """
    from components.common.cron import CronError
    from components.common.cron import validate_cron as check

    try:
        return check(expr)
    except CronError as exc:
        raise ScheduleError(str(exc)) from None


def _check_client(client_id: str) -> None:
    from components.common.names import CLIENT_ID_RULE, is_client_id

    if not is_client_id(client_id):
        raise ScheduleError(f"client id must be {CLIENT_ID_RULE}, got {client_id!r}")


def pipeline_name(client_id: str) -> str:
    """The KFP pipeline a client's package is uploaded as."""
    return f"clipsync-monthly-retrain-{client_id}"


def _connect(host: str, kfp_client: Any) -> Any:
    if kfp_client is not None:
        return kfp_client
    if not host or not host.startswith(("http://", "https://")):
        raise ScheduleError(f"--host must be the KFP API URL (http(s)://...), got {host!r}")
    import kfp

    try:
        return kfp.Client(host=host)  # calls the server's healthz
    except Exception as exc:
        raise ScheduleError(f"cannot reach the Kubeflow Pipelines API at {host}: {type(exc).__name__}: {exc}") from exc


def _upload(kfp_client: Any, package: Path, name: str) -> tuple[str, str]:
    """Upload ``package`` as a new version of pipeline ``name``; returns (pipeline_id, version_id)."""
    version_name = f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    pipeline_id = kfp_client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = kfp_client.upload_pipeline(
            str(package), pipeline_name=name, description="clipsync monthly_retrain (compiled by clipsync schedule)"
        )
        pipeline_id = pipeline.pipeline_id
        versions = kfp_client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise ScheduleError(f"pipeline {name} ({pipeline_id}) was uploaded but lists no version")
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        version = kfp_client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id)
        version_id = version.pipeline_version_id
    logger.info("uploaded pipeline %s (%s), version %s", name, pipeline_id, version_id)
    return pipeline_id, version_id


def schedule(
    host: str,
    client_id: str,
    config_yaml: str = "",
    cron: str = DEFAULT_CRON,
    *,
    experiment: str = "",
    job_name: str = "",
    replace: bool = False,
    kfp_client: Any = None,
    namespace: str | None = None,
) -> ScheduleResult:
    """Create the client's monthly recurring run on a KFP server.

    Args:
        host: The KFP API, e.g. ``http://ml-pipeline-ui.kubeflow`` (ignored when ``kfp_client`` is given).
        client_id: The client.
        config_yaml: The client's YAML config text, baked into the package's parameter defaults.
        cron: 6-field KFP cron (default: 02:00 UTC on the 1st of each month).
        experiment: KFP experiment (default ``clipsync-<client>``).
        job_name: Recurring run name (default ``clipsync-<client>-monthly``).
        replace: Delete former recurring runs of the same name first; without it their existence is an error.
        kfp_client: An existing ``kfp.Client``.
        namespace: The client's namespace on a multi-user Kubeflow (its profile: the runs execute there and read
            its Secret); ``None``: the server's default (single-user).

    Returns:
        The ids the server assigned.

    Raises:
        ScheduleError: On a bad argument, an unreachable server, or a recurring run that already exists.
    """
    cron = validate_cron(cron)
    _check_client(client_id)
    from components.common.names import experiment_name
    from pipelines.package import compile_pipeline

    experiment = experiment or experiment_name(client_id)
    job_name = job_name or f"clipsync-{client_id}-monthly"
    kfp_client = _connect(host, kfp_client)
    exp = kfp_client.create_experiment(experiment, namespace=namespace)  # returns the existing one of that name
    existing = kfp_client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100).recurring_runs or []
    same = [r.recurring_run_id for r in existing if r.display_name == job_name]
    if same and not replace:
        raise ScheduleError(
            f"recurring run {job_name!r} already exists in experiment {experiment!r} ({', '.join(same)}); "
            "use --replace to replace it"
        )
    with tempfile.TemporaryDirectory(prefix="clipsync-schedule-") as tmp:
        package = compile_pipeline(Path(tmp) / "monthly_retrain.yaml", client_id, config_yaml)
        pipeline_id, version_id = _upload(kfp_client, package, pipeline_name(client_id))
    for old in same:
        kfp_client.delete_recurring_run(old)
        logger.info("deleted former recurring run %s", old)
    run = kfp_client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=job_name,
        description=f"clipsync monthly retrain of {client_id}",
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        pipeline_id=pipeline_id,
        version_id=version_id,
    )
    logger.info("recurring run %s (%s) created: %s", job_name, run.recurring_run_id, cron)
    return ScheduleResult(pipeline_id, version_id, exp.experiment_id, run.recurring_run_id, cron, tuple(same))


def submit(
    host: str,
    client_id: str,
    config_yaml: str = "",
    *,
    as_of: str = "",
    window_days: int = 0,
    experiment: str = "",
    kfp_client: Any = None,
) -> str:
    """Launch one run of monthly_retrain now.

    Args:
        host: The KFP API (ignored when ``kfp_client`` is given).
        client_id: The client.
        config_yaml: The client's YAML config text.
        as_of: End of the retrain window (ISO date; empty: the config's or today).
        window_days: Window length (0: the config's).
        experiment: KFP experiment (default ``clipsync-<client>``).
        kfp_client: An existing ``kfp.Client``.

    Returns:
        The run id.

    Raises:
        ScheduleError: On a bad argument or an unreachable server.
    """
    _check_client(client_id)
    if as_of:
        try:
            datetime.strptime(as_of, "%Y-%m-%d")
        except ValueError as exc:
            raise ScheduleError(f"as_of must be an ISO date (YYYY-MM-DD), got {as_of!r}") from exc
    if window_days < 0:
        raise ScheduleError(f"window_days must be >= 0, got {window_days}")
    from components.common.names import experiment_name
    from pipelines.package import compile_pipeline

    kfp_client = _connect(host, kfp_client)
    with tempfile.TemporaryDirectory(prefix="clipsync-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "monthly_retrain.yaml", client_id, config_yaml)
        result = kfp_client.create_run_from_pipeline_package(
            str(package),
            arguments={"client_id": client_id, "as_of": as_of, "window_days": window_days},
            run_name=f"clipsync-{client_id}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment or experiment_name(client_id),
        )
    logger.info("run %s submitted", result.run_id)
    return result.run_id

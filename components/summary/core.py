"""summary: the run's closing report, built from what the stages logged to MLflow; it closes the parent run.

:func:`finish_run` is the DAG's exit handler: it runs whatever happened to the other tasks. After a successful
run it hands on the summary; after a failure it writes one saying what failed, why, and what was still promoted,
closes the parent MLflow run FAILED, and in both cases gives back the client's run lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from components.config import ClientConfig

logger = logging.getLogger("clipsync.summary")


@dataclass(frozen=True)
class StageResult:
    """One nested MLflow run of the DAG run (``reason``: why it did not finish, if it did not; ``not_evaluated``:
    figures it could not compute, and why)."""

    stage: str
    status: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    not_evaluated: str = ""


@dataclass(frozen=True)
class RunSummary:
    """The closing report of one DAG run."""

    client_id: str
    as_of: str
    window_days: int
    parent_run_id: str
    run_link: str
    stages: list[StageResult]
    artifacts: dict[str, str]
    decisions: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    monitor: str = ""

    def to_markdown(self) -> str:
        """Render the summary a person reads at the end of a run."""
        title = f"# monthly_retrain: {self.client_id}, window of {self.window_days} days up to {self.as_of}"
        lines = [title + (": **FAILED**" if self.failures else "")]
        if self.failures:
            lines += ["", "## What failed", "", *[f"- {f}" for f in self.failures]]
            lines += ["", "## Promoted by this run", "", *([f"- {p}" for p in self.promoted] or ["- nothing"])]
        if self.stages:
            lines += ["", "| stage | status | seconds | figures |", "|---|---|---:|---|"]
        for stage in self.stages:
            # Zero counts of rejection reasons are logged every month for stable names; here they are noise.
            # The monitor's scores and values have their own section below; the table keeps its drift flags.
            shown = {
                k: v
                for k, v in stage.metrics.items()
                if not ("rejected_" in k and v == 0) and not (k.startswith("monitor_") and not k.endswith("_drift"))
            }
            notes = [f"not evaluated: {stage.not_evaluated}"] if stage.not_evaluated else []
            figures = ", ".join(_figures(shown) + notes)
            lines.append(f"| {stage.stage} | {stage.status} | {stage.seconds:.1f} | {figures} |")
        if self.decisions:
            lines += ["", "## A/B gate", ""]
            for decision in self.decisions:
                lines += [decision.strip(), ""]
        if self.outcomes:
            lines += ["## Deploy", "", *[o.strip() for o in self.outcomes]]
        if self.monitor:
            lines += ["", self.monitor.strip().replace("# monitor:", "## Monitor:", 1)]
        if self.artifacts:
            lines += ["", "Outputs:"]
            lines += [f"- {name}: {uri}" for name, uri in sorted(self.artifacts.items())]
        if self.parent_run_id:
            lines += ["", f"MLflow parent run {self.parent_run_id}: {self.run_link}"]
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _figures(metrics: dict[str, float]) -> list[str]:
    """``name=value``, sorted by name. A figure logged with its confidence interval (``<name>_ci_low``,
    ``<name>_ci_high``) reads ``name=value [low, high]``; a cross-validated one (``<stem>_mean``, ``<stem>_std``)
    ``<stem>=mean ± std``."""

    def folded(key: str) -> bool:
        ci = any(key.endswith(s) and key.removesuffix(s) in metrics for s in ("_ci_low", "_ci_high"))
        return ci or (key.endswith("_std") and f"{key.removesuffix('_std')}_mean" in metrics)

    out = []
    for key, value in sorted(metrics.items()):
        stem = key.removesuffix("_mean")
        if folded(key):
            continue
        if f"{key}_ci_low" in metrics and f"{key}_ci_high" in metrics:
            out.append(f"{key}={_fmt(value)} [{_fmt(metrics[f'{key}_ci_low'])}, {_fmt(metrics[f'{key}_ci_high'])}]")
        elif key.endswith("_mean") and f"{stem}_std" in metrics:
            out.append(f"{stem}={_fmt(value)} ± {_fmt(metrics[f'{stem}_std'])}")
        else:
            out.append(f"{key}={_fmt(value)}")
    return out


def collect_stages(config: ClientConfig, parent_run_id: str) -> list[StageResult]:
    """Read the nested runs of ``parent_run_id`` in the order they started."""
    from mlflow.tracking import MlflowClient

    from components.common import tracking

    experiment_id = tracking.configure(config.tracking)
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    stages = []
    for run in runs:
        end = run.info.end_time or run.info.start_time
        stages.append(
            StageResult(
                stage=run.data.tags.get("clipsync.stage", run.info.run_name),
                status=run.info.status,
                seconds=(end - run.info.start_time) / 1000.0,
                metrics=dict(run.data.metrics),
                reason=run.data.tags.get(tracking.END_REASON_TAG, ""),
                not_evaluated=run.data.tags.get(tracking.NOT_EVALUATED_TAG, ""),
            )
        )
    return stages


def summarize(
    config: ClientConfig,
    parent_run_id: str,
    artifacts: dict[str, str],
    decisions: list[str] | None = None,
    outcomes: list[str] | None = None,
    monitor: str = "",
) -> RunSummary:
    """Build the run summary and close the parent MLflow run (FINISHED, or FAILED if a stage failed).

    Args:
        config: The run's configuration.
        parent_run_id: The parent MLflow run opened by start_run.
        artifacts: Output name -> location, listed in the summary.
        decisions: The A/B gate's decisions (Markdown), one per model.
        outcomes: What deploy did (or that the champion was kept), one line per model.
        monitor: The monitor stage's report (Markdown: drift yes/no per signal, method, score).

    Returns:
        The summary (also logged to the parent run as ``summary.md``).
    """
    from components.common import tracking

    stages = collect_stages(config, parent_run_id)
    summary = RunSummary(
        client_id=config.client_id,
        as_of=config.window.as_of,
        window_days=config.window.days,
        parent_run_id=parent_run_id,
        run_link=tracking.run_link(config.tracking, parent_run_id),
        stages=stages,
        artifacts=artifacts,
        decisions=list(decisions or []),
        outcomes=list(outcomes or []),
        monitor=monitor,
    )
    failed = [s.stage for s in stages if s.status != "FINISHED"]
    totals = {f"{s.stage}.{k}": v for s in stages for k, v in s.metrics.items()}
    tracking.finish_parent_run(
        config.tracking,
        parent_run_id,
        status="FAILED" if failed else "FINISHED",
        summary={"stages": len(stages), "failed_stages": len(failed), **totals},
        markdown=summary.to_markdown(),
    )
    logger.info("summary: %d stages, %d failed", len(stages), len(failed))
    return summary


def promoted_by(config: ClientConfig, parent_run_id: str) -> list[str]:
    """What this DAG run promoted: each model whose registry ``champion`` is a version trained under it."""
    from mlflow import MlflowClient

    from components.common import tracking
    from components.common.champions import champion_version
    from components.common.names import MODELS, registered_name

    client = MlflowClient()
    promoted = []
    for model in MODELS:
        name = registered_name(model, config.client_id)
        version = champion_version(config.tracking, model, config.client_id)
        if version is None:
            continue
        source_run = client.get_model_version(name, version).run_id
        if source_run and client.get_run(source_run).data.tags.get(tracking.PARENT_RUN_TAG) == parent_run_id:
            promoted.append(f"{model}: {name} v{version} is the champion now")
    return promoted


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def finish_run(
    client_id: str,
    config_yaml: str,
    as_of: str,
    window_days: int,
    dag_run_id: str,
    state: str,
    error: str = "",
) -> str:
    """Close one DAG run whatever happened to its tasks: the exit handler's work.

    After a run whose tasks all succeeded it returns the summary the summary task logged. Otherwise it builds
    one from what MLflow holds: which stages failed and why (their end reasons), which ran, and which model
    this run still promoted; it closes the parent run FAILED with that summary. Either way it gives back the
    client's run lease if this DAG run holds it. Faults met on the way (MLflow or the store unreachable) are
    written into the summary instead of failing the exit handler.

    Args:
        client_id: The DAG's parameter (as start_run got it).
        config_yaml: The DAG's parameter.
        as_of: The DAG's parameter.
        window_days: The DAG's parameter.
        dag_run_id: The DAG run's id (start_run's lease holder and :data:`tracking.DAG_RUN_TAG`).
        state: The final state of the DAG's tasks from the orchestrator (``SUCCEEDED``, ``FAILED``, ...).
        error: The orchestrator's error message, if any.

    Returns:
        The summary (Markdown).
    """
    from components.common import lease, tracking
    from components.common.storage import open_store
    from components.start_run.core import resolve_config

    try:
        config = resolve_config(client_id, config_yaml, as_of, window_days)
    except Exception as exc:  # start_run failed on the same configuration
        return f"# monthly_retrain: {client_id or 'acme'}: **FAILED**\n\n## What failed\n\n- configuration: {exc}\n"
    notes: list[str] = []
    parent = None
    try:
        parent = tracking.find_parent_run(config.tracking, dag_run_id)
    except Exception as exc:
        notes.append(f"the run's record could not be read from MLflow ({config.tracking.tracking_uri}): {_cause(exc)}")

    markdown = ""
    if state == "SUCCEEDED" and parent is not None and parent.info.status == "FINISHED":
        import mlflow

        try:
            markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary.md")
        except Exception as exc:
            notes.append(f"the summary could not be read from MLflow: {_cause(exc)}")
    if not markdown:
        markdown = _failure_summary(config, parent, state, error, notes)

    try:
        store = open_store(config.storage.artifacts_uri, config.encryption)
        released = lease.release(store, dag_run_id, f"DAG run ended {state}")
        if not released and parent is not None:
            notes.append("the run lease was not held by this run any more")
    except Exception as exc:
        notes.append(f"the run lease could not be released (it expires by itself): {_cause(exc)}")
    if notes:
        markdown += "\n" + "\n".join(f"Note: {n}" for n in notes) + "\n"
    logger.info("finish_run: DAG run %s ended %s", dag_run_id, state)
    return markdown


def _failure_summary(config: ClientConfig, parent, state: str, error: str, notes: list[str]) -> str:
    """The summary of a DAG run that did not succeed; closes its parent run FAILED."""
    from components.common import lease, tracking
    from components.common.storage import open_store

    stages: list[StageResult] = []
    promoted: list[str] = []
    failures: list[str] = []
    parent_id = parent.info.run_id if parent is not None else ""
    if parent is not None:
        try:
            stages = collect_stages(config, parent_id)
            promoted = promoted_by(config, parent_id)
        except Exception as exc:
            notes.append(f"the stages' records could not be read from MLflow: {_cause(exc)}")
        failures = [
            f"{s.stage}: {s.status}: {s.reason or 'no reason recorded'}" for s in stages if s.status != "FINISHED"
        ]
    elif notes:
        failures.append("which stage failed is unknown: MLflow could not be read (see the notes below)")
    else:
        failures.append("start_run: no MLflow run was opened for this DAG run")
        try:
            current = lease.read_lease(open_store(config.storage.artifacts_uri, config.encryption))
            if current is not None and not lease.staleness(current):
                failures[-1] += f"; the client's run lease is held by {current.describe()}"
        except Exception as exc:
            notes.append(f"the run lease could not be read: {_cause(exc)}")
    if error and not any(s.status != "FINISHED" for s in stages):  # the stages' own reasons say more
        failures.append(f"orchestrator: {error}")
    if not failures:
        failures.append(f"the DAG's tasks ended {state} (every stage that ran finished; a later task did not run)")
    summary = RunSummary(
        client_id=config.client_id,
        as_of=config.window.as_of,
        window_days=config.window.days,
        parent_run_id=parent_id,
        run_link=tracking.run_link(config.tracking, parent_id) if parent_id else "",
        stages=stages,
        artifacts={},
        failures=failures,
        promoted=promoted,
    )
    markdown = summary.to_markdown()
    if parent is not None:
        try:
            tracking.finish_parent_run(
                config.tracking, parent_id, status="FAILED", markdown=markdown, reason="; ".join(failures)
            )
        except Exception as exc:
            notes.append(f"the parent run could not be closed (the next start_run closes it): {_cause(exc)}")
    return markdown

"""summary: the run's closing report, built from what the stages logged to MLflow; it closes the parent run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from components.common.config import ClientConfig

logger = logging.getLogger("clipsync.summary")


@dataclass(frozen=True)
class StageResult:
    """One nested MLflow run of the DAG run."""

    stage: str
    status: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


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

    def to_markdown(self) -> str:
        """Render the summary a person reads at the end of a run."""
        lines = [
            f"# monthly_retrain: {self.client_id}, window of {self.window_days} days up to {self.as_of}",
            "",
            "| stage | status | seconds | figures |",
            "|---|---|---:|---|",
        ]
        for stage in self.stages:
            # Zero counts of rejection reasons are logged every month for stable names; here they are noise.
            shown = {k: v for k, v in stage.metrics.items() if not ("rejected_" in k and v == 0)}
            figures = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items()))
            lines.append(f"| {stage.stage} | {stage.status} | {stage.seconds:.1f} | {figures} |")
        if self.decisions:
            lines += ["", "## A/B gate", ""]
            for decision in self.decisions:
                lines += [decision.strip(), ""]
        if self.outcomes:
            lines += ["## Deploy", "", *[o.strip() for o in self.outcomes]]
        lines += ["", "Outputs:"]
        lines += [f"- {name}: {uri}" for name, uri in sorted(self.artifacts.items())]
        lines += ["", f"MLflow parent run {self.parent_run_id}: {self.run_link}"]
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


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
            )
        )
    return stages


def summarize(
    config: ClientConfig,
    parent_run_id: str,
    artifacts: dict[str, str],
    decisions: list[str] | None = None,
    outcomes: list[str] | None = None,
) -> RunSummary:
    """Build the run summary and close the parent MLflow run (FINISHED, or FAILED if a stage failed).

    Args:
        config: The run's configuration.
        parent_run_id: The parent MLflow run opened by start_run.
        artifacts: Output name -> location, listed in the summary.
        decisions: The A/B gate's decisions (Markdown), one per model.
        outcomes: What deploy did (or that the champion was kept), one line per model.

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

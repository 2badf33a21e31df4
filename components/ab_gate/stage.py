"""The ab_gate stage around the pure :func:`~components.ab_gate.core.decide`: read, decide, log."""

from __future__ import annotations

import logging
from pathlib import Path

from components.ab_gate.core import Decision, decide
from components.ab_gate.inputs import NotEvaluable, clip_evaluations, lipsync_evaluations
from components.common.no_challenger import no_challenger_reason

logger = logging.getLogger("clipsync.ab_gate")


def run_ab_gate(
    config, model: str, report_dir: Path, challenger_version: str, log_to_active_run: bool = True
) -> Decision:
    """Gate one model of this month's run.

    Call it inside the stage's ``tracking.stage_run`` block when ``log_to_active_run`` is set: the decision's
    numbers go to the active run's metrics and the decision itself to ``ab_gate/<model>.json`` and ``.md``.

    Args:
        config: The ClientConfig (tracking, client id, the ``ab_gate`` policy).
        model: ``clip`` or ``lipsync``.
        report_dir: The evaluate stage's report folder for that model.
        challenger_version: The challenger's registry version (the finetune stage's output; ``""`` when
            this month trained none, and ``report_dir`` then holds the reason).
        log_to_active_run: Log to MLflow's active run.

    Returns:
        The decision (keeping the champion is a normal outcome).
    """
    from components.common import tracking
    from components.common.champions import champion_version

    policy = config.ab_gate
    if model not in ("clip", "lipsync"):
        raise ValueError(f"model must be clip or lipsync, got {model!r}")
    try:
        if (reason := no_challenger_reason(report_dir)) is not None:
            raise NotEvaluable(f"no challenger this month: {reason}")
        if model == "clip":
            champion, challenger, base = clip_evaluations(Path(report_dir), challenger_version)
        else:
            current = champion_version(config.tracking, "lipsync", config.client_id)
            champion, challenger, base = lipsync_evaluations(Path(report_dir), challenger_version, current)
        decision = decide(champion, challenger, policy, base=base)
    except NotEvaluable as exc:
        # A month whose test split cannot measure the metric is not a failure: nothing changes.
        decision = Decision.not_evaluable(model, challenger_version, str(exc), policy)
    logger.info("ab_gate %s: %s (%s)", model, decision.verdict, "; ".join(decision.reasons[:2]))
    if log_to_active_run:
        import mlflow

        tracking.log_metrics({k: v for k, v in decision.as_metrics().items() if v == v})
        tracking.log_dict_artifact(decision.to_dict(), f"ab_gate/{model}.json")
        mlflow.log_text(decision.to_markdown(), f"ab_gate/{model}.md")
        mlflow.set_tag(f"clipsync.gate.{model}", decision.verdict)
    return decision

"""ab_gate: read evaluate's report, decide with the pure :func:`~components.ab_gate.decision.decide`, log it."""

from __future__ import annotations

import logging
from pathlib import Path

from components.ab_gate.config import GatePolicy
from components.ab_gate.decision import Decision, decide
from components.ab_gate.inputs import NotEvaluable, clip_evaluations, lipsync_evaluations
from components.common.no_challenger import no_challenger_reason
from components.common.stage import StageContext

logger = logging.getLogger("clipsync.ab_gate")


def run_ab_gate(
    model: str, report_dir: Path, challenger_version: str, out_path: Path, cfg: GatePolicy, ctx: StageContext
) -> Decision:
    """The ab_gate task of one model: promote the challenger or keep the champion.

    Opens the stage run ``ab_gate_<model>``: the decision's numbers go to its metrics, the decision itself to
    ``ab_gate/<model>.json`` and ``.md`` and the tag ``clipsync.gate.<model>``.

    Args:
        model: ``clip`` or ``lipsync``.
        report_dir: The evaluate stage's report folder for that model.
        challenger_version: The challenger's registry version (the finetune stage's output; ``""`` when
            this month trained none, and ``report_dir`` then holds the reason).
        out_path: Where the decision is written as Markdown (the run summary shows it).
        cfg: The promotion policy.
        ctx: The client, the registry (the lip-sync champion's version), the MLflow run.

    Returns:
        The decision (keeping the champion is a normal outcome).
    """
    from components.common.champions import champion_version

    if model not in ("clip", "lipsync"):
        raise ValueError(f"model must be clip or lipsync, got {model!r}")
    params = {"model": model, "challenger_version": challenger_version}
    with ctx.stage_run(f"ab_gate_{model}", params) as run:
        try:
            if (reason := no_challenger_reason(report_dir)) is not None:
                raise NotEvaluable(f"no challenger this month: {reason}")
            if model == "clip":
                champion, challenger, base = clip_evaluations(Path(report_dir), challenger_version)
            else:
                current = champion_version(ctx.tracking, "lipsync", ctx.client_id)
                champion, challenger, base = lipsync_evaluations(Path(report_dir), challenger_version, current)
            decision = decide(champion, challenger, cfg, base=base)
        except NotEvaluable as exc:
            # A month whose test split cannot measure the metric is not a failure: nothing changes.
            decision = Decision.not_evaluable(model, challenger_version, str(exc), cfg)
        logger.info("ab_gate %s: %s (%s)", model, decision.verdict, "; ".join(decision.reasons[:2]))
        run.log_metrics({k: v for k, v in decision.as_metrics().items() if v == v})
        run.log_dict(decision.to_dict(), f"ab_gate/{model}.json")
        run.log_text(decision.to_markdown(), f"ab_gate/{model}.md")
        run.set_tag(f"clipsync.gate.{model}", decision.verdict)
    Path(out_path).write_text(decision.to_markdown())
    return decision

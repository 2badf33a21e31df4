"""Thin kfp wrapper of the A/B gate (components.ab_gate.core -> decision.decide), one task per model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def ab_gate(
    config: str,
    parent_run_id: str,
    model: str,
    evaluation: Input[Dataset],
    challenger_version: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> NamedTuple("Gate", [("promote", bool), ("decision", str)]):
    """Promote or keep: the challenger must beat the champion (or the base model) by min_gain, significantly,
    with no category/perturbation regressing beyond max_regression."""
    from collections import namedtuple
    from pathlib import Path

    from components.ab_gate.core import run_ab_gate
    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs

    cfg, ctx = task_inputs(config, parent_run_id)
    decision = run_ab_gate(model, Path(evaluation.path), challenger_version, Path(report.path), cfg.ab_gate, ctx)
    log_kfp_metrics(metrics, decision.as_metrics())  # NaN (not evaluable) is not a valid kfp metric
    return namedtuple("Gate", ["promote", "decision"])(decision.promote, decision.to_json())

"""Thin kfp wrapper of the A/B gate (components.ab_gate.stage -> core.decide), one task per model."""

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
    import logging
    from collections import namedtuple
    from pathlib import Path

    from components.ab_gate.stage import run_ab_gate
    from components.common import tracking
    from components.config import ClientConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    params = {"model": model, "challenger_version": challenger_version}
    with tracking.stage_run(cfg.tracking, parent_run_id, f"ab_gate_{model}", params):
        decision = run_ab_gate(cfg, model, Path(evaluation.path), challenger_version)
    Path(report.path).write_text(decision.to_markdown())
    for name, value in decision.as_metrics().items():
        if value == value:  # NaN (not evaluable) is not a valid kfp metric
            metrics.log_metric(name, value)
    return namedtuple("Gate", ["promote", "decision"])(decision.promote, decision.to_json())

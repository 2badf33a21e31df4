"""Thin kfp wrapper of components.finetune_clip.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def finetune_clip(
    config: str,
    parent_run_id: str,
    frames: Input[Dataset],
    feedback: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Fine-tune the client's CLIP search model on the frames Dataset and last month's feedback records; register
    it as ``clip-<client>@challenger``.

    Returns:
        The registered model version, or ``""`` when this month's videos cannot train the model (the
        artifact then holds ``no_challenger.json`` with the reason, and the gate keeps the champion).
    """
    from pathlib import Path

    from components.common.names import registered_name
    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.finetune_clip.core import run_finetune_clip

    cfg, ctx = task_inputs(config, parent_run_id)
    report = run_finetune_clip(
        Path(frames.path),
        Path(model.path),
        cfg.finetune_clip,
        ctx,
        feedback_dir=Path(feedback.path),
        config_json=config,
    )
    model.metadata.update(
        {
            "registered_name": registered_name("clip", cfg.client_id),
            "registered_version": report.registered_version or "",
            "strategy": report.strategy,
            "base_model": report.base_model,
            "not_trained_reason": report.not_trained_reason,
        }
    )
    log_kfp_metrics(metrics, report.as_metrics())
    return report.registered_version or ""

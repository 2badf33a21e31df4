"""Thin kfp wrapper of components.finetune_lipsync.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def finetune_lipsync(
    config: str, parent_run_id: str, faces: Input[Dataset], model: Output[Model], metrics: Output[Metrics]
) -> str:
    """Fine-tune the lip-sync detector on the faces Dataset; register it as ``lipsync-<client>@challenger``.

    Returns:
        The registered model version, or ``""`` when this month's videos cannot train the model (the
        artifact then holds ``no_challenger.json`` with the reason, and the gate keeps the champion).
    """
    from pathlib import Path

    from components.common.stage import log_kfp_metrics
    from components.config import task_inputs
    from components.finetune_lipsync.core import run_finetune_lipsync

    cfg, ctx = task_inputs(config, parent_run_id)
    inputs = Path(faces.path), Path(model.path)  # face_tracking says which clips carry evidence to train on
    report = run_finetune_lipsync(*inputs, cfg.finetune_lipsync, ctx, face_config=cfg.face_tracking, config_json=config)
    model.metadata.update(
        {
            "registered_name": report.registered_name,
            "registered_version": report.registered_version,
            "threshold": report.threshold,
            "pretrained": report.pretrained,
            "not_trained_reason": report.not_trained_reason,
        }
    )
    log_kfp_metrics(metrics, report.as_metrics())
    return report.registered_version

"""Thin kfp wrapper of components.face_tracking.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def face_tracking(config: str, parent_run_id: str, frames: Input[Dataset], faces: Output[Dataset]):
    """Track the faces of the dense frames, choose each video's subject, write aligned mouth crops + audio."""
    from pathlib import Path

    from components.config import task_inputs
    from components.face_tracking.core import run_face_tracking

    cfg, ctx = task_inputs(config, parent_run_id)
    report = run_face_tracking(Path(frames.path), Path(faces.path), cfg.face_tracking, ctx)
    faces.metadata.update({k: float(v) for k, v in report.as_metrics().items()})

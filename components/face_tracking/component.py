"""Thin kfp wrapper of components.face_tracking.core."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def face_tracking(config: str, parent_run_id: str, frames: Input[Dataset], faces: Output[Dataset]):
    """Track the faces of the dense frames, choose each video's subject, write aligned mouth crops + audio."""
    import dataclasses
    import logging
    from pathlib import Path

    from components.common import tracking
    from components.config import ClientConfig
    from components.face_tracking.core import run_face_tracking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    stage_cfg = cfg.face_tracking
    params = dataclasses.asdict(stage_cfg)
    with tracking.stage_run(cfg.tracking, parent_run_id, "face_tracking", params):
        report = run_face_tracking(Path(frames.path), Path(faces.path), stage_cfg, Path(cfg.cache_dir))
        metrics = report.as_metrics()
        tracking.log_metrics(metrics)
        tracking.log_dict_artifact({"videos": report.per_video}, "face_tracking/per_video.json")
    faces.metadata.update({k: float(v) for k, v in metrics.items()})

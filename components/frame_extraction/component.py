"""Thin kfp wrapper of components.frame_extraction.core."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def frame_extraction(config: str, parent_run_id: str, manifest: Input[Dataset], frames: Output[Dataset]) -> NamedTuple(
    "FrameExtractionOutputs", videos_ok=int, videos_rejected=int, frames_written=int
):
    """Sample search frames, a dense clip around speech and 16 kHz audio from every accepted video."""
    import dataclasses
    import logging
    from collections import namedtuple
    from pathlib import Path

    from components.common import tracking
    from components.config import ClientConfig
    from components.frame_extraction.core import run_frame_extraction

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    stage_cfg = cfg.frame_extraction
    params = dataclasses.asdict(stage_cfg)
    with tracking.stage_run(cfg.tracking, parent_run_id, "frame_extraction", params):
        report = run_frame_extraction(
            Path(manifest.path), Path(frames.path), cfg.storage.source_uri, cfg.state_dir, stage_cfg
        )
        metrics = report.as_metrics()
        tracking.log_metrics(metrics)
        tracking.log_dict_artifact({"videos": report.per_video}, "frame_extraction/per_video.json")
    frames.metadata.update(metrics)
    outputs = namedtuple("FrameExtractionOutputs", ["videos_ok", "videos_rejected", "frames_written"])
    return outputs(report.ok, report.rejected, report.frames_written)

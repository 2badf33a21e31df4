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
    from collections import namedtuple
    from pathlib import Path

    from components.config import task_inputs
    from components.frame_extraction.core import run_frame_extraction

    cfg, ctx = task_inputs(config, parent_run_id)
    report = run_frame_extraction(Path(manifest.path), Path(frames.path), cfg.frame_extraction, ctx)
    frames.metadata.update(report.as_metrics())
    outputs = namedtuple("FrameExtractionOutputs", ["videos_ok", "videos_rejected", "frames_written"])
    return outputs(report.ok, report.rejected, report.frames_written)

"""One media probe: ingest, frame_extraction and the lip-sync server read a video's facts the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from components.common.manifest import VideoRecord  # noqa: E402
from components.common.media import MediaError, probe_media  # noqa: E402
from components.frame_extraction.config import FrameExtractionConfig  # noqa: E402
from components.frame_extraction.core import extract_video  # noqa: E402
from components.ingest.config import IngestConfig  # noqa: E402
from components.ingest.core import VideoRejected, probe_video  # noqa: E402


def write_rotate_tagged(path: Path, width: int = 64, height: int = 48, fps: int = 10, frames: int = 10) -> Path:
    """A Matroska file whose only rotation is the legacy ``rotate`` tag (90: turn clockwise for display).

    Its coded frames are red on the left half and blue on the right half, so upright frames are red on top.
    """
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)
    image[:, width // 2 :] = (0, 0, 255)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.metadata["rotate"] = "90"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_rotate_tagged_file_reads_the_same_in_ingest_frame_extraction_and_serving(tmp_path):
    pytest.importorskip("kserve")
    from serving.lipsync import probe_video as serving_probe

    path = write_rotate_tagged(tmp_path / "phone.mkv")
    with av.open(str(path)) as container:  # the file carries the tag and no display matrix
        stream = container.streams.video[0]
        assert {k.lower(): v for k, v in stream.metadata.items()}["rotate"] == "90"
        assert not next(container.decode(stream)).rotation

    info = probe_media(path)
    assert (info.rotation, info.width, info.height) == (270, 48, 64)  # 90 clockwise = 270 counter-clockwise
    assert info.fps == pytest.approx(10.0) and info.duration_s == pytest.approx(1.0, abs=0.15)

    ingest = probe_video(path, IngestConfig(), needs_audio=False)
    assert (ingest["rotation"], ingest["width"], ingest["height"]) == (info.rotation, info.width, info.height)
    assert ingest["duration_s"] == round(info.duration_s, 3) and ingest["fps"] == round(info.fps, 3)

    record = VideoRecord(
        video_id="phone", key="videos/phone.mkv", uri="", sha256="", size_bytes=0, uploaded_at="", status="accepted"
    )
    video = extract_video(path, record, FrameExtractionConfig(search_size=32, dense_all=True))
    assert video.status == "ok", video.reason
    assert (video.rotation, video.width, video.height) == (info.rotation, info.width, info.height)
    assert (video.duration_s, video.native_fps) == (pytest.approx(info.duration_s), pytest.approx(info.fps))
    dense = video.dense_frames[0].astype(int)
    assert dense.shape[:2] == (320, 240)  # upright (taller than wide) at dense_max_side: red above blue
    assert dense[:140, :, 0].mean() > 200 and dense[180:, :, 2].mean() > 200

    assert serving_probe(path, max_duration_s=10.0) == info


def test_probe_refusals_name_ingest_codes(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError) as refused:
        probe_media(text)
    assert refused.value.code == "not_media" and "InvalidDataError" in str(refused.value)
    with pytest.raises(VideoRejected, match=r"^not_media: not a readable media container"):
        probe_video(text, IngestConfig(), needs_audio=False)

"""Writing mp4 files with PyAV: H.264 video, AAC audio, either or both.

x264 runs single-threaded and without macroblock-tree, so the bytes depend only on the input (PyAV/FFmpeg
write no creation time unless asked), which makes the demo library byte-reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

AUDIO_CHUNK = 1024  # samples per AAC frame


def _valid_frames(frames: np.ndarray) -> bool:
    return (
        frames.dtype == np.uint8
        and frames.ndim == 4
        and frames.shape[-1] == 3
        and not frames.shape[1] % 2
        and not frames.shape[2] % 2
    )


def write_mp4(
    path: Path,
    frames: np.ndarray | None,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 23,
    preset: str = "veryfast",
) -> None:
    """Encode an mp4 with an H.264 video stream and/or an AAC mono audio stream.

    Args:
        path: Output file (overwritten).
        frames: uint8 RGB ``[T, H, W, 3]`` with even ``H`` and ``W``, or ``None`` for an audio-only file.
        fps: Frame rate of the video stream.
        audio: float32 mono samples in [-1, 1], or ``None`` for a video without audio.
        sample_rate: Audio sample rate.
        crf: x264 constant rate factor.
        preset: x264 preset.

    Raises:
        ValueError: If there is neither video nor audio, or the frames are not uint8 RGB with even sides.
    """
    import av

    if frames is None and audio is None:
        raise ValueError("write_mp4 needs frames, audio or both")
    if frames is not None and (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
        or frames.shape[1] % 2
        or frames.shape[2] % 2
    ):
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with even H and W, got {frames.dtype} {frames.shape}")
    with av.open(str(path), "w", format="mp4") as container:
        vstream = astream = None
        if frames is not None:
            # mbtree off: this x264 build's macroblock-tree lookahead reads an uninitialised stack value
            # (valgrind memcheck), so the same frames encoded twice in one process gave different bytes.
            options = {"preset": preset, "crf": str(crf), "x264-params": "mbtree=0"}
            vstream = container.add_stream("libx264", rate=fps, options=options)
            vstream.width, vstream.height = int(frames.shape[2]), int(frames.shape[1])
            vstream.pix_fmt = "yuv420p"
            vstream.thread_count = 1
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            astream.bit_rate = 48000
        if vstream is not None:
            for image in frames:
                container.mux(vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(vstream.encode())
        if astream is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
            for start in range(0, len(samples), AUDIO_CHUNK):
                chunk = samples[start : start + AUDIO_CHUNK]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                container.mux(astream.encode(frame))
            container.mux(astream.encode())

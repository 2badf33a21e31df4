"""One probe of a video file (PyAV): what ingest checks, frame_extraction decodes and the lip-sync server accepts.

A video's facts are read one way everywhere, so the three cannot disagree about an upload:

- ``rotation``: the counter-clockwise degrees (0, 90, 180, 270) that turn the decoded frames upright: the
  display matrix of the first frame, else the legacy ``rotate`` stream tag in any case (it holds the clockwise
  rotation to apply for display); ``width`` x ``height`` is the display size, after that rotation;
- ``duration_s``: the video stream's duration, else the container's minus the stream's start;
- ``fps``: the stream's average frame rate, else the rate FFmpeg guesses.

``av`` is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class MediaError(ValueError):
    """The file is not a video clipsync can read. ``code`` is ingest's rejection code, ``str(exc)`` the detail.

    Codes: ``not_media`` (no readable container), ``no_video_stream``, ``undecodable`` (no frame decodes).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class StreamTiming:
    """When a video stream starts, how long it lasts and its frame rate (``None``: the file does not say)."""

    start_s: float
    duration_s: float | None
    fps: float | None


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` found in a file.

    Attributes:
        streams: The streams as ``type(codec)``, comma-separated (for messages).
        video_codec: The first video stream's codec.
        width: Display width (after ``rotation``).
        height: Display height (after ``rotation``).
        rotation: Counter-clockwise degrees that turn decoded frames upright (0, 90, 180, 270).
        fps: Average frame rate (0 when unknown).
        start_s: Start time of the video stream.
        duration_s: Duration of the video stream (0 when unknown).
        has_audio: The file has an audio stream.
        audio_sample_rate: Its sample rate (0 without audio).
    """

    streams: str
    video_codec: str
    width: int
    height: int
    rotation: int
    fps: float
    start_s: float
    duration_s: float
    has_audio: bool
    audio_sample_rate: int


def ffmpeg_error(exc: Exception) -> str:
    """An FFmpeg error in a line: its type and FFmpeg's own words."""
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


def rotation_of(stream: Any, frame: Any | None) -> int:
    """Counter-clockwise degrees (0/90/180/270) to turn the decoded frames of ``stream`` upright.

    Args:
        stream: A PyAV video stream (its legacy ``rotate`` tag is the fallback).
        frame: A decoded frame of it (its display matrix wins), or ``None``.
    """
    degrees = None
    if frame is not None:
        try:
            degrees = float(frame.rotation)
        except (AttributeError, TypeError, ValueError):
            degrees = None
    if not degrees:
        # Matroska keeps tag names upper case (ROTATE); FFmpeg's own lookups ignore the case too.
        legacy = next((v for k, v in (stream.metadata or {}).items() if k.lower() == "rotate"), None)
        if legacy:
            try:
                # The legacy tag is the clockwise rotation to apply for display.
                degrees = -float(legacy)
            except ValueError:
                degrees = None
    if not degrees:
        return 0
    return round(degrees / 90.0) % 4 * 90


def display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """The size a coded ``width`` x ``height`` frame is shown at after ``rotation``."""
    return (height, width) if rotation in (90, 270) else (width, height)


def stream_timing(container: Any, stream: Any) -> StreamTiming:
    """Start, duration and frame rate of a PyAV video ``stream`` of an open ``container``."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
    if stream.duration is not None and tb is not None:
        duration: float | None = float(stream.duration * tb)
    elif container.duration is not None:
        duration = container.duration / 1_000_000 - start
    else:
        duration = None
    rate = stream.average_rate or stream.guessed_rate
    return StreamTiming(start, duration, float(rate) if rate else None)


def probe_media(path: str | Path, check: Callable[[int, int, float], None] | None = None) -> MediaInfo:
    """Open a video, decode its first frame and describe it (the file is only read).

    Args:
        path: The file.
        check: Called with the coded frame width and height and the duration (0 when unknown), all read from
            the headers, before any frame is decoded; it raises to refuse the file (the server's upload limits).

    Raises:
        MediaError: ``not_media``, ``no_video_stream`` or ``undecodable``, with FFmpeg's reason.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("not_media", f"not a readable media container ({ffmpeg_error(exc)})") from None
    with container:
        streams = ", ".join(f"{s.type}({s.codec_context.name})" for s in container.streams) or "none"
        if not container.streams.video:
            raise MediaError("no_video_stream", f"streams present: {streams}")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        timing = stream_timing(container, stream)
        if check is not None:
            check(stream.codec_context.width, stream.codec_context.height, max(0.0, timing.duration_s or 0.0))
        try:
            frame = next(container.decode(stream), None)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError("undecodable", f"{codec} stream, first frame failed: {ffmpeg_error(exc)}") from None
        if frame is None:
            raise MediaError("undecodable", f"{codec} stream holds no decodable frame")
        rotation = rotation_of(stream, frame)
        width, height = display_size(frame.width, frame.height, rotation)
        audio = container.streams.audio
        sample_rate = int(audio[0].codec_context.sample_rate or 0) if audio else 0
    return MediaInfo(
        streams=streams,
        video_codec=codec,
        width=int(width),
        height=int(height),
        rotation=rotation,
        fps=timing.fps or 0.0,
        start_s=timing.start_s,
        duration_s=max(0.0, timing.duration_s or 0.0),
        has_audio=bool(audio),
        audio_sample_rate=sample_rate,
    )

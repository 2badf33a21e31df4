"""frame_extraction, decoding: the PyAV reader that takes search frames and the dense clip in one forward pass.

Search frames are sampled at ``search_fps`` by seeking: before each wanted time the reader seeks to the keyframe
at or before it (when that keyframe lies ahead of what was already decoded) and decodes forward to the first frame
at or after the wanted time. Where the sampling interval is shorter than the keyframe interval this degrades to a
sequential decode, never to more work than one; far from a wanted time the decoder skips non-reference frames
(B-frames nobody will see). Search frames and the dense clip come out of one forward pass. Frames are scaled by
FFmpeg's swscale to the model size before they become RGB numpy arrays (reused ``VideoReformatter`` contexts), so a
4K frame never becomes a full-resolution array. Times are ``pts * time_base`` (variable frame rate safe); the
rotation of :mod:`components.common.media` is applied so frames are upright.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components.common.cpus import thread_count
from components.common.media import display_size, rotation_of
from components.frame_extraction.config import FrameExtractionConfig

# Frames whose time is within this of a wanted time count as "at" it (float rounding of pts * time_base).
_TIME_EPS = 1e-3
# Without a keyframe index, seek only when the next wanted time is further ahead than this.
_DEFAULT_SEEK_GAP_S = 2.0
# A stream that ends silently this far before a wanted time is reported as truncated.
_TRUNCATION_GAP_S = 1.0


class StopDecode(Exception):
    """Decoding failed mid-stream (an FFmpeg error, or the stream ended long before it should)."""

    def __init__(self, detail: str, at_s: float | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.at_s = at_s


_YUV_PLANAR = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})


class Scaler:
    """Scales and converts decoded frames to RGB with swscale, keeping its contexts between frames.

    Planar YUV is scaled in YUV first and the small image converted to RGB after: swscale's combined
    scale-to-RGB path costs about twice as much (measured here on 640x360 to 398x224: 0.65 vs 0.29 ms).
    ``frame.reformat`` would also build a new swscale context per call, which costs more than the scaling.
    """

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._scale = VideoReformatter()
        self._rgb = VideoReformatter()

    def __call__(self, frame: Any, width: int, height: int) -> np.ndarray:
        color_range = frame.color_range
        if frame.format.name in _YUV_PLANAR and width >= 2 and height >= 2:
            small = self._scale.reformat(
                frame,
                width=width,
                height=height,
                interpolation="BILINEAR",
                src_color_range=color_range,
                dst_color_range=color_range,
                threads=1,
            )
            rgb = self._rgb.reformat(small, format="rgb24", src_color_range=color_range, threads=1)
        else:
            rgb = self._scale.reformat(
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation="BILINEAR",
                src_color_range=color_range,
                threads=1,
            )
        return rgb.to_ndarray()


def to_rgb(frame: Any, out_w: int, out_h: int, rotation: int, scaler: Scaler | None = None) -> np.ndarray:
    """Scale and convert to ``out_w x out_h`` RGB (display orientation), then rotate upright."""
    coded_w, coded_h = display_size(out_w, out_h, rotation)
    image = (scaler or Scaler())(frame, coded_w, coded_h)
    if rotation:
        image = np.rot90(image, k=rotation // 90)  # np.rot90 turns counter-clockwise, like the display matrix
    return np.ascontiguousarray(image)


def search_image(
    frame: Any, width: int, height: int, rotation: int, size: int, mode: str, scaler: Scaler | None = None
) -> np.ndarray:
    """A ``size x size`` RGB image: aspect kept, then centre-cropped or padded with black."""
    if mode == "center_crop":
        scale = size / min(width, height)
        out_w, out_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = to_rgb(frame, out_w, out_h, rotation, scaler)
        y0, x0 = (out_h - size) // 2, (out_w - size) // 2
        return np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size])
    scale = size / max(width, height)
    out_w, out_h = min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale)))
    image = to_rgb(frame, out_w, out_h, rotation, scaler)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    y0, x0 = (size - out_h) // 2, (size - out_w) // 2
    canvas[y0 : y0 + out_h, x0 : x0 + out_w] = image
    return canvas


def set_decoder_threads(stream: Any, threads: int | None = None, workers: int = 1) -> int:
    """Decode ``stream`` with ``threads`` threads: frame and slice threading (AUTO) above one, else one thread.

    Frame threading is what parallelizes a one-slice stream (most H.264 from phones and x264), but each frame
    thread delays the output by one frame: a :class:`Reader` built with the same ``threads`` widens its
    non-reference skip margin by that delay, so the frames and times it returns do not change.

    Args:
        stream: A PyAV video stream, before its first packet is decoded.
        threads: The thread count; ``None``: the CPUs available to the process shared by ``workers`` processes
            (:func:`components.common.cpus.thread_count`).
        workers: Processes decoding side by side.

    Returns:
        The thread count set.
    """
    threads = thread_count(workers=workers) if threads is None else max(1, threads)
    if threads > 1:
        stream.thread_type = "AUTO"
        stream.thread_count = threads
    else:
        stream.thread_type = "SLICE"
        stream.thread_count = 1
    return threads


def dense_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Reader:
    """Decodes one video stream forward, seeking to keyframes only where that saves work."""

    def __init__(self, container: Any, stream: Any, fps: float = 0.0, threads: int = 1) -> None:
        self.container = container
        self.stream = stream
        self.time_base = stream.time_base
        self._seconds_per_tick = float(stream.time_base)  # float, not Fraction: this runs for every frame
        self.decoded = 0
        # Frames further than this before a wanted time are decoded with non-reference frames skipped; wider than
        # any decoder's reordering delay plus the frame threads' delay (one frame each: the decoder has taken
        # that many packets past the last frame out, and a skip setting applies to packets it takes next), so
        # no frame near the wanted time is skipped.
        delay = 16 + max(0, threads - 1)
        self.skip_margin = max(0.5, delay / fps) if fps > 0 else max(1.0, delay / 25.0)
        self._skipping = False
        self.current: Any | None = None  # the last frame that came out of the decoder
        self._frames: Iterator[Any] | None = None
        self.keyframes = self._keyframe_times()

    def _keyframe_times(self) -> list[float]:
        try:
            entries = self.stream.index_entries
            tick = float(self.time_base)
            return sorted(e.timestamp * tick for e in entries if e.is_keyframe)
        except (AttributeError, TypeError):
            return []

    def _decode(self) -> Iterator[Any]:
        for packet in self.container.demux(self.stream):
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                self.decoded += 1
                yield frame

    def time_of(self, frame: Any) -> float:
        return frame.pts * self._seconds_per_tick

    @property
    def position(self) -> float | None:
        return None if self.current is None else self.time_of(self.current)

    def _should_seek(self, wanted: float) -> bool:
        pos = self.position
        if self._frames is None:
            return True
        if pos is None or wanted <= pos + _TIME_EPS:
            return False
        if self.keyframes:
            i = bisect.bisect_right(self.keyframes, wanted + _TIME_EPS) - 1
            # Seeking pays only when it lands on a keyframe past what the decoder has already produced.
            return i >= 0 and self.keyframes[i] > pos + _TIME_EPS
        return wanted - pos > _DEFAULT_SEEK_GAP_S

    def _seek(self, seconds: float) -> None:
        import av

        target = max(0, int(seconds / self.time_base))
        try:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise StopDecode(f"seek to {seconds:.2f} s failed: {exc}", self.position) from exc
        self._frames = self._decode()
        self.current = None

    def _skip_nonref(self, on: bool) -> None:
        if on != self._skipping:
            self.stream.codec_context.skip_frame = "NONREF" if on else "DEFAULT"
            self._skipping = on

    def next_frame(self) -> Any | None:
        """The next frame in presentation order, every frame decoded (``None`` at the end)."""
        self._skip_nonref(False)
        return self._next()

    def _next(self) -> Any | None:
        import av

        assert self._frames is not None
        try:
            frame = next(self._frames, None)
        except av.FFmpegError as exc:
            raise StopDecode(f"{type(exc).__name__}: {exc}", self.position) from exc
        if frame is not None:
            self.current = frame
        return frame

    def frame_at(self, wanted: float, start: float) -> Any | None:
        """The first frame at or after ``wanted`` seconds (``None`` at the end of the stream)."""
        if self.current is not None and self.time_of(self.current) >= wanted - _TIME_EPS:
            return self.current
        if self._should_seek(wanted):
            backoff = 0.0
            for _ in range(4):
                self._seek(max(start, wanted - backoff))
                frame = self.next_frame()  # after a seek: a keyframe, nothing to skip
                # An index in decode order can land past the wanted time (B-frames, edit lists): back off.
                if frame is None or self.time_of(frame) <= wanted + _TIME_EPS or wanted - backoff <= start:
                    break
                backoff = max(1.0, 2 * backoff)
            if frame is None:
                return None
            if self.time_of(frame) >= wanted - _TIME_EPS:
                return frame
        while True:
            pos = self.position
            # Far from the wanted time only reference frames matter: the others are never shown.
            self._skip_nonref(pos is not None and wanted - pos > self.skip_margin)
            frame = self._next()
            if frame is None or self.time_of(frame) >= wanted - _TIME_EPS:
                self._skip_nonref(False)
                return frame


def wanted_times(start: float, duration: float, fps: float, max_frames: int) -> list[float]:
    """Sampling grid ``start + k / fps`` before the end of the stream, thinned evenly to at most ``max_frames``."""
    n = int(np.ceil(max(0.0, duration - _TIME_EPS) * fps))
    grid = [start + k / fps for k in range(max(1, n))]
    if len(grid) > max_frames:
        picks = np.round(np.linspace(0, len(grid) - 1, max_frames)).astype(int)
        grid = [grid[i] for i in picks]
    return grid


def decode_audio(path: Path, rate: int) -> tuple[np.ndarray | None, str]:
    """The first audio stream as float32 mono at ``rate``, aligned so sample 0 is time 0 of the timestamps.

    Frame times (``search_times``, ``dense_start_s``) are on the same axis, so ``audio[round(t * rate)]``
    is the sound at frame time ``t``.

    Returns:
        The samples (``None`` without an audio stream) and an error detail when decoding stopped early.
    """
    import av

    error = ""
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None, ""
        stream = container.streams.audio[0]
        declared_s = float(stream.duration * stream.time_base) if stream.duration else 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if first_time is None and frame.pts is not None:
                        first_time = float(frame.pts * frame.time_base)
                    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        except av.FFmpegError as exc:
            error = f"audio stopped after {sum(len(c) for c in chunks) / rate:.2f} s: {exc}"
        with contextlib.suppress(av.FFmpegError):  # flushing a stream that already failed
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if declared_s and not error:
        # The decoder emits whole codec frames; the track's declared length drops the end padding.
        audio = audio[: max(0, round(declared_s * rate))]
    offset = round((first_time or 0.0) * rate)
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return audio, error


class Sweep:
    """One forward pass over the stream that takes the search frames and the dense clip together."""

    def __init__(self, reader: Reader, stream: Any, config: FrameExtractionConfig) -> None:
        self.reader = reader
        self.stream = stream
        self.config = config
        self.geometry: tuple[int, int, int] | None = None  # display width, height, rotation
        self.search: list[np.ndarray] = []
        self.search_times: list[float] = []
        self.dense: list[np.ndarray] = []
        self.dense_times: list[float] = []
        self.truncation: StopDecode | None = None
        self._start = 0.0
        # One per output size: each keeps its swscale contexts between frames.
        self._search_sws = Scaler()
        self._dense_sws = Scaler()

    def _geometry(self, frame: Any) -> tuple[int, int, int]:
        if self.geometry is None:
            rotation = rotation_of(self.stream, frame)
            self.geometry = (*display_size(frame.width, frame.height, rotation), rotation)
        return self.geometry

    def _take_search(self, frame: Any) -> None:
        t = self.reader.time_of(frame)
        if self.search_times and abs(t - self.search_times[-1]) < _TIME_EPS:
            return  # a gap in a variable-rate stream: one frame serves two wanted times once
        width, height, rotation = self._geometry(frame)
        cfg = self.config
        self.search.append(
            search_image(frame, width, height, rotation, cfg.search_size, cfg.resize_mode, self._search_sws)
        )
        self.search_times.append(t)

    def _ended(self, wanted: float) -> None:
        reader = self.reader
        last = reader.position
        if last is None:
            last = self.search_times[-1] if self.search_times else self._start
        if wanted - last > _TRUNCATION_GAP_S:
            self.truncation = StopDecode(f"stream ended at {last:.2f} s before {wanted:.2f} s", last)

    def run(self, wanted: list[float], window: tuple[float, float] | None) -> None:
        """Take the frames; raises :class:`StopDecode` on a decode error (what was taken is kept)."""
        reader = self.reader
        self._start = wanted[0] if wanted else 0.0
        i = 0
        dense_done = window is None
        while i < len(wanted) or not dense_done:
            if not dense_done and (i >= len(wanted) or window[0] <= wanted[i] + _TIME_EPS):
                dense_done = True
                begin, end = window
                frame = reader.frame_at(begin, self._start)
                if frame is not None:
                    width, height, rotation = self._geometry(frame)
                    out_w, out_h = dense_size(width, height, self.config.dense_max_side)
                while frame is not None and reader.time_of(frame) < end - _TIME_EPS:
                    t = reader.time_of(frame)
                    self.dense.append(to_rgb(frame, out_w, out_h, rotation, self._dense_sws))
                    self.dense_times.append(t)
                    while i < len(wanted) and wanted[i] <= t + _TIME_EPS:
                        self._take_search(frame)
                        i += 1
                    frame = reader.next_frame()
                continue
            frame = reader.frame_at(wanted[i], self._start)
            if frame is None:
                self._ended(wanted[i])
                return
            self._take_search(frame)
            i += 1


def loudest_window(audio: np.ndarray, rate: int, seconds: float, max_start_s: float) -> float:
    """Start (seconds) of the ``seconds``-long window with the highest RMS energy, at most ``max_start_s``.

    Windows start on a 10 ms grid; 0 when the audio is shorter than the window.
    """
    n = round(seconds * rate)
    if audio.size <= n or max_start_s <= 0:
        return 0.0
    energy = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    hop = max(1, rate // 100)
    last = min(audio.size - n, int(max_start_s * rate))
    starts = np.arange(0, last + 1, hop)
    sums = energy[starts + n] - energy[starts]
    return float(starts[int(np.argmax(sums))]) / rate


def dense_window(
    audio: np.ndarray | None, start: float, duration: float, config: FrameExtractionConfig
) -> tuple[float, float]:
    """The dense clip's span: ``config.dense_seconds`` where the audio is loudest (from the start without audio)."""
    offset = 0.0
    if audio is not None and duration > config.dense_seconds:
        skip = max(0, round(start * config.audio_rate))
        offset = loudest_window(audio[skip:], config.audio_rate, config.dense_seconds, duration - config.dense_seconds)
    return start + offset, start + offset + config.dense_seconds

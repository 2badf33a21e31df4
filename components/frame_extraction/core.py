"""frame_extraction: search frames, a dense clip around speech and the 16 kHz audio of each accepted video.

The frames come out of one forward pass of :mod:`components.frame_extraction.decode` (search frames by seeking,
the dense clip consecutive, both upright and scaled to the model size); start, duration and frame rate are read
as :mod:`components.common.media` reads them for ingest and serving. The dense clip is ``dense_seconds`` of
consecutive frames where the audio RMS energy is highest. A video that fails mid-decode keeps what it produced if
that is at least ``min_frames`` search frames (``partial``), else it is rejected with the reason; the stage goes on.
An infrastructure fault (the store unreachable after its retries, a failing disk) fails the stage, not the video.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.common.faults import is_infrastructure_error
from components.common.manifest import VideoRecord, read_manifest
from components.common.media import stream_timing
from components.common.result_cache import ResultCache
from components.common.shards import shard_prefix
from components.common.stage import StageContext
from components.frame_extraction import decode, reuse
from components.frame_extraction.config import FrameExtractionConfig
from components.frame_extraction.dataset import (
    AUDIO_DIR,
    DENSE_PREFIX,
    SEARCH_PREFIX,
    FrameRecord,
    ShardWriter,
    write_frame_index,
)
from components.frame_extraction.decode import Reader, StopDecode, Sweep, decode_audio, dense_window, wanted_times
from components.frame_extraction.train_shards import write_search_shards

logger = logging.getLogger("clipsync.frame_extraction")


@dataclass
class ExtractedVideo:
    """What :func:`extract_video` took out of one video.

    Attributes:
        video_id: From the manifest.
        status: ``ok`` or ``rejected``.
        reason: ``code: detail`` when rejected or partial.
        partial: Decoding failed mid-stream; the frames up to the error are kept.
        native_fps: Average frame rate of the video stream.
        duration_s: Duration of the video stream.
        width: Display width (after rotation).
        height: Display height (after rotation).
        rotation: Counter-clockwise rotation applied to make frames upright (0, 90, 180, 270).
        search_frames: uint8 ``[N, S, S, 3]`` RGB.
        search_times: Presentation time of each search frame in seconds.
        dense_frames: uint8 ``[T, H, W, 3]`` RGB consecutive frames (``[0, 0, 0, 3]`` when none).
        dense_fps: Frame rate of the dense frames.
        dense_start_s: Time of the first dense frame.
        audio: float32 mono at ``audio_rate``, sample 0 at time 0 (the frame times' axis), or ``None``.
        decoded_frames: Video frames that came out of the decoder (the cost of the extraction; 0 when reused).
        seconds: Wall time spent on this video.
        reused: Taken from an earlier run's result (:mod:`components.frame_extraction.reuse`), not decoded.
    """

    video_id: str
    status: str = "ok"
    reason: str = ""
    partial: bool = False
    native_fps: float = 0.0
    duration_s: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    search_frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    search_times: list[float] = field(default_factory=list)
    dense_frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    dense_fps: float = 0.0
    dense_start_s: float = 0.0
    audio: np.ndarray | None = None
    decoded_frames: int = 0
    seconds: float = 0.0
    reused: bool = False

    @property
    def has_audio(self) -> bool:
        return self.audio is not None and self.audio.size > 0


@dataclass
class FrameExtractionReport:
    """Counts of one run of the stage.

    Attributes:
        videos: Accepted manifest videos seen.
        ok: Videos with frames (partial ones included).
        partial: Videos that failed mid-decode and kept their frames up to the error.
        rejected: Videos without usable frames.
        rejected_by_reason: Rejections per reason code (the part before ``:``).
        search_frames: Search frames written.
        dense_frames: Dense frames written.
        decoded_frames: Video frames decoded in all (the work done).
        computed: Videos worked on this run.
        reused: Videos whose result an earlier run kept (content hash and settings unchanged): not decoded.
        audio_seconds: Seconds of audio written.
        seconds: Wall time of the stage.
        per_video: One row per video (id, status, reason, counts).
    """

    videos: int = 0
    ok: int = 0
    partial: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    search_frames: int = 0
    dense_frames: int = 0
    decoded_frames: int = 0
    computed: int = 0
    reused: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    per_video: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frames_written(self) -> int:
        return self.search_frames + self.dense_frames

    @property
    def frames_per_s(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    def as_metrics(self) -> dict[str, float]:
        """Flat ``name -> number`` for MLflow and the kfp Metrics artifact."""
        metrics = {
            "videos": float(self.videos),
            "videos_ok": float(self.ok),
            "videos_partial": float(self.partial),
            "videos_rejected": float(self.rejected),
            "frames_search": float(self.search_frames),
            "frames_dense": float(self.dense_frames),
            "frames_written": float(self.frames_written),
            "frames_decoded": float(self.decoded_frames),
            "videos_computed": float(self.computed),
            "videos_reused": float(self.reused),
            "audio_seconds": round(self.audio_seconds, 3),
            "seconds": round(self.seconds, 3),
            "frames_per_s": round(self.frames_per_s, 3),
        }
        for code, count in sorted(self.rejected_by_reason.items()):
            metrics[f"rejected_{code}"] = float(count)
        return metrics


def keep_dense_clip(video: ExtractedVideo, sweep: decode.Sweep, native_fps: float) -> None:
    """Store the dense frames a sweep took, their start and their rate (``native_fps`` for a single frame)."""
    times = sweep.dense_times
    video.dense_frames = np.stack(sweep.dense)
    video.dense_start_s = times[0]
    span = times[-1] - times[0]
    video.dense_fps = (len(times) - 1) / span if len(times) > 1 and span > 0 else native_fps


def _rejected(video: ExtractedVideo, reason: str, started: float) -> ExtractedVideo:
    video.status, video.reason, video.seconds = "rejected", reason, time.perf_counter() - started
    video.search_frames, video.search_times = np.zeros((0, 0, 0, 3), np.uint8), []
    video.dense_frames = np.zeros((0, 0, 0, 3), np.uint8)
    logger.warning("frame_extraction: %s rejected: %s", video.video_id, reason)
    return video


def extract_video(
    path: Path, record: VideoRecord, config: FrameExtractionConfig, threads: int | None = None
) -> ExtractedVideo:
    """Take the search frames, the dense clip and the audio out of one local video file.

    Args:
        path: The video file (read only).
        record: Its manifest row (``video_id``, ``authenticity`` decide the dense clip; ``fps`` is a fallback).
        config: The stage settings.
        threads: Decoder threads; default the CPUs available to the process shared by ``config.workers``
            (:func:`components.common.cpus.thread_count`). The frames and times do not depend on it.

    Returns:
        The frames and audio, or ``status == "rejected"`` with a ``code: detail`` reason
        (``missing_file``, ``open_error``, ``no_video_stream``, ``no_frames``, ``decode_error``).
    """
    import av

    started = time.perf_counter()
    video = ExtractedVideo(video_id=record.video_id)
    path = Path(path)
    if not path.is_file():
        return _rejected(video, f"missing_file: {path}", started)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        return _rejected(video, f"open_error: {type(exc).__name__}: {exc}", started)
    with container:
        if not container.streams.video:
            return _rejected(video, "no_video_stream: the file has no video stream", started)
        stream = container.streams.video[0]
        threads = decode.set_decoder_threads(stream, threads, config.workers)
        timing = stream_timing(container, stream)
        start = timing.start_s
        duration = timing.duration_s if timing.duration_s is not None else float(record.duration_s)
        native_fps = timing.fps or float(record.fps)
        video.native_fps, video.duration_s = native_fps, max(0.0, duration)

        try:
            audio, audio_error = decode_audio(path, config.audio_rate)
        except (av.FFmpegError, OSError) as exc:
            audio, audio_error = None, f"{type(exc).__name__}: {exc}"
        if audio_error:
            logger.warning("frame_extraction: %s: %s", record.video_id, audio_error)
        video.audio = audio if audio is not None and audio.size else None

        window: tuple[float, float] | None = None
        if record.authenticity or config.dense_all:
            window = dense_window(video.audio, start, duration, config)
        wanted = wanted_times(start, duration, config.search_fps, config.max_search_frames)
        sweep = Sweep(Reader(container, stream, native_fps, threads), stream, config)
        try:
            sweep.run(wanted, window)
        except StopDecode as exc:
            stop: StopDecode | None = exc
        else:
            stop = sweep.truncation
        video.decoded_frames = sweep.reader.decoded
        if sweep.geometry is not None:
            video.width, video.height, video.rotation = sweep.geometry
        frames = sweep.search
        if stop is not None:
            where = f"stopped at {stop.at_s:.2f} s of {duration:.2f} s" if stop.at_s is not None else "stopped"
            if len(frames) < config.min_frames:
                kept = f"{len(frames)} frame(s) < min_frames {config.min_frames}"
                return _rejected(video, f"decode_error: {where} with {kept}: {stop.detail}", started)
            video.partial = True
            video.reason = f"decode_error: {where}, kept {len(frames)} frame(s): {stop.detail}"
            logger.warning("frame_extraction: %s partial: %s", record.video_id, video.reason)
        if not frames:
            return _rejected(video, "no_frames: the video stream produced no frame", started)
        video.search_frames = np.stack(frames)
        video.search_times = sweep.search_times
        if sweep.dense:
            keep_dense_clip(video, sweep, native_fps)
    video.seconds = time.perf_counter() - started
    return video


# ------------------------------------------------------------------------------------------------ the stage


@functools.lru_cache(maxsize=4)
def _open_source(source_uri: str):
    # One store per worker process: opening an S3 store checks its bucket, which is not worth a request per video.
    from components.common.storage import open_store

    return open_store(source_uri)


def _local_video(record: VideoRecord, source_uri: str, cache_dir: Path) -> Path:
    """A local path to the video: the file itself in a local source folder, else a cached download."""
    from components.common.storage import ObjectNotFoundError, fetch_to_local

    try:
        return Path(fetch_to_local(_open_source(source_uri), record.key, cache_dir))
    except ObjectNotFoundError as exc:
        raise FileNotFoundError(f"{record.key} is not in {source_uri}") from exc


def _process(record: VideoRecord, source_uri: str, cache_dir: str, config: FrameExtractionConfig) -> ExtractedVideo:
    """Worker entry point (top level so that a spawned process can import it).

    Raises:
        Exception: An infrastructure fault (the store unreachable after its retries, a failing disk): it fails
            the stage instead of being recorded against the video.
    """
    started, empty = time.perf_counter(), ExtractedVideo(video_id=record.video_id)
    try:
        path = _local_video(record, source_uri, Path(cache_dir))
    except FileNotFoundError as exc:
        return _rejected(empty, f"missing_file: {exc}", started)
    except Exception as exc:  # a bad item is recorded with its reason; the batch goes on
        if is_infrastructure_error(exc):
            raise
        return _rejected(empty, f"fetch_error: {type(exc).__name__}: {exc}", started)
    try:
        return extract_video(path, record, config)
    except Exception as exc:  # an unexpected failure of one video must not stop the stage
        if is_infrastructure_error(exc):
            raise
        logger.exception("frame_extraction: %s failed", record.video_id)
        return _rejected(empty, f"internal_error: {type(exc).__name__}: {exc}", started)


def _results(
    records: list[VideoRecord],
    source_uri: str,
    cache_dir: Path,
    config: FrameExtractionConfig,
    worker: Callable[[VideoRecord, str, str, FrameExtractionConfig], ExtractedVideo] = _process,
) -> Iterator[tuple[VideoRecord, ExtractedVideo]]:
    """Results in manifest order, at most ``2 * workers`` videos in flight (``worker``: top-level, spawn-safe)."""
    if config.workers <= 1 or len(records) <= 1:
        for record in records:
            yield record, worker(record, source_uri, str(cache_dir), config)
        return
    # spawn, not fork: the parent may hold threads (MLflow, tqdm) whose locks a forked child would inherit.
    context = multiprocessing.get_context("spawn")
    workers = min(config.workers, len(records))
    todo: deque[VideoRecord] = deque(records)
    pending: deque[tuple[VideoRecord, Future]] = deque()
    suspects: deque[VideoRecord] = deque()  # in flight when a worker died: retried one at a time
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)

    def failed(record: VideoRecord, detail: str) -> ExtractedVideo:
        return _rejected(ExtractedVideo(video_id=record.video_id), f"worker_error: {detail}", time.perf_counter())

    try:
        while todo or pending or suspects:
            if suspects:
                record = suspects.popleft()
                try:
                    result = pool.submit(worker, record, source_uri, str(cache_dir), config).result()
                except BrokenProcessPool:
                    result = failed(record, "the worker process died on this video (a crash in the decoder)")
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
                except Exception as exc:  # the result could not come back (e.g. not picklable)
                    if is_infrastructure_error(exc):
                        raise
                    result = failed(record, f"{type(exc).__name__}: {exc}")
                yield record, result
                continue
            while todo and len(pending) < 2 * workers:
                try:
                    future = pool.submit(worker, todo[0], source_uri, str(cache_dir), config)
                except BrokenProcessPool:
                    if not pending:
                        raise  # nothing was in flight: the worker processes cannot start
                    break  # a video in flight killed its worker since the last result: its future says so below
                pending.append((todo.popleft(), future))
            record, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                # A worker died and took the pool with it; which video killed it is unknown, so every video
                # that was in flight is retried alone in a fresh pool.
                suspects.extend([record, *(r for r, _ in pending)])
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
                continue
            except Exception as exc:  # the result could not come back (e.g. not picklable)
                if is_infrastructure_error(exc):  # the store or the disk failed: the stage fails with it
                    raise
                result = failed(record, f"{type(exc).__name__}: {exc}")
            yield record, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _frame_record(record: VideoRecord, video: ExtractedVideo) -> FrameRecord:
    return FrameRecord(
        video_id=record.video_id,
        key=record.key,
        labels=tuple(record.labels),
        **{name: getattr(record, name) for name in ("split", "category", "authenticity", "fake_type")},
        status=video.status,
        reason=video.reason,
        partial=video.partial,
        native_fps=round(video.native_fps, 6),
        duration_s=round(video.duration_s, 6),
        width=video.width,
        height=video.height,
        n_search=len(video.search_times),
        search_times=tuple(round(t, 6) for t in video.search_times),
        n_dense=int(video.dense_frames.shape[0]),
        dense_fps=round(video.dense_fps, 6),
        dense_start_s=round(video.dense_start_s, 6),
        has_audio=video.has_audio,
    )


def run_frame_extraction(
    manifest_path: Path, out_dir: Path, fx: FrameExtractionConfig, ctx: StageContext
) -> FrameExtractionReport:
    """The frame_extraction stage: every accepted manifest video into the frames Dataset (FORMATS.md).

    Videos are processed in parallel processes (``fx.workers``); this process writes the shards, the audio files
    and the index in manifest order. The source store (``ctx.storage.source_uri``: a local folder or ``s3://``) is
    only read; remote videos are cached under ``{state_dir}/cache/videos``. What an earlier run extracted with the
    same settings is reused (:mod:`~components.frame_extraction.reuse`); the last step writes the training videos'
    search frames as the training shards finetune_clip streams (:mod:`~components.frame_extraction.train_shards`).
    Opens the stage run ``frame_extraction`` and logs the counts and the per-video rows there.

    Args:
        manifest_path: The ingest manifest (JSON Lines of VideoRecord).
        out_dir: The frames Dataset folder to write (created).
        fx: Stage settings.
        ctx: The client's stores and state folder, the MLflow run.

    Returns:
        Counts, timings and one row per video.

    Raises:
        StorageUnavailableError: The source store failed (after its retries); no video is rejected for it.
    """
    with ctx.stage_run("frame_extraction", dataclasses.asdict(fx)) as run:
        cache = ResultCache(ctx.storage.artifacts_uri, "frame_extraction", ctx.encryption)
        report = _extract_all(manifest_path, Path(out_dir), ctx.storage.source_uri, ctx.state_dir, fx, cache)
        prefix = shard_prefix("frame_extraction", ctx.client_id, ctx.window.label())
        write_search_shards(Path(out_dir), fx.shard_max_videos, ctx.storage.artifacts_uri, prefix, ctx.encryption)
        run.log_metrics(report.as_metrics())
        run.log_dict({"videos": report.per_video}, "frame_extraction/per_video.json")
    return report


def _extract_all(
    manifest_path: Path, out_dir: Path, source_uri: str, state_dir: str, fx: FrameExtractionConfig, cache: ResultCache
) -> FrameExtractionReport:
    from tqdm import tqdm

    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    cache_dir = Path(state_dir) / "cache" / "videos"
    records = [r for r in read_manifest(manifest_path) if r.accepted]
    report = FrameExtractionReport(videos=len(records))
    logger.info("frame_extraction: %d accepted videos, %d workers", len(records), fx.workers)
    index: list[FrameRecord] = []
    reasons: Counter[str] = Counter()
    progress = tqdm(total=len(records), desc="frame_extraction", unit="video", disable=not records)
    with (
        ShardWriter(out_dir, SEARCH_PREFIX, fx.shard_max_videos) as search_w,
        ShardWriter(out_dir, DENSE_PREFIX, fx.shard_max_videos) as dense_w,
    ):
        compute = functools.partial(_results, source_uri=source_uri, cache_dir=cache_dir, config=fx)
        for record, video in reuse.reuse_or_compute(records, cache, fx, compute, ExtractedVideo):
            row = _frame_record(record, video)
            changes: dict[str, Any] = {"result_key": reuse.result_key(cache, record, fx)}
            if video.status == "ok":
                changes["search_shard"] = search_w.add(record.video_id, video.search_frames)
                if video.dense_frames.shape[0]:
                    changes["dense_shard"] = dense_w.add(record.video_id, video.dense_frames)
                if video.has_audio:
                    audio_file = f"{AUDIO_DIR}/{record.video_id}.npy"
                    np.save(out_dir / audio_file, video.audio.astype(np.float32, copy=False), allow_pickle=False)
                    changes["audio_file"] = audio_file
                    report.audio_seconds += video.audio.size / fx.audio_rate
                report.ok += 1
                report.partial += int(video.partial)
                report.search_frames += row.n_search
                report.dense_frames += row.n_dense
            else:
                report.rejected += 1
                reasons[video.reason.split(":", 1)[0]] += 1
            report.decoded_frames += video.decoded_frames
            report.reused += video.reused
            report.computed += not video.reused
            index.append(dataclasses.replace(row, **changes))
            report.per_video.append(
                {
                    "video_id": record.video_id,
                    "status": video.status,
                    "reason": video.reason,
                    "partial": video.partial,
                    "n_search": row.n_search,
                    "n_dense": row.n_dense,
                    "decoded_frames": video.decoded_frames,
                    "reused": video.reused,
                    "seconds": round(video.seconds, 3),
                }
            )
            progress.update()
    progress.close()
    write_frame_index(out_dir, index)
    report.rejected_by_reason = dict(reasons)
    report.seconds = time.perf_counter() - started
    logger.info(
        "frame_extraction: %d ok (%d partial), %d rejected, %d computed, %d reused, %d frames in %.1f s (%.1f/s)",
        report.ok,
        report.partial,
        report.rejected,
        report.computed,
        report.reused,
        report.frames_written,
        report.seconds,
        report.frames_per_s,
    )
    return report

"""face_tracking: find faces in the dense frames, track them, choose the subject, cut aligned mouth crops.

Per video: MediaPipe's face detectors run on every ``detect_every``-th frame and the last one
(:mod:`~components.face_tracking.detect`), the detections are linked into tracks and the subject's track is
chosen (:mod:`~components.face_tracking.tracks`), and each emitted track becomes a sequence of aligned mouth
crops (:mod:`~components.face_tracking.crops`). Between detection frames the box and the crop geometry are
interpolated linearly. A clip with no face at all gets centre crops and ``fallback_used`` set, never silently.
This module runs the stage over a frames Dataset and writes the faces Dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from components.common.faults import is_infrastructure_error
from components.common.result_cache import ResultCache
from components.common.shards import shard_prefix
from components.common.stage import StageContext
from components.face_tracking import reuse
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.crops import center_geometry, crop_aligned, track_crops
from components.face_tracking.dataset import (
    AUDIO_DIR,
    AUDIO_RATE,
    CROPS_DIR,
    Box,
    FaceRecord,
    FaceSample,
    write_face_index,
)
from components.face_tracking.detect import FaceDetection, FaceModels, detect_frames, iou, load_face_models
from components.face_tracking.models import face_model_paths
from components.face_tracking.tracks import (
    Track,
    detection_frames,
    select_track,
    speech_sync,
    track_boxes,
    track_faces,
    track_length,
)
from components.face_tracking.train_shards import write_lipsync_shards

logger = logging.getLogger("clipsync.face_tracking")
#: Clips per training shard (a few MB of crops and audio each).
SHARD_VIDEOS = 32


@dataclass
class VideoFaces:
    """What :func:`track_video` found in one clip.

    Attributes:
        n_frames: Frames of the clip.
        tracks: Kept tracks (at least ``min_track_frames`` frames, plus the selected one).
        selected: The subject's track, ``None`` when no face was found.
        boxes: Track id -> per-frame box or ``None`` (not seen).
        crops: Track id -> uint8 [T, C, C, 3] crops for every emitted track; ``-1`` is the centre fallback.
        fallback_used: No face found in the clip; ``crops[-1]`` holds centre crops.
        faces_seen: Most faces found in one frame.
        detect_frames: Frames the detector ran on.
        full_range_frames: Detection frames where the full-range model was tried.
        speech_sync: Track id -> :func:`speech_sync` score, for the candidates of the ``speaking`` strategy.
    """

    n_frames: int
    tracks: list[Track]
    selected: Track | None
    boxes: dict[int, list[Box | None]]
    crops: dict[int, np.ndarray]
    fallback_used: bool
    faces_seen: int
    detect_frames: int
    full_range_frames: int = 0
    speech_sync: dict[int, float] = field(default_factory=dict)


def track_video(
    frames: np.ndarray,
    fps: float,
    config: FaceTrackingConfig,
    models: FaceModels | Sequence[FaceModels],
    audio: np.ndarray | None = None,
) -> VideoFaces:
    """Detect, track and crop the faces of one clip.

    Args:
        frames: uint8 [T, H, W, 3] RGB consecutive frames.
        fps: Their frame rate (tracking counts frames; :func:`speech_sync` needs the rate).
        config: The stage settings.
        models: Open MediaPipe models (see :func:`load_face_models`), or several sets of them: the frames are then
            split among threads, one set each (:func:`~components.face_tracking.detect.detect_frames`; the same
            boxes and tracks).
        audio: 16 kHz mono samples aligned with the first frame; the ``speaking`` strategy picks the face
            whose mouth follows it (without audio, or with one candidate, it falls back to ``longest``).

    Returns:
        Tracks, the selected one, per-frame boxes and the crops of every emitted track (only the selected
        one unless ``emit_all_tracks``); centre crops under id -1 with ``fallback_used`` when no face is found.

    Raises:
        ValueError: If ``frames`` is not a non-empty uint8 [T, H, W, 3] array.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty uint8 [T, H, W, 3] array, got {frames.dtype} {frames.shape}")
    n_frames, height, width = frames.shape[:3]
    per_frame: list[list[FaceDetection] | None] = [None] * n_frames
    full_tries = 0
    keyframes = detection_frames(n_frames, config.detect_every)
    for f, (faces, tried_full) in zip(keyframes, detect_frames(frames, keyframes, models, config, fps), strict=True):
        per_frame[f] = faces
        full_tries += tried_full
    faces_seen = max((len(per_frame[f] or ()) for f in keyframes), default=0)
    all_tracks = track_faces(per_frame, config)
    kept = [t for t in all_tracks if track_length(t, n_frames, config.detect_every) >= config.min_track_frames]
    candidates = kept or all_tracks
    crops: dict[int, np.ndarray] = {}
    sync: dict[int, float] = {}
    if config.select_strategy == "speaking" and audio is not None and len(candidates) > 1:
        for track in candidates:
            crops[track.track_id] = track_crops(frames, track, config)
            sync[track.track_id] = speech_sync(crops[track.track_id], audio, fps)
    selected = select_track(candidates, config.select_strategy, n_frames, config.detect_every, sync)
    if selected is not None and selected not in kept:
        kept.append(selected)
    kept.sort(key=lambda t: t.track_id)
    boxes = {t.track_id: track_boxes(t, n_frames, config.detect_every) for t in kept}
    if selected is None:
        geometry = center_geometry(height, width)
        crops = {-1: np.stack([crop_aligned(frame, geometry, config.crop_size) for frame in frames])}
        boxes[-1] = [None] * n_frames
    else:
        cropped, crops = crops, {}  # the speaking strategy has cropped its candidates already
        for track in kept if config.emit_all_tracks else [selected]:
            known = cropped.get(track.track_id)
            crops[track.track_id] = known if known is not None else track_crops(frames, track, config)
    logger.debug(
        "face_tracking: %d frames @ %.1f fps, %d detection frames, %d tracks kept of %d, selected %s",
        n_frames,
        fps,
        len(keyframes),
        len(kept),
        len(all_tracks),
        None if selected is None else selected.track_id,
    )
    return VideoFaces(
        n_frames=n_frames,
        tracks=kept,
        selected=selected,
        boxes=boxes,
        crops=crops,
        fallback_used=selected is None,
        faces_seen=faces_seen,
        detect_frames=len(keyframes),
        full_range_frames=full_tries,
        speech_sync=sync,
    )


def subject_face(faces: VideoFaces, scale: float) -> tuple[float, float]:
    """The subject's median face side and mean detector score; ``(0, 0)`` without a face track.

    Args:
        faces: What :func:`track_video` found.
        scale: Source-video pixels per dense-frame pixel (the dense frames are rescaled).
    """
    if faces.selected is None:
        return 0.0, 0.0
    found = faces.selected.detections.values()
    side = float(np.median([min(d.box[2] - d.box[0], d.box[3] - d.box[1]) for d in found])) * scale
    return round(side, 2), round(float(np.mean([d.score for d in found])), 4)


def selected_box_agreement(reference: VideoFaces, other: VideoFaces) -> float:
    """Mean IoU of the selected track's boxes of two runs over frames where both have a box (NaN if none)."""
    if reference.selected is None or other.selected is None:
        return float("nan")
    ref = reference.boxes[reference.selected.track_id]
    oth = other.boxes[other.selected.track_id]
    values = [iou(a, b) for a, b in zip(ref, oth, strict=True) if a is not None and b is not None]
    return float(np.mean(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------- the stage run


@dataclass
class FaceTrackingReport:
    """Outcome of :func:`run_face_tracking`.

    Attributes:
        videos: Frame records read (every status).
        processed: Videos with dense frames that were tracked.
        skipped: Videos without dense frames (rejected upstream or not selected for dense frames).
        rejected: Videos whose tracking failed (see ``per_video`` reasons).
        fallback: Videos where no face was found (centre crops).
        samples: Crop sequences written.
        frames: Dense frames processed (tracked this run or reused).
        computed: Videos tracked this run.
        reused: Videos whose tracks and crops an earlier run kept (:mod:`components.face_tracking.reuse`).
        seconds: Wall time.
        per_video: One dict per processed video: video_id, status, reason, n_frames, faces_seen, n_tracks,
            selected_track, fallback_used, samples, selected_coverage (share of frames the subject was seen).
    """

    videos: int = 0
    processed: int = 0
    skipped: int = 0
    rejected: int = 0
    fallback: int = 0
    samples: int = 0
    frames: int = 0
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    per_video: list[dict[str, Any]] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        """Flat numeric summary for MLflow."""
        ok = [v for v in self.per_video if v["status"] == "ok"]
        return {
            "videos": float(self.videos),
            "videos_processed": float(self.processed),
            "videos_skipped": float(self.skipped),
            "videos_rejected": float(self.rejected),
            "videos_fallback": float(self.fallback),
            "fallback_rate": self.fallback / len(ok) if ok else 0.0,
            "samples": float(self.samples),
            "frames": float(self.frames),
            "videos_computed": float(self.computed),
            "videos_reused": float(self.reused),
            "frames_per_s": self.frames / self.seconds if self.seconds > 0 else 0.0,
            "mean_faces_seen": float(np.mean([v["faces_seen"] for v in ok])) if ok else 0.0,
            "mean_tracks": float(np.mean([v["n_tracks"] for v in ok])) if ok else 0.0,
            "multi_face_videos": float(sum(v["faces_seen"] > 1 for v in ok)),
            "mean_selected_coverage": float(np.mean([v["selected_coverage"] for v in ok])) if ok else 0.0,
        }


def clip_audio(audio: np.ndarray, start_s: float, n_frames: int, fps: float) -> np.ndarray:
    """The ``AUDIO_RATE`` samples of ``n_frames`` frames at ``fps`` from ``start_s`` (silence past the end)."""
    start = round(start_s * AUDIO_RATE)
    length = round(n_frames / fps * AUDIO_RATE)
    piece = np.zeros(length, dtype=np.float32)
    chunk = np.asarray(audio, dtype=np.float32)[start : start + length]
    piece[: len(chunk)] = chunk
    return piece


def _box_list(boxes: list[Box | None]) -> tuple[list[float] | None, ...]:
    return tuple(None if b is None else [round(float(v), 2) for v in b] for b in boxes)


def process_video(
    frames_dir: Path, out_dir: Path, frame_record: Any, config: FaceTrackingConfig, models: FaceModels
) -> FaceRecord:
    """Track one video of the frames Dataset and write its crops and audio into ``out_dir``.

    Returns:
        Its FaceRecord (``status`` ``rejected`` with the reason when the frames cannot be used).
    """
    from components.frame_extraction import dataset as frames_ds

    rec = frame_record
    base = _base_record(rec)
    try:
        frames = frames_ds.load_dense_frames(frames_dir, rec)
        if rec.dense_fps <= 0:
            raise ValueError(f"dense_fps is {rec.dense_fps}")
        audio = _clip_audio_of(frames_dir, rec, len(frames))
        faces = track_video(frames, float(rec.dense_fps), config, models, audio if rec.has_audio else None)
    except Exception as exc:  # a bad item is recorded with its reason; the batch goes on
        if is_infrastructure_error(exc):  # a failing disk is not the video's problem
            raise
        logger.warning("face_tracking: %s rejected: %s: %s", rec.video_id, type(exc).__name__, exc)
        return _replace(base, status="rejected", reason=f"{type(exc).__name__}: {exc}")
    n_frames = faces.n_frames
    samples = []
    selected_id = -1 if faces.selected is None else faces.selected.track_id
    for track_id, crops in faces.crops.items():
        sample_id = f"{rec.video_id}-center" if track_id == -1 else f"{rec.video_id}-t{track_id}"
        crops_file = f"{CROPS_DIR}/{sample_id}.npy"
        np.save(out_dir / crops_file, crops, allow_pickle=False)
        samples.append(
            FaceSample(
                sample_id=sample_id,
                track_id=track_id,
                selected=track_id == selected_id,
                crops_file=crops_file,
                n_frames=n_frames,
                boxes=_box_list(faces.boxes[track_id]),
            )
        )
    np.save(out_dir / AUDIO_DIR / f"{rec.video_id}.npy", audio)
    dense_side = max(frames.shape[1:3])
    face_px, face_score = subject_face(faces, (max(rec.width, rec.height) or dense_side) / dense_side)
    if faces.fallback_used:
        logger.warning("face_tracking: %s: no face found in %d frames, centre crop used", rec.video_id, n_frames)
    return _replace(
        base,
        n_frames=n_frames,
        faces_seen=faces.faces_seen,
        n_tracks=len(faces.tracks),
        selected_track=selected_id,
        fallback_used=faces.fallback_used,
        face_px=face_px,
        face_score=face_score,
        samples=tuple(samples),
    )


def _base_record(rec: Any) -> FaceRecord:
    """The FaceRecord fields a frame record decides (labels, timing), before tracking."""
    return FaceRecord(
        video_id=rec.video_id,
        split=rec.split,
        authenticity=rec.authenticity,
        fake_type=rec.fake_type,
        category=rec.category,
        fps=float(rec.dense_fps),
        start_s=float(rec.dense_start_s),
        has_audio=bool(rec.has_audio),
    )


def _clip_audio_of(frames_dir: Path, rec: Any, n_frames: int) -> np.ndarray:
    from components.frame_extraction import dataset as frames_ds

    audio = frames_ds.load_audio(frames_dir, rec) if rec.has_audio else np.zeros(0, dtype=np.float32)
    return clip_audio(audio, rec.dense_start_s, n_frames, float(rec.dense_fps))


def _reused(frames_dir: Path, out_dir: Path, rec: Any, cache: ResultCache, key: str) -> FaceRecord | None:
    """The video's record with the crops an earlier run kept (written into ``out_dir``), or ``None``."""
    try:
        audio = _clip_audio_of(frames_dir, rec, rec.n_dense)
    except Exception as exc:  # the frames Dataset's audio is bad: tracking it reports the reason
        if is_infrastructure_error(exc):
            raise
        return None
    return reuse.restore(cache, key, out_dir, _base_record(rec), audio)


def _coverage(record: FaceRecord) -> float:
    """Share of the frames where the selected face was seen (0 for the fallback or a rejected video)."""
    sample = record.selected_sample
    if sample is None or not sample.boxes:
        return 0.0
    return sum(b is not None for b in sample.boxes) / len(sample.boxes)


def _replace(record: FaceRecord, **changes: Any) -> FaceRecord:
    return dataclasses.replace(record, **changes)


_WORKER: dict[str, Any] = {}


def _worker_init(cache_dir: str, config: FaceTrackingConfig) -> None:
    _WORKER["models"] = load_face_models(Path(cache_dir), config)


def _worker_process(frames_dir: Path, out_dir: Path, rec: Any, *, config: FaceTrackingConfig) -> FaceRecord:
    return process_video(frames_dir, out_dir, rec, config, _WORKER["models"])


def run_face_tracking(
    frames_dir: Path, out_dir: Path, config: FaceTrackingConfig, ctx: StageContext
) -> FaceTrackingReport:
    """The face_tracking stage: the frames Dataset's dense frames into the faces Dataset.

    A video whose tracks and crops an earlier run kept in the artifacts store (same frames and settings,
    :mod:`components.face_tracking.reuse`) is not tracked again; the report counts computed and reused videos.
    Its last step writes the labelled clips' crops and audio as training shards
    (:mod:`components.face_tracking.train_shards`, ``SHARD_VIDEOS`` clips each), which finetune_lipsync streams.

    Opens the stage run ``face_tracking`` and logs the counts and the per-video rows there.

    Args:
        frames_dir: The frame_extraction Dataset directory.
        out_dir: The faces Dataset directory to write (created).
        config: The stage settings.
        ctx: Its ``cache_dir`` holds the MediaPipe files ``clipsync fetch-models`` put there; the MLflow run.

    Returns:
        Counts and per-video face statistics.

    Raises:
        FaceModelError: If the model files are missing (nothing is downloaded at run time).
        FileNotFoundError: If ``frames_dir`` holds no frames index.
    """
    with ctx.stage_run("face_tracking", dataclasses.asdict(config)) as run:
        cache = ResultCache(ctx.storage.artifacts_uri, "face_tracking", ctx.encryption)
        report = _track_all(Path(frames_dir), Path(out_dir), config, Path(ctx.cache_dir), cache)
        prefix = shard_prefix("face_tracking", ctx.client_id, ctx.window.label())
        write_lipsync_shards(Path(out_dir), SHARD_VIDEOS, ctx.storage.artifacts_uri, prefix, ctx.encryption)
        run.log_metrics(report.as_metrics())
        run.log_dict({"videos": report.per_video}, "face_tracking/per_video.json")
    return report


def _track_all(
    frames_dir: Path, out_dir: Path, config: FaceTrackingConfig, cache_dir: Path, cache: ResultCache | None = None
) -> FaceTrackingReport:
    from tqdm import tqdm

    from components.frame_extraction import dataset as frames_ds

    frames_dir, out_dir = Path(frames_dir), Path(out_dir)
    face_model_paths(cache_dir)  # fail before any work when the models are missing
    started = time.perf_counter()
    frame_records = frames_ds.read_frame_index(frames_dir)
    todo = [r for r in frame_records if r.status == "ok" and r.n_dense > 0]
    report = FaceTrackingReport(videos=len(frame_records), skipped=len(frame_records) - len(todo))
    (out_dir / CROPS_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    logger.info("face_tracking: %d videos with dense frames of %d", len(todo), len(frame_records))
    records: list[FaceRecord] = []
    progress = tqdm(total=len(todo), desc="face_tracking", unit="video", disable=not todo)
    keys = {r.video_id: reuse.result_key(cache, r.result_key, config) for r in todo} if cache else {}
    for rec in [r for r in todo if keys.get(r.video_id) and cache.has(keys[r.video_id])]:
        record = _reused(frames_dir, out_dir, rec, cache, keys[rec.video_id])
        if record is not None:
            records.append(record)
            todo.remove(rec)
            progress.update()
    report.reused = len(records)
    report.computed = len(todo)
    if config.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(
            max_workers=min(config.workers, len(todo)), initializer=_worker_init, initargs=(str(cache_dir), config)
        ) as pool:
            for record in pool.map(partial(_worker_process, frames_dir, out_dir, config=config), todo):
                records.append(record)
                progress.update()
    elif todo:  # the models are loaded only when there is something to track
        with load_face_models(cache_dir, config) as models:
            for rec in todo:
                records.append(process_video(frames_dir, out_dir, rec, config, models))
                progress.update()
    progress.close()
    for record in records[report.reused :]:
        if record.status == "ok" and keys.get(record.video_id):
            reuse.save(cache, keys[record.video_id], out_dir, record)
    write_face_index(out_dir, records)
    for i, record in enumerate(records):
        report.per_video.append(
            {
                "video_id": record.video_id,
                "reused": i < report.reused,
                "status": record.status,
                "reason": record.reason,
                "n_frames": record.n_frames,
                "faces_seen": record.faces_seen,
                "n_tracks": record.n_tracks,
                "selected_track": record.selected_track,
                "fallback_used": record.fallback_used,
                "samples": len(record.samples),
                "selected_coverage": _coverage(record),
            }
        )
        if record.status == "ok":
            report.processed += 1
            report.frames += record.n_frames
            report.samples += len(record.samples)
            report.fallback += record.fallback_used
        else:
            report.rejected += 1
    report.seconds = time.perf_counter() - started
    logger.info(
        "face_tracking: %d videos tracked (%d fallback, %d rejected), %d samples, %.1f frames/s",
        report.processed,
        report.fallback,
        report.rejected,
        report.samples,
        report.as_metrics()["frames_per_s"],
    )
    return report

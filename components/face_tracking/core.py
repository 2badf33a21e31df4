"""face_tracking: find faces in the dense frames, track them, choose the subject, cut aligned mouth crops.

Per video: MediaPipe's short-range face detector (Tasks API) runs on every ``detect_every``-th frame (and
the last one); where it finds nothing the full-range model gets a second try (small, distant faces).
Detections are linked into tracks by greedy IoU matching against each track's constant-velocity
prediction; a track keeps its id through up to ``max_misses`` frames without a match (a hand in front of
the face). The subject is the longest, largest or first track. Each emitted track becomes a sequence of
mouth crops: centred on the lips (FaceLandmarker's lip landmarks, else the detector's mouth keypoint),
rotated so the eye line is level, scaled from the eye distance. Between detection frames the box and the
crop geometry are interpolated linearly (the whole clip is known, so there is no need to extrapolate).
A clip with no face at all gets centre crops and ``fallback_used`` set, never silently.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from components.common.faults import is_infrastructure_error
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import (
    AUDIO_DIR,
    AUDIO_RATE,
    CROPS_DIR,
    Box,
    FaceRecord,
    FaceSample,
    write_face_index,
)
from components.face_tracking.models import MESH_POINTS, FaceModelPaths, face_model_paths

logger = logging.getLogger("clipsync.face_tracking")

Point = tuple[float, float]

# FaceLandmarker mesh indices: outer + inner lip contours, and the two eye contours.
LIP_INDICES = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
)  # fmt: skip
RIGHT_EYE_INDICES = (33, 133, 159, 145)  # the subject's right eye (image left in a frontal view)
LEFT_EYE_INDICES = (362, 263, 386, 374)
# BlazeFace keypoints: 0 right eye, 1 left eye, 2 nose tip, 3 mouth centre, 4 right ear, 5 left ear.
KP_RIGHT_EYE, KP_LEFT_EYE, KP_MOUTH = 0, 1, 3


@dataclass(frozen=True)
class FaceDetection:
    """One face found in one frame (pixel coordinates of that frame).

    Attributes:
        box: ``(x0, y0, x1, y1)``.
        score: Detector confidence.
        keypoints: The detector's six keypoints (eyes, nose, mouth, ears).
        source: ``short`` or ``full`` (the detector model that found it).
        lips: Lip landmark points from FaceLandmarker, when run and matched to this face.
        eyes: Eye centres ``(right, left)`` from FaceLandmarker, when available.
    """

    box: Box
    score: float
    keypoints: tuple[Point, ...] = ()
    source: str = "short"
    lips: tuple[Point, ...] | None = None
    eyes: tuple[Point, Point] | None = None


@dataclass(frozen=True)
class CropGeometry:
    """Where a mouth crop is cut: centre, eye-line angle (degrees, image y down) and side, in pixels."""

    cx: float
    cy: float
    angle: float
    side: float


@dataclass(eq=False)
class Track:
    """One face followed across frames.

    Attributes:
        track_id: Stable id within the video (0, 1, ... in order of appearance).
        detections: Frame index -> the detection matched on that frame.
        velocity: Box change per frame, estimated from the last two detections (for matching).
    """

    track_id: int
    detections: dict[int, FaceDetection] = field(default_factory=dict)
    velocity: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def frames(self) -> list[int]:
        return sorted(self.detections)

    @property
    def start(self) -> int:
        return min(self.detections)

    @property
    def end(self) -> int:
        return max(self.detections)

    @property
    def last_box(self) -> Box:
        return self.detections[self.end].box

    @property
    def median_area(self) -> float:
        return float(np.median([_area(d.box) for d in self.detections.values()]))

    def predict(self, frame: int) -> Box:
        """The constant-velocity prediction of the box at ``frame``."""
        dt = frame - self.end
        return tuple(b + v * dt for b, v in zip(self.last_box, self.velocity, strict=True))  # type: ignore[return-value]

    def add(self, frame: int, detection: FaceDetection) -> None:
        if self.detections:
            prev_frame = self.end
            prev = self.detections[prev_frame].box
            dt = max(frame - prev_frame, 1)
            self.velocity = tuple((n - p) / dt for n, p in zip(detection.box, prev, strict=True))  # type: ignore[assignment]
        self.detections[frame] = detection


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


# ----------------------------------------------------------------------------------------------- geometry


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def _normalize_angle(angle: float) -> float:
    # The eye order may come out reversed (a mirrored or profile view): keep the angle within (-90, 90].
    while angle > 90.0:
        angle -= 180.0
    while angle <= -90.0:
        angle += 180.0
    return angle


def mouth_geometry(detection: FaceDetection, mouth_scale: float, use_landmarks: bool = True) -> CropGeometry:
    """Place the mouth crop of one detection.

    The centre is the mean of the lip landmarks (``use_landmarks`` and available), else the detector's
    mouth keypoint, else a point 3/4 down the box. The angle levels the eye line; the side is
    ``mouth_scale`` times the eye distance, at least 45% of the box width (profile views shrink the eye
    distance).

    Args:
        detection: The face.
        mouth_scale: Crop side as a multiple of the eye distance.
        use_landmarks: Prefer the landmarker's lips and eyes when the detection carries them.

    Returns:
        The crop geometry in frame pixels.
    """
    x0, y0, x1, y1 = detection.box
    width = max(x1 - x0, 1.0)
    kps = detection.keypoints
    if use_landmarks and detection.lips:
        cx, cy = (float(v) for v in np.mean(np.asarray(detection.lips), axis=0))
    elif len(kps) > KP_MOUTH:
        cx, cy = kps[KP_MOUTH]
    else:
        cx, cy = (x0 + x1) / 2, y0 + 0.75 * (y1 - y0)
    eyes = detection.eyes if use_landmarks and detection.eyes else None
    if eyes is None and len(kps) > KP_LEFT_EYE:
        eyes = (kps[KP_RIGHT_EYE], kps[KP_LEFT_EYE])
    angle, eye_dist = 0.0, 0.0
    if eyes is not None:
        (rx, ry), (lx, ly) = eyes
        eye_dist = math.hypot(lx - rx, ly - ry)
        if eye_dist > 1e-3:
            angle = _normalize_angle(math.degrees(math.atan2(ly - ry, lx - rx)))
    side = max(mouth_scale * eye_dist, 0.45 * width, 4.0)
    return CropGeometry(float(cx), float(cy), float(angle), float(side))


def center_geometry(height: int, width: int) -> CropGeometry:
    """The fallback crop: the frame centre, half the shorter side, no rotation."""
    return CropGeometry(width / 2.0, height / 2.0, 0.0, min(height, width) / 2.0)


def crop_aligned(frame: np.ndarray, geometry: CropGeometry, size: int) -> np.ndarray:
    """Cut a ``size`` x ``size`` crop around ``geometry``, rotated so the eye line is level.

    Args:
        frame: uint8 [H, W, 3] RGB.
        geometry: Centre, angle and side in frame pixels.
        size: Output side in pixels.

    Returns:
        uint8 [size, size, 3]; pixels outside the frame replicate the border.
    """
    import cv2

    matrix = cv2.getRotationMatrix2D((geometry.cx, geometry.cy), geometry.angle, size / geometry.side)
    matrix[0, 2] += size / 2.0 - geometry.cx
    matrix[1, 2] += size / 2.0 - geometry.cy
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------------- detection


class FaceModels:
    """The MediaPipe detectors and landmarker for one process (IMAGE running mode; close when done).

    Args:
        paths: The fetched model files.
        config: Detection threshold, ``max_faces``, whether landmarks and the full-range fallback are used.
    """

    def __init__(self, paths: FaceModelPaths, config: FaceTrackingConfig) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        def detector(path: Path) -> Any:
            options = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                min_detection_confidence=config.min_detection_confidence,
            )
            return vision.FaceDetector.create_from_options(options)

        self.short = detector(paths.short_range)
        self.full = detector(paths.full_range) if config.full_range_fallback else None
        self.landmarker = None
        if config.use_landmarks:
            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(paths.landmarker_task)),
                num_faces=config.max_faces,
                min_face_detection_confidence=config.min_detection_confidence,
            )
            self.landmarker = vision.FaceLandmarker.create_from_options(options)

    def close(self) -> None:
        for model in (self.short, self.full, self.landmarker):
            if model is not None:
                model.close()

    def __enter__(self) -> FaceModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_face_models(cache_dir: Path, config: FaceTrackingConfig) -> FaceModels:
    """Open the models fetched into ``cache_dir`` (raises FaceModelError when they are missing)."""
    return FaceModels(face_model_paths(cache_dir), config)


def _mp_image(frame: np.ndarray) -> Any:
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))


def detect_faces(frame: np.ndarray, detector: Any, source: str = "short") -> list[FaceDetection]:
    """Run one MediaPipe ``FaceDetector`` on one frame.

    Args:
        frame: uint8 [H, W, 3] RGB.
        detector: A ``mediapipe.tasks.python.vision.FaceDetector`` (IMAGE mode).
        source: Name recorded on the detections.

    Returns:
        The faces, highest score first, boxes clipped to the frame.
    """
    height, width = frame.shape[:2]
    result = detector.detect(_mp_image(frame))
    faces = []
    for det in result.detections:
        bb = det.bounding_box
        box = (
            float(max(bb.origin_x, 0)),
            float(max(bb.origin_y, 0)),
            float(min(bb.origin_x + bb.width, width)),
            float(min(bb.origin_y + bb.height, height)),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        kps = tuple((float(k.x * width), float(k.y * height)) for k in det.keypoints)
        score = float(det.categories[0].score) if det.categories else 0.0
        faces.append(FaceDetection(box=box, score=score, keypoints=kps, source=source))
    faces.sort(key=lambda d: -d.score)
    return faces


def _landmark_faces(frame: np.ndarray, landmarker: Any) -> list[tuple[Box, tuple[Point, ...], tuple[Point, Point]]]:
    """Per mesh found: its box, lip points and eye centres (only the face mesh's points 0-467 are used)."""
    height, width = frame.shape[:2]
    result = landmarker.detect(_mp_image(frame))
    faces = []
    for landmarks in result.face_landmarks:
        # Points 468-477 are the padding of the bundled model (models.pad_landmark_model), not irises.
        pts = np.array([(p.x * width, p.y * height) for p in landmarks[:MESH_POINTS]], dtype=np.float64)
        box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
        lips = tuple((float(x), float(y)) for x, y in pts[list(LIP_INDICES)])
        right = tuple(float(v) for v in pts[list(RIGHT_EYE_INDICES)].mean(axis=0))
        left = tuple(float(v) for v in pts[list(LEFT_EYE_INDICES)].mean(axis=0))
        faces.append((box, lips, (right, left)))
    return faces


def _landmarks_plausible(face: FaceDetection, lips: tuple[Point, ...], eyes: tuple[Point, Point]) -> bool:
    """Whether a landmark mesh agrees with the detector's keypoints (mouth and both eyes within a quarter
    of the box width). A mesh that does not (the landmarker fitted a neighbouring face, or failed on a hard
    pose) is dropped and the crop is placed from the keypoints: a wrong mouth crop is worse than a coarse one."""
    if len(face.keypoints) <= KP_MOUTH:
        return True
    tolerance = 0.25 * (face.box[2] - face.box[0])
    mouth = tuple(np.mean(np.asarray(lips), axis=0))
    kps = face.keypoints
    pairs = ((mouth, kps[KP_MOUTH]), (eyes[0], kps[KP_RIGHT_EYE]), (eyes[1], kps[KP_LEFT_EYE]))
    return all(math.hypot(a[0] - b[0], a[1] - b[1]) <= tolerance for a, b in pairs)


def _attach_landmarks(frame: np.ndarray, faces: list[FaceDetection], landmarker: Any) -> list[FaceDetection]:
    """Give each detection the lip/eye landmarks of the plausible landmarker mesh that matches it best."""
    meshes = _landmark_faces(frame, landmarker)
    if not meshes:
        return faces
    used: set[int] = set()
    out = []
    for face in faces:
        best, best_overlap = None, 0.0
        for j, (mesh_box, lips, eyes) in enumerate(meshes):
            if j in used or not _landmarks_plausible(face, lips, eyes):
                continue
            overlap = iou(face.box, mesh_box)
            if overlap > best_overlap:
                best, best_overlap = j, overlap
        if best is None:
            out.append(face)
            continue
        used.add(best)
        _, lips, eyes = meshes[best]
        out.append(FaceDetection(face.box, face.score, face.keypoints, face.source, lips, eyes))
    return out


def detect_frame(frame: np.ndarray, models: FaceModels, config: FaceTrackingConfig) -> tuple[list[FaceDetection], bool]:
    """Detect the faces of one frame with the configured fallbacks.

    Returns:
        The detections (at most ``max_faces``, highest score first) and whether the full-range model ran.
    """
    faces = detect_faces(frame, models.short, "short")
    tried_full = False
    if not faces and models.full is not None:
        faces = detect_faces(frame, models.full, "full")
        tried_full = True
    faces = faces[: config.max_faces]
    if faces and models.landmarker is not None:
        faces = _attach_landmarks(frame, faces, models.landmarker)
    return faces, tried_full


# ----------------------------------------------------------------------------------------------- tracking


def _match(tracks: list[Track], detections: list[FaceDetection], frame: int, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU (highest first) between predicted track boxes and detections."""
    pairs = []
    for ti, track in enumerate(tracks):
        predicted = track.predict(frame)
        for di, det in enumerate(detections):
            # The larger of the IoU with the last box and with the prediction: a bad velocity estimate
            # (a jittery detection) must not lose a face that has not moved.
            overlap = max(iou(predicted, det.box), iou(track.last_box, det.box))
            if overlap >= threshold:
                pairs.append((overlap, ti, di))
    pairs.sort(key=lambda p: -p[0])
    used_t: set[int] = set()
    used_d: set[int] = set()
    matches = []
    for _, ti, di in pairs:
        if ti in used_t or di in used_d:
            continue
        used_t.add(ti)
        used_d.add(di)
        matches.append((ti, di))
    return matches


def update_tracks(
    active: list[Track],
    detections: list[FaceDetection],
    frame: int,
    config: FaceTrackingConfig,
    next_id: int,
) -> tuple[list[Track], list[Track], int]:
    """Advance the tracker by one detection frame.

    Args:
        active: Tracks still alive before this frame.
        detections: This frame's detections.
        frame: This frame's index.
        config: ``iou_threshold``, ``max_misses`` and ``detect_every``.
        next_id: The id a new track gets.

    Returns:
        ``(active, ended, next_id)``: the tracks alive after this frame, those that ended (missed for
        more than ``max_misses`` frames), and the next free id.
    """
    # A track may go unobserved for detect_every - 1 frames between detection frames without a miss.
    allowed_gap = max(config.max_misses, config.detect_every - 1)
    alive = [t for t in active if frame - t.end - 1 <= allowed_gap]
    ended = [t for t in active if frame - t.end - 1 > allowed_gap]
    matches = _match(alive, detections, frame, config.iou_threshold)
    matched = {di for _, di in matches}
    for ti, di in matches:
        alive[ti].add(frame, detections[di])
    for di, det in enumerate(detections):
        if di not in matched:
            track = Track(track_id=next_id)
            track.add(frame, det)
            alive.append(track)
            next_id += 1
    return alive, ended, next_id


def track_faces(detections_per_frame: Sequence[list[FaceDetection] | None], config: FaceTrackingConfig) -> list[Track]:
    """Link per-frame detections into tracks.

    Args:
        detections_per_frame: One entry per frame: the detections, or ``None`` for a frame the detector
            skipped (``detect_every`` > 1).
        config: Matching settings.

    Returns:
        Every track, ordered by id (no length filter here).
    """
    active: list[Track] = []
    done: list[Track] = []
    next_id = 0
    for frame, detections in enumerate(detections_per_frame):
        if detections is None:
            continue
        active, ended, next_id = update_tracks(active, detections, frame, config, next_id)
        done.extend(ended)
    return sorted(done + active, key=lambda t: t.track_id)


def track_boxes(track: Track, n_frames: int, detect_every: int) -> list[Box | None]:
    """Per-frame boxes of a track: detected frames, and linear interpolation across frames the detector
    skipped (gaps up to ``detect_every``); ``None`` during misses and outside the track."""
    boxes: list[Box | None] = [None] * n_frames
    frames = track.frames
    for f in frames:
        boxes[f] = track.detections[f].box
    for a, b in itertools.pairwise(frames):
        if b - a > detect_every:
            continue
        box_a, box_b = np.asarray(track.detections[a].box), np.asarray(track.detections[b].box)
        for f in range(a + 1, b):
            w = (f - a) / (b - a)
            boxes[f] = tuple(float(v) for v in (1 - w) * box_a + w * box_b)  # type: ignore[assignment]
    return boxes


def track_length(track: Track, n_frames: int, detect_every: int) -> int:
    """Frames with a box (detected or interpolated between detection frames)."""
    return sum(b is not None for b in track_boxes(track, n_frames, detect_every))


def speech_sync(crops: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = AUDIO_RATE) -> float:
    """How closely a face's mouth motion follows the voice of the clip.

    The Pearson correlation, frame by frame, between the motion energy of the mouth crops (mean absolute
    difference of consecutive grey crops) and the change in loudness (RMS of the audio over each frame's
    span). On the demo's two-face clips the speaker scores 0.6 to 0.9 and the silent face at most 0.26.

    Args:
        crops: uint8 [T, C, C, 3] mouth crops of one track.
        audio: Mono samples aligned with the first crop (shorter audio is padded with silence).
        fps: Frame rate of the crops.
        sample_rate: Audio sample rate.

    Returns:
        The correlation in [-1, 1]; NaN when motion or loudness is constant (e.g. silence).
    """
    n = len(crops)
    if n < 3:
        return float("nan")
    grey = crops.astype(np.float32).mean(axis=-1)
    motion = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    edges = np.round(np.arange(n + 1) * sample_rate / fps).astype(int)
    padded = np.zeros(edges[-1], dtype=np.float32)
    piece = np.asarray(audio, dtype=np.float32)[: edges[-1]]
    padded[: len(piece)] = piece
    rms = np.sqrt(np.add.reduceat(padded**2, edges[:-1]) / np.diff(edges))
    loudness_change = np.abs(np.diff(rms))
    if motion.std() == 0 or loudness_change.std() == 0:
        return float("nan")
    return float(np.corrcoef(motion, loudness_change)[0, 1])


def select_track(
    tracks: Sequence[Track],
    strategy: str,
    n_frames: int = 0,
    detect_every: int = 1,
    sync: Mapping[int, float] | None = None,
) -> Track | None:
    """Choose the subject's track.

    Args:
        tracks: Candidate tracks.
        strategy: ``longest`` (most frames with a box; ties: larger), ``largest`` (median box area; ties:
            longer), ``first`` (earliest start; ties: longer) or ``speaking`` (highest ``sync`` score; tracks
            without a score come last, then as ``longest``).
        n_frames: Clip length (for the frame count of ``longest``); 0 uses the last detected frame + 1.
        detect_every: Detection stride the tracks were built with.
        sync: Track id -> :func:`speech_sync` score (``speaking`` only).

    Returns:
        The chosen track, or ``None`` when there is none.
    """
    if not tracks:
        return None
    n = n_frames or max(t.end for t in tracks) + 1
    length = {t.track_id: track_length(t, n, detect_every) for t in tracks}
    if strategy == "speaking":
        scores = {k: v for k, v in (sync or {}).items() if math.isfinite(v)}
        key = lambda t: (scores.get(t.track_id, -math.inf), length[t.track_id], t.median_area)  # noqa: E731
    elif strategy == "longest":
        key = lambda t: (length[t.track_id], t.median_area, -t.start)  # noqa: E731
    elif strategy == "largest":
        key = lambda t: (t.median_area, length[t.track_id], -t.start)  # noqa: E731
    elif strategy == "first":
        key = lambda t: (-t.start, length[t.track_id], t.median_area)  # noqa: E731
    else:
        raise ValueError(f"unknown select_strategy {strategy!r}")
    return max(tracks, key=key)


def _interpolate_geometry(known: dict[int, CropGeometry], n_frames: int) -> list[CropGeometry]:
    """Linear interpolation between known frames; the nearest known value before the first / after the last."""
    frames = sorted(known)
    values = np.array([[known[f].cx, known[f].cy, known[f].angle, known[f].side] for f in frames])
    out = np.stack([np.interp(np.arange(n_frames), frames, values[:, i]) for i in range(4)], axis=1)
    return [CropGeometry(*map(float, row)) for row in out]


def track_crops(frames: np.ndarray, track: Track, config: FaceTrackingConfig) -> np.ndarray:
    """Aligned mouth crops of one track for every frame of the clip (uint8 [T, C, C, 3])."""
    known = {f: mouth_geometry(d, config.mouth_scale, config.use_landmarks) for f, d in track.detections.items()}
    geometry = _interpolate_geometry(known, len(frames))
    return np.stack([crop_aligned(frame, g, config.crop_size) for frame, g in zip(frames, geometry, strict=True)])


def detection_frames(n_frames: int, detect_every: int) -> list[int]:
    """Frames the detector runs on: every ``detect_every``-th one and always the last."""
    frames = list(range(0, n_frames, detect_every))
    if n_frames and frames[-1] != n_frames - 1:
        frames.append(n_frames - 1)
    return frames


def track_video(
    frames: np.ndarray,
    fps: float,
    config: FaceTrackingConfig,
    models: FaceModels,
    audio: np.ndarray | None = None,
) -> VideoFaces:
    """Detect, track and crop the faces of one clip.

    Args:
        frames: uint8 [T, H, W, 3] RGB consecutive frames.
        fps: Their frame rate (tracking counts frames; :func:`speech_sync` needs the rate).
        config: The stage settings.
        models: Open MediaPipe models (see :func:`load_face_models`).
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
    for f in keyframes:
        per_frame[f], tried_full = detect_frame(frames[f], models, config)
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
        frames: Dense frames processed.
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
    base = FaceRecord(
        video_id=rec.video_id,
        split=rec.split,
        authenticity=rec.authenticity,
        category=rec.category,
        fps=float(rec.dense_fps),
        start_s=float(rec.dense_start_s),
        has_audio=bool(rec.has_audio),
    )
    try:
        frames = frames_ds.load_dense_frames(frames_dir, rec)
        if rec.dense_fps <= 0:
            raise ValueError(f"dense_fps is {rec.dense_fps}")
        audio = frames_ds.load_audio(frames_dir, rec) if rec.has_audio else np.zeros(0, dtype=np.float32)
        audio = clip_audio(audio, rec.dense_start_s, len(frames), float(rec.dense_fps))
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
    frames_dir: Path, out_dir: Path, config: FaceTrackingConfig, cache_dir: Path
) -> FaceTrackingReport:
    """Turn the frames Dataset's dense frames into the faces Dataset.

    Args:
        frames_dir: The frame_extraction Dataset directory.
        out_dir: The faces Dataset directory to write (created).
        config: The stage settings.
        cache_dir: Where ``clipsync fetch-models`` put the MediaPipe files.

    Returns:
        Counts and per-video face statistics.

    Raises:
        FaceModelError: If the model files are missing (nothing is downloaded at run time).
        FileNotFoundError: If ``frames_dir`` holds no frames index.
    """
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
    if config.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(
            max_workers=min(config.workers, len(todo)), initializer=_worker_init, initargs=(str(cache_dir), config)
        ) as pool:
            for record in pool.map(partial(_worker_process, frames_dir, out_dir, config=config), todo):
                records.append(record)
                progress.update()
    else:
        with load_face_models(cache_dir, config) as models:
            for rec in todo:
                records.append(process_video(frames_dir, out_dir, rec, config, models))
                progress.update()
    progress.close()
    write_face_index(out_dir, records)
    for record in records:
        report.per_video.append(
            {
                "video_id": record.video_id,
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

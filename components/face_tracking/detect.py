"""face_tracking, detection: MediaPipe's face detectors and face mesh on the frames of a clip.

The short-range detector (Tasks API) finds the faces; where it finds nothing the full-range model gets a second
try (small, distant faces). When the face mesh (FaceLandmarker) is on, each detection gets the lip and eye
landmarks of the mesh that matches it and agrees with its keypoints. Over a clip (:func:`detect_frames`) the face
mesh runs in MediaPipe's VIDEO running mode (``landmark_tracking``): it places each frame's mesh from the previous
frame's and detects a face only where it has lost one, instead of running its own face detector on every frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import Box
from components.face_tracking.models import MESH_POINTS, FaceModelPaths, face_model_paths, landmarker_bundle

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


def box_area(box: Sequence[float]) -> float:
    """Area of an ``(x0, y0, x1, y1)`` box (0 when it is empty)."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


@functools.cache
def _tracking_bundle(detector: Path, landmark: Path) -> bytes:
    """The VIDEO running mode's landmarker bundle (padding points inside the face), built once per process."""
    return landmarker_bundle(detector, landmark, fill="mesh")


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
        self._paths, self._confidence = paths, config.min_detection_confidence
        if config.use_landmarks:
            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(paths.landmarker_task)),
                num_faces=config.max_faces,
                min_face_detection_confidence=config.min_detection_confidence,
            )
            self.landmarker = vision.FaceLandmarker.create_from_options(options)
            if config.landmark_tracking:  # built now, not in the first request or video
                _tracking_bundle(paths.short_range, paths.face_landmark)

    @contextmanager
    def tracking_landmarker(self, num_faces: int) -> Iterator[Any]:
        """A fresh face mesh in VIDEO running mode for one run of frames.

        Fresh for each run: a VIDEO landmarker carries the last frame's meshes into the next call. ``num_faces``
        should be the most faces the detector found in the run: the landmarker detects again on every frame
        where it follows fewer than that. Its bundle repeats mesh points as padding
        (:func:`~components.face_tracking.models.pad_landmark_model`): the next frame's region is the box of all
        478 points.
        """
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(
                model_asset_buffer=_tracking_bundle(self._paths.short_range, self._paths.face_landmark)
            ),
            num_faces=num_faces,
            min_face_detection_confidence=self._confidence,
            running_mode=vision.RunningMode.VIDEO,
        )
        landmarker = vision.FaceLandmarker.create_from_options(options)
        try:
            yield landmarker
        finally:
            landmarker.close()

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


def _landmark_faces(
    frame: np.ndarray, landmarker: Any, timestamp_ms: int | None = None
) -> list[tuple[Box, tuple[Point, ...], tuple[Point, Point]]]:
    """Per mesh found: its box, lip points and eye centres (only the face mesh's points 0-467 are used).

    ``timestamp_ms`` runs a VIDEO-mode landmarker on the frame (increasing within a run), else the IMAGE mode.
    """
    height, width = frame.shape[:2]
    image = _mp_image(frame)
    result = landmarker.detect(image) if timestamp_ms is None else landmarker.detect_for_video(image, timestamp_ms)
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


def _attach_landmarks(
    frame: np.ndarray, faces: list[FaceDetection], landmarker: Any, timestamp_ms: int | None = None
) -> list[FaceDetection]:
    """Give each detection the lip/eye landmarks of the plausible landmarker mesh that matches it best."""
    meshes = _landmark_faces(frame, landmarker, timestamp_ms)
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


def _find_faces(frame: np.ndarray, models: FaceModels, config: FaceTrackingConfig) -> tuple[list[FaceDetection], bool]:
    """The detectors only: the short-range model, the full-range one where it finds nothing."""
    faces = detect_faces(frame, models.short, "short")
    tried_full = False
    if not faces and models.full is not None:
        faces = detect_faces(frame, models.full, "full")
        tried_full = True
    return faces[: config.max_faces], tried_full


def detect_frame(frame: np.ndarray, models: FaceModels, config: FaceTrackingConfig) -> tuple[list[FaceDetection], bool]:
    """Detect the faces of one frame with the configured fallbacks (the face mesh in IMAGE running mode).

    Returns:
        The detections (at most ``max_faces``, highest score first) and whether the full-range model ran.
    """
    faces, tried_full = _find_faces(frame, models, config)
    if faces and models.landmarker is not None:
        faces = _attach_landmarks(frame, faces, models.landmarker)
    return faces, tried_full


def _detect_run(
    frames: np.ndarray, indices: Sequence[int], models: FaceModels, config: FaceTrackingConfig, fps: float
) -> list[tuple[list[FaceDetection], bool]]:
    """:func:`detect_frame` on a run of frames, the face mesh following the faces from frame to frame.

    The detectors run on every frame first; then one VIDEO-mode landmarker, asked for as many faces as the
    detectors found at most in one frame, runs on the frames with a face in the order given (timestamps from the
    frame indices at ``fps``, always increasing). Once it follows every face it runs no face detector of its own.
    Its meshes go through the same matching and plausibility check as :func:`detect_frame`'s.
    """
    found = [_find_faces(frames[i], models, config) for i in indices]
    most = max((len(faces) for faces, _ in found), default=0)
    if models.landmarker is None or most == 0:
        return found
    if not config.landmark_tracking:
        return [
            (_attach_landmarks(frames[i], faces, models.landmarker), tried)
            for i, (faces, tried) in zip(indices, found, strict=True)
        ]
    answers, timestamp, previous = [], -1, None
    with models.tracking_landmarker(most) as landmarker:
        for i, (faces, tried_full) in zip(indices, found, strict=True):
            step = 1 if previous is None else round((i - previous) * 1000.0 / fps)
            timestamp, previous = timestamp + max(1, step), i
            if faces:
                faces = _attach_landmarks(frames[i], faces, landmarker, timestamp)
            answers.append((faces, tried_full))
    return answers


def detect_frames(
    frames: np.ndarray,
    indices: Sequence[int],
    models: FaceModels | Sequence[FaceModels],
    config: FaceTrackingConfig,
    fps: float = 25.0,
) -> list[tuple[list[FaceDetection], bool]]:
    """Detect the faces of ``frames[i]`` for each of ``indices``, in that order (as :func:`detect_frame`).

    With ``landmark_tracking`` the face mesh follows the faces through the frames (:func:`_detect_run`), else it
    runs on each frame alone. With several model sets the indices are cut into one contiguous share per set, each
    run in its own thread: MediaPipe runs a frame without holding the GIL (the lip-sync server opens
    ``serving.threads`` sets). Each share is one run: its first frame's mesh is placed by a detection, not
    followed from the frame before, so the landmarks from there on differ a little from one set's (crop centres by
    a median 0 and at most 3 % of a crop side on benchmark v2 clips, ``benchmarks/lipsync_request.py --part
    crops``); boxes and scores are the same. One set is never used by two threads at once.

    Args:
        frames: uint8 [T, H, W, 3] RGB.
        indices: The frames to detect.
        models: One set of models, or several.
        config: The stage settings.
        fps: Frame rate (the VIDEO running mode's timestamps).
    """
    sets = [models] if isinstance(models, FaceModels) else list(models)
    if not sets:
        raise ValueError("detect_frames needs at least one set of face models")
    indices = list(indices)
    shares = min(len(sets), len(indices))
    if shares <= 1:
        return _detect_run(frames, indices, sets[0], config, fps)
    bounds = [round(k * len(indices) / shares) for k in range(shares + 1)]

    def run(k: int) -> list[tuple[list[FaceDetection], bool]]:
        return _detect_run(frames, indices[bounds[k] : bounds[k + 1]], sets[k], config, fps)

    with ThreadPoolExecutor(max_workers=shares, thread_name_prefix="face-detect") as pool:
        return [answer for share in pool.map(run, range(shares)) for answer in share]

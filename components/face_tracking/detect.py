"""face_tracking, detection: MediaPipe's face detectors and face mesh on one frame.

The short-range detector (Tasks API) finds the faces; where it finds nothing the full-range model gets a second
try (small, distant faces). When the face mesh (FaceLandmarker) is on, each detection gets the lip and eye
landmarks of the mesh that matches it and agrees with its keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import Box
from components.face_tracking.models import MESH_POINTS, FaceModelPaths, face_model_paths

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


def detect_frames(
    frames: np.ndarray, indices: Sequence[int], models: FaceModels | Sequence[FaceModels], config: FaceTrackingConfig
) -> list[tuple[list[FaceDetection], bool]]:
    """:func:`detect_frame` on ``frames[i]`` for each of ``indices``, in that order.

    With several model sets the indices are cut into one contiguous share per set, each run in its own thread:
    MediaPipe runs a frame without holding the GIL and the IMAGE running mode keeps no state between frames, so
    the answers are those of one set, in less wall time where the process has the cores (the lip-sync server
    opens ``serving.threads`` sets). One set is never used by two threads at once.
    """
    sets = [models] if isinstance(models, FaceModels) else list(models)
    if not sets:
        raise ValueError("detect_frames needs at least one set of face models")
    indices = list(indices)
    shares = min(len(sets), len(indices))
    if shares <= 1:
        return [detect_frame(frames[i], sets[0], config) for i in indices]
    bounds = [round(k * len(indices) / shares) for k in range(shares + 1)]

    def run(k: int) -> list[tuple[list[FaceDetection], bool]]:
        return [detect_frame(frames[i], sets[k], config) for i in indices[bounds[k] : bounds[k + 1]]]

    with ThreadPoolExecutor(max_workers=shares, thread_name_prefix="face-detect") as pool:
        return [answer for share in pool.map(run, range(shares)) for answer in share]

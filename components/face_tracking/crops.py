"""face_tracking, crops: where a mouth crop is cut, and the aligned crops of a track.

A crop is centred on the lips (the face mesh's lip landmarks, else the detector's mouth keypoint), rotated so the
eye line is level and scaled from the eye distance. Between detection frames the crop geometry is interpolated
linearly (the whole clip is known, so there is no need to extrapolate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.detect import KP_LEFT_EYE, KP_MOUTH, KP_RIGHT_EYE, FaceDetection
from components.face_tracking.tracks import Track


@dataclass(frozen=True)
class CropGeometry:
    """Where a mouth crop is cut: centre, eye-line angle (degrees, image y down) and side, in pixels."""

    cx: float
    cy: float
    angle: float
    side: float


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

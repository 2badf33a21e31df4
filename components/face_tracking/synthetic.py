"""Generated clips with known face boxes, for the face_tracking tests and benchmark.

A real face ships with scikit-image (``skimage.data.astronaut()``); it is cut out, scaled, rotated or
squeezed (a yaw-like, profile-leaning view) and pasted onto a smooth background at known positions, so the
true face box of every frame is known. Occlusions cover the face with a grey box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# The face inside the astronaut crop below, relative to the crop (MediaPipe's short-range box on it).
_CROP = (30, 240, 120, 330)  # rows y0:y1, cols x0:x1 of astronaut()
FACE_IN_PATCH = (0.271, 0.248, 0.724, 0.700)
BACKGROUND = (70, 100, 125)


@lru_cache(maxsize=1)
def face_patch() -> np.ndarray:
    """The astronaut's head and shoulders, uint8 [210, 210, 3] RGB."""
    from skimage import data

    y0, y1, x0, x1 = _CROP
    return np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])


@dataclass(frozen=True)
class FaceSpec:
    """One face in a generated clip.

    Attributes:
        start: First frame the face is visible.
        end: Frame after the last visible one.
        x: Left edge of the pasted patch at ``start``.
        y: Top edge of the patch at ``start``.
        size: Patch side in pixels (the face box is about 0.45 of it).
        vx: Horizontal motion in pixels per frame.
        vy: Vertical motion in pixels per frame.
        angle: In-plane rotation in degrees (counter-clockwise, as cv2).
        squeeze: Horizontal foreshortening of one side (1: frontal; 0.5: a strong yaw).
        flip: Mirror the face horizontally.
        occluded: Frames on which a grey box hides the face.
    """

    start: int
    end: int
    x: float
    y: float
    size: int = 120
    vx: float = 0.0
    vy: float = 0.0
    angle: float = 0.0
    squeeze: float = 1.0
    flip: bool = False
    occluded: frozenset[int] = field(default_factory=frozenset)


def _patch(spec: FaceSpec) -> tuple[np.ndarray, np.ndarray]:
    """The transformed patch and the 2x3/3x3 transform applied to patch pixel coordinates."""
    import cv2

    size = spec.size
    patch = cv2.resize(face_patch(), (size, size), interpolation=cv2.INTER_AREA)
    if spec.flip:
        patch = patch[:, ::-1].copy()
    transform = np.eye(3)
    if spec.squeeze != 1.0:
        d = (1 - spec.squeeze) * size / 2
        right = size / 2 + size / 2 * spec.squeeze
        src = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
        dst = np.float32([[0, 0], [right, d], [right, size - d], [0, size]])
        h = cv2.getPerspectiveTransform(src, dst)
        patch = cv2.warpPerspective(patch, h, (size, size), borderValue=BACKGROUND)
        transform = h @ transform
    if spec.angle:
        r = cv2.getRotationMatrix2D((size / 2, size / 2), spec.angle, 1.0)
        patch = cv2.warpAffine(patch, r, (size, size), borderValue=BACKGROUND)
        transform = np.vstack([r, [0, 0, 1]]) @ transform
    return patch, transform


def face_box(spec: FaceSpec, frame: int) -> tuple[float, float, float, float]:
    """The true face box of ``spec`` on ``frame`` (a square like the detector's, in frame pixels)."""
    _, transform = _patch(spec)
    s = spec.size
    fx0, fy0, fx1, fy1 = FACE_IN_PATCH
    if spec.flip:
        fx0, fx1 = 1 - fx1, 1 - fx0
    centre = np.array([(fx0 + fx1) / 2 * s, (fy0 + fy1) / 2 * s, 1.0])
    cx, cy, w = transform @ centre
    cx, cy = cx / w, cy / w
    side = (fx1 - fx0) * s * (1 + spec.squeeze) / 2
    ox = spec.x + spec.vx * (frame - spec.start)
    oy = spec.y + spec.vy * (frame - spec.start)
    return (ox + cx - side / 2, oy + cy - side / 2, ox + cx + side / 2, oy + cy + side / 2)


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with mild noise (no face-like structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.array(BACKGROUND, dtype=np.float32)
    img = base + 30 * np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1)
    img += rng.normal(0, 3, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_clip(
    faces: list[FaceSpec], n_frames: int, height: int = 240, width: int = 320, seed: int = 0
) -> tuple[np.ndarray, list[list[tuple[float, float, float, float] | None]]]:
    """Render a clip and its truth.

    Args:
        faces: The faces to paste (later ones on top).
        n_frames: Frames to render.
        height: Frame height.
        width: Frame width.
        seed: Background noise seed.

    Returns:
        ``(frames, truth)``: uint8 [T, H, W, 3] RGB, and per face, per frame its box or ``None`` where it is
        absent or occluded.
    """
    bg = background(height, width, seed)
    frames = np.repeat(bg[None], n_frames, axis=0)
    truth: list[list[tuple[float, float, float, float] | None]] = [[None] * n_frames for _ in faces]
    for i, spec in enumerate(faces):
        patch, _ = _patch(spec)
        for f in range(max(spec.start, 0), min(spec.end, n_frames)):
            x = round(spec.x + spec.vx * (f - spec.start))
            y = round(spec.y + spec.vy * (f - spec.start))
            px0, py0 = max(0, -x), max(0, -y)
            fx0, fy0 = max(0, x), max(0, y)
            fx1, fy1 = min(width, x + spec.size), min(height, y + spec.size)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            frames[f, fy0:fy1, fx0:fx1] = patch[py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0]
            box = face_box(spec, f)
            if f in spec.occluded:
                pad = 0.2 * (box[2] - box[0])
                ox0, oy0 = max(0, int(box[0] - pad)), max(0, int(box[1] - pad))
                ox1, oy1 = min(width, int(box[2] + pad)), min(height, int(box[3] + pad))
                frames[f, oy0:oy1, ox0:ox1] = 128
            else:
                truth[i][f] = box
    return frames, truth

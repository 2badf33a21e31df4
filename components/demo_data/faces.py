"""Talking heads made from the real face that ships with scikit-image (``skimage.data.astronaut()``).

The face geometry below was measured once on that 512x512 image (MediaPipe's short-range detector box,
checked by eye on an 8x zoom): face box, eye centres and the mouth. Per frame the mouth is painted over
in the image's own coordinates (pink lips, a dark opening whose height follows a speech envelope), then
the head (cut out with a feathered ellipse) is warped into the frame by a homography: flip, optional
profile-like perspective squeeze, scale, rotation, translation, with a slow per-frame head wobble. The
same homography maps the face box, eyes and mouth, so every frame's truth is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from components.demo_data import draw

# Measured on skimage.data.astronaut() (x, y in pixels of the 512x512 image).
FACE_BOX = (177.0, 82.0, 272.0, 177.0)
RIGHT_EYE = (203.0, 102.0)  # the subject's right eye (image left)
LEFT_EYE = (245.5, 103.0)
MOUTH_CENTER = (224.0, 145.0)
MOUTH_HALF_WIDTH = 20.5
HEAD_CENTER, HEAD_AXES = (224.0, 126.0), (84.0, 104.0)  # feathered ellipse that cuts out head and neck
_CROP = (16, 240, 112, 336)  # rows y0:y1, cols x0:x1 of the patch holding the head
_LIPS = (192.0, 112.0, 118.0)
_MOUTH_INSIDE = (48.0, 16.0, 24.0)


@lru_cache(maxsize=1)
def head_patch() -> tuple[np.ndarray, np.ndarray]:
    """The head patch (float32 RGB ``[224, 224, 3]``) and its feathered alpha mask (float32 ``[224, 224]``)."""
    from skimage import data

    y0, y1, x0, x1 = _CROP
    patch = data.astronaut()[y0:y1, x0:x1].astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    r = np.hypot((xx - HEAD_CENTER[0]) / HEAD_AXES[0], (yy - HEAD_CENTER[1]) / HEAD_AXES[1])
    alpha = np.clip((1.0 - r) / 0.08, 0.0, 1.0)
    # Key out the studio's light grey backdrop around the hair and neck (outside the face itself).
    grey = (patch.min(axis=2) > 150) & (np.ptp(patch, axis=2) < 22)
    face = np.hypot((xx - 224.0) / 42.0, (yy - 132.0) / 50.0) < 1.0
    keyed = (grey & ~face & (yy < 195)).astype(np.float32)
    import cv2

    keyed = cv2.GaussianBlur(cv2.dilate(keyed, np.ones((3, 3), np.uint8)), (5, 5), 1.5)
    alpha = (alpha * (1.0 - keyed)).astype(np.float32)
    return patch, alpha


def _to_patch(point: tuple[float, float]) -> tuple[float, float]:
    return point[0] - _CROP[2], point[1] - _CROP[0]


def paint_mouth(patch: np.ndarray, opening: float, gain=(1.0, 1.0, 1.0)) -> None:
    """Paint the mouth ``opening`` open (0 closed, 1 wide open) onto a head patch in place."""
    mx, my = _to_patch(MOUTH_CENTER)
    my += 1.0
    e = float(np.clip(opening, 0.0, 1.0))
    g = np.asarray(gain, np.float32)
    draw.ellipse(patch, mx, my, MOUTH_HALF_WIDTH + 1.5, 5.0 + 4.0 * e, np.float32(_LIPS) * g)
    draw.ellipse(patch, mx, my + 0.5 * e, MOUTH_HALF_WIDTH - 3.5, 0.7 + 6.0 * e, np.float32(_MOUTH_INSIDE) * g)


def paint_eyelids(patch: np.ndarray, closure: float, skin: np.ndarray) -> None:
    """Close both eyes of a head patch by ``closure`` (0 open, 1 shut: a blink) in place, lids of colour ``skin``."""
    e = float(np.clip(closure, 0.0, 1.0))
    for eye in (RIGHT_EYE, LEFT_EYE):
        ex, ey = _to_patch(eye)
        draw.ellipse(patch, ex, ey - 3.0 * (1 - e), 9.5, 0.5 + 5.5 * e, skin)
        draw.ellipse(patch, ex, ey + 2.5 * e - 0.5, 9.0, 0.8, skin * 0.45, alpha=e)  # the lash line


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], dtype=np.float64)


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ h.T
    return q[:, :2] / q[:, 2:3]


@dataclass(frozen=True)
class FacePose:
    """Where and how a face sits in the frame (the clip's base pose; a wobble is added per frame).

    Attributes:
        cx: Face centre x in the frame.
        cy: Face centre y in the frame.
        face_px: Side of the face box in frame pixels (for a frontal, unsqueezed face).
        angle_deg: In-plane rotation (counter-clockwise on screen, degrees).
        flip: Mirror the face.
        squeeze: Profile-like perspective: the far side of the face is compressed to this fraction (1: frontal).
        squeeze_right: Which side is the far one (on screen, after the flip).
        wobble_px: Amplitude of the slow head motion in pixels.
        wobble_deg: Amplitude of the slow head rotation in degrees.
        wobble_hz: Frequency of the wobble.
        wobble_phase: Phase of the wobble (radians).
        gain: Per-channel colour gain (lighting / skin tone variation).
    """

    cx: float
    cy: float
    face_px: float
    angle_deg: float = 0.0
    flip: bool = False
    squeeze: float = 1.0
    squeeze_right: bool = True
    wobble_px: float = 0.0
    wobble_deg: float = 0.0
    wobble_hz: float = 0.3
    wobble_phase: float = 0.0
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def homography(self, t: float) -> np.ndarray:
        """3x3 map from head-patch pixels to frame pixels at time ``t`` seconds."""
        import cv2

        fx, fy = _to_patch(((FACE_BOX[0] + FACE_BOX[2]) / 2, (FACE_BOX[1] + FACE_BOX[3]) / 2))
        h = _translate(-fx, -fy)
        if self.flip:
            h = np.diag([-1.0, 1.0, 1.0]) @ h
        if self.squeeze < 1.0:
            r = 112.0
            far = r * (2 * self.squeeze - 1)
            dy = r * (1 - self.squeeze) * 0.35
            src = np.float32([[-r, -r], [r, -r], [r, r], [-r, r]])
            dst = np.float32([[-r, -r], [far, -r + dy], [far, r - dy], [-r, r]])
            q = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
            if not self.squeeze_right:
                mirror = np.diag([-1.0, 1.0, 1.0])
                q = mirror @ q @ mirror
            centre = _apply(q, np.zeros((1, 2)))[0]
            h = _translate(-centre[0], -centre[1]) @ q @ h
        w = 2 * np.pi * self.wobble_hz * t + self.wobble_phase
        scale = self.face_px / (FACE_BOX[2] - FACE_BOX[0]) * (1 + 0.02 * np.sin(1.3 * w))
        angle = np.deg2rad(self.angle_deg + self.wobble_deg * np.sin(0.7 * w + 1.0))
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        # Counter-clockwise on screen (y down) is a negative angle in image maths.
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
        dx = self.wobble_px * np.sin(w)
        dy = 0.6 * self.wobble_px * np.sin(1.7 * w + 0.5)
        return _translate(self.cx + dx, self.cy + dy) @ rot @ h

    def truth(self, t: float) -> dict:
        """Face box (square, centred on the face like a detector's), eyes and mouth in frame pixels at ``t``."""
        hmg = self.homography(t)
        x0, y0, x1, y1 = (v - o for v, o in zip(FACE_BOX, (_CROP[2], _CROP[0], _CROP[2], _CROP[0]), strict=True))
        corners = _apply(hmg, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        xs, ys = corners[:, 0], corners[:, 1]
        area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
        centre = _apply(hmg, np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]))[0]
        half = np.sqrt(area) / 2
        pts = _apply(hmg, np.array([_to_patch(MOUTH_CENTER), _to_patch(RIGHT_EYE), _to_patch(LEFT_EYE)]))
        return {
            "box": [centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half],
            "mouth": pts[0].tolist(),
            "eyes": [pts[1].tolist(), pts[2].tolist()],
            "mouth_width": float(2 * MOUTH_HALF_WIDTH * np.sqrt(area) / (FACE_BOX[2] - FACE_BOX[0])),
        }


class FaceSprite:
    """One face of a clip, ready to paint frame after frame (the head patch with the pose's colour gain)."""

    def __init__(self, pose: FacePose):
        patch, alpha = head_patch()
        self.pose = pose
        self.gain = np.asarray(pose.gain, np.float32)
        self._base = np.dstack([patch * self.gain, alpha]).astype(np.float32)
        self._rgba = self._base.copy()
        mx, my = _to_patch(MOUTH_CENTER)
        # Rows/cols the mouth painting can touch; restored from the base before each frame.
        self._roi = (slice(int(my) - 16, int(my) + 20), slice(int(mx) - 28, int(mx) + 29))
        ex, ey = _to_patch(RIGHT_EYE)
        self._eyes_roi = (slice(int(ey) - 12, int(ey) + 12), slice(int(ex) - 14, int(_to_patch(LEFT_EYE)[0]) + 15))
        # Eyelid colour: the skin just below the eyes, a little shaded.
        self._skin = 0.8 * self._base[int(ey) + 9 : int(ey) + 13, int(ex) - 4 : int(ex) + 5, :3].mean(axis=(0, 1))

    def paint(self, frame: np.ndarray, opening: float, t: float, blink: float = 0.0) -> None:
        """Paint the face (mouth ``opening`` open, eyes ``blink`` shut) at time ``t`` onto RGB ``frame`` in place."""
        import cv2

        self._rgba[self._roi] = self._base[self._roi]
        paint_mouth(self._rgba[..., :3], opening, self.gain)
        self._rgba[self._eyes_roi] = self._base[self._eyes_roi]
        if blink > 0:
            paint_eyelids(self._rgba[..., :3], blink, self._skin)
        hmg = self.pose.homography(t)
        # Warp only into the frame region the patch lands on.
        ph, pw = self._rgba.shape[:2]
        corners = _apply(hmg, np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float64))
        x0, y0 = (max(0, int(np.floor(v))) for v in corners.min(axis=0))
        x1 = min(frame.shape[1], int(np.ceil(corners[:, 0].max())) + 1)
        y1 = min(frame.shape[0], int(np.ceil(corners[:, 1].max())) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        local = _translate(-x0, -y0) @ hmg
        warped = cv2.warpPerspective(
            self._rgba, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0)
        )
        rgb, alpha = np.ascontiguousarray(warped[..., :3]), np.ascontiguousarray(warped[..., 3:4])
        region = frame[y0:y1, x0:x1]
        region += alpha * (rgb - region)


def studio_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A studio-like backdrop: a two-colour gradient with soft out-of-focus light spots (float32 RGB)."""
    top = rng.uniform(20, 200, 3)
    bottom = np.clip(top * rng.uniform(0.4, 0.9) + rng.uniform(-30, 30, 3), 0, 255)
    img = draw.vertical_gradient(height, width, top, bottom)
    img *= (0.9 + 0.2 * draw.smooth_noise(rng, height, width, 4))[..., None]
    for _ in range(int(rng.integers(3, 8))):
        draw.glow(
            img,
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(0.04, 0.12) * width,
            rng.uniform(20, 90, 3),
            1.0,
        )
    return img


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A face-free textured backdrop (stripes, blotches, noise) for the no-face clips (float32 RGB)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c1, c2 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    a = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(a) + yy * np.sin(a)) * rng.uniform(0.05, 0.2))
    mix = (0.6 * stripes + 0.4 * draw.smooth_noise(rng, height, width, 6))[..., None]
    img = c1 * mix + c2 * (1 - mix)
    return img + rng.normal(0, 4.0, (height, width, 1)).astype(np.float32)

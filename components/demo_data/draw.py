"""Small anti-aliased numpy painting primitives on float32 RGB images.

Every primitive works on the bounding box of its shape only, so a frame costs little beyond its static layers.
Coverage comes from a signed distance: 1 inside, 0 one pixel outside, linear in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Colour = Sequence[float]


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], float32 ``[height, width]`` (bicubic upsampling of a coarse grid)."""
    import cv2

    ch = max(2, round(cells * height / max(height, width)))
    cw = max(2, round(cells * width / max(height, width)))
    small = rng.random((ch, cw)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(big.min()), float(big.max())
    return (big - lo) / max(hi - lo, 1e-6)


def vertical_gradient(height: int, width: int, top: Colour, bottom: Colour) -> np.ndarray:
    """float32 ``[height, width, 3]`` from ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(img, (height, width, 3)).copy()


def _paint(
    img: np.ndarray,
    bbox: tuple[float, float, float, float],
    coverage: Callable[[np.ndarray, np.ndarray], np.ndarray],
    colour: Colour,
    alpha: float = 1.0,
) -> None:
    h, w = img.shape[:2]
    x0, y0 = max(0, int(np.floor(bbox[0])) - 1), max(0, int(np.floor(bbox[1])) - 1)
    x1, y1 = min(w, int(np.ceil(bbox[2])) + 2), min(h, int(np.ceil(bbox[3])) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    cov = np.broadcast_to(np.clip(coverage(yy, xx), 0.0, 1.0), (y1 - y0, x1 - x0))[..., None] * alpha
    region = img[y0:y1, x0:x1]
    region += cov * (np.asarray(colour, np.float32) - region)


def disc(img: np.ndarray, cx: float, cy: float, r: float, colour: Colour, alpha: float = 1.0) -> None:
    """A filled circle."""
    _paint(img, (cx - r, cy - r, cx + r, cy + r), lambda yy, xx: r - np.hypot(xx - cx, yy - cy) + 0.5, colour, alpha)


def ring(img: np.ndarray, cx: float, cy: float, r_in: float, r_out: float, colour: Colour, alpha: float = 1.0) -> None:
    """An annulus between ``r_in`` and ``r_out``."""

    def cov(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        d = np.hypot(xx - cx, yy - cy)
        return np.minimum(r_out - d, d - r_in) + 0.5

    _paint(img, (cx - r_out, cy - r_out, cx + r_out, cy + r_out), cov, colour, alpha)


def ellipse(
    img: np.ndarray, cx: float, cy: float, rx: float, ry: float, colour: Colour, angle: float = 0.0, alpha: float = 1.0
) -> None:
    """A filled ellipse rotated by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    r = max(rx, ry)

    def cov(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        q = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        return (1 - q) * min(rx, ry) + 0.5

    _paint(img, (cx - r, cy - r, cx + r, cy + r), cov, colour, alpha)


def capsule(
    img: np.ndarray, x0: float, y0: float, x1: float, y1: float, half_width: float, colour: Colour, alpha: float = 1.0
) -> None:
    """A thick line segment with round ends."""
    dx, dy = x1 - x0, y1 - y0
    length2 = max(dx * dx + dy * dy, 1e-6)

    def cov(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0.0, 1.0)
        return half_width - np.hypot(xx - x0 - t * dx, yy - y0 - t * dy) + 0.5

    hw = half_width
    _paint(img, (min(x0, x1) - hw, min(y0, y1) - hw, max(x0, x1) + hw, max(y0, y1) + hw), cov, colour, alpha)


def rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: Colour, alpha: float = 1.0) -> None:
    """An axis-aligned filled rectangle with anti-aliased edges."""

    def cov(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return np.minimum(np.minimum(xx - x0, x1 - xx), np.minimum(yy - y0, y1 - yy)) + 0.5

    _paint(img, (x0, y0, x1, y1), cov, colour, alpha)


def glow(img: np.ndarray, cx: float, cy: float, sigma: float, colour: Colour, strength: float = 1.0) -> None:
    """Add a Gaussian light spot (additive, not clipped here)."""
    h, w = img.shape[:2]
    r = 3 * sigma
    x0, y0 = max(0, int(cx - r)), max(0, int(cy - r))
    x1, y1 = min(w, int(cx + r) + 1), min(h, int(cy + r) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma * sigma)) * strength
    img[y0:y1, x0:x1] += g[..., None] * np.asarray(colour, np.float32)


def points(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: Colour, weight: np.ndarray | float = 1.0) -> None:
    """Add many one-pixel points at once (additive; points outside the image are dropped)."""
    h, w = img.shape[:2]
    xi, yi = np.round(xs).astype(np.int64), np.round(ys).astype(np.int64)
    keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    weights = np.broadcast_to(np.asarray(weight, np.float32), xs.shape)[keep]
    np.add.at(img, (yi[keep], xi[keep]), weights[:, None] * np.asarray(colour, np.float32))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Clip a float image to [0, 255] and convert."""
    return np.clip(img, 0, 255).astype(np.uint8)

"""The search clips: seven client categories, each a small procedural scene with per-clip variation.

The scenes are meant to be recognisable to a model trained on them (textures, colours, layouts and motion
typical of the domain) and unknown to a base CLIP pretrained on plain coloured shapes. The label phrases
use the domain's words ("laparoscopic cholecystectomy", "curling stone delivery") so search has to learn them.

Why this file is long: seven independent scene painters, one short function each; one
module keeps the categories side by side (splitting them would only spread a table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from components.demo_data import draw

Renderer = Callable[[np.random.Generator, int, int, int, int], np.ndarray]


def _jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _noise_bank(rng: np.random.Generator, h: int, w: int, sigma: float, count: int = 4) -> np.ndarray:
    return rng.normal(0.0, sigma, (count, h, w, 1)).astype(np.float32)


def render_medical(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """Laparoscopic view: glossy pink-red tissue, a greenish gallbladder, metal instruments, round scope field."""
    m = 24
    big_h, big_w = h + 2 * m, w + 2 * m
    t1, t2, t3 = (draw.smooth_noise(rng, big_h, big_w, c) for c in (5, 18, 9))
    base = _jitter(rng, (196, 82, 88))
    tissue = base * (0.6 + 0.5 * t1 + 0.2 * t2)[..., None]
    vessels = np.clip(1 - np.abs(t3 - 0.5) / 0.025, 0, 1)[..., None]
    tissue += vessels * (np.array([120, 25, 35], np.float32) - tissue) * 0.8
    fat = np.clip((t1 - 0.72) / 0.1, 0, 1)[..., None]
    tissue += fat * (_jitter(rng, (225, 195, 120)) - tissue) * 0.7
    tissue += np.clip((t2 - 0.86) / 0.14, 0, 1)[..., None] * 110  # wet specular highlights
    gx, gy = rng.uniform(0.3, 0.7) * big_w, rng.uniform(0.3, 0.7) * big_h
    draw.ellipse(
        tissue, gx, gy, 0.22 * w, 0.13 * h, _jitter(rng, (120, 140, 78)), angle=rng.uniform(0, np.pi), alpha=0.8
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = 0.5 * min(h, w) * rng.uniform(1.0, 1.25)
    dist = np.hypot(xx - w / 2, yy - h / 2)
    scope = (np.clip(radius - dist, 0, 1) * np.clip(1.15 - 0.45 * dist / radius, 0, 1))[..., None]
    tools = []
    for _ in range(int(rng.integers(2, 4))):
        side = rng.uniform(0, 2 * np.pi)
        entry = (w / 2 + 0.9 * w * np.cos(side), h / 2 + 0.9 * h * np.sin(side))
        tip = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h)
        tools.append((entry, tip, rng.uniform(0.3, 1.2), rng.uniform(0, 6.3), rng.uniform(0.03, 0.05) * min(h, w)))
    phase_c, drift = rng.uniform(0, 6.3), rng.uniform(0.3, 0.8)
    noise = _noise_bank(rng, h, w, 3.0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        ox = int(m + m * 0.8 * np.sin(drift * t + phase_c))
        oy = int(m + m * 0.6 * np.cos(0.7 * drift * t + phase_c))
        img = tissue[oy : oy + h, ox : ox + w] * (1 + 0.04 * np.sin(2 * np.pi * 0.3 * t))
        for (ex, ey), (tx, ty), speed, phase, hw in tools:
            px = tx + 0.12 * w * np.sin(speed * t + phase)
            py = ty + 0.1 * h * np.cos(1.3 * speed * t + phase)
            draw.capsule(img, ex, ey, px, py, hw, (85, 88, 95))
            draw.capsule(img, ex, ey, px, py, hw * 0.35, (205, 208, 214), alpha=0.7)
            ang = np.arctan2(py - ey, px - ex)
            opening = 0.35 + 0.3 * np.sin(3 * t + phase)
            for sgn in (-1, 1):
                a = ang + sgn * opening
                draw.capsule(img, px, py, px + 2.2 * hw * np.cos(a), py + 2.2 * hw * np.sin(a), hw * 0.45, (60, 62, 68))
        img = img * scope + noise[f % len(noise)]
        frames[f] = draw.to_uint8(img)
    return frames


def render_industrial(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """Warehouse floor: hazard-striped pedestrian walkway, racking, a forklift driving past a walking person."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    floor = _jitter(rng, (138, 138, 132), 12) * (0.85 + 0.25 * draw.smooth_noise(rng, h, w, 8))[..., None]
    floor *= (0.9 + 0.1 * draw.smooth_noise(rng, h, w, 40))[..., None]
    wy0 = rng.uniform(0.55, 0.68) * h
    wy1 = wy0 + rng.uniform(0.14, 0.2) * h
    walk = _jitter(rng, (70, 150, 85), 15)
    draw.rect(floor, -2, wy0, w + 2, wy1, walk)
    stripe = max(4.0, 0.035 * h)
    period = rng.uniform(14, 22)
    yellow = _jitter(rng, (235, 200, 30), 10)
    for band_y in (wy0 - stripe, wy1):
        band = (yy >= band_y) & (yy < band_y + stripe)
        yellow_part = band & (((xx + yy) % period) < period / 2)
        floor[band] = (25, 25, 25)
        floor[yellow_part] = yellow
    rack_h = rng.uniform(0.18, 0.28) * h
    draw.rect(floor, -2, -2, w + 2, rack_h, _jitter(rng, (60, 70, 90), 10))
    for x in np.arange(rng.uniform(0, 30), w, rng.uniform(40, 60)):
        draw.rect(floor, x, -2, x + 5, rack_h, (30, 60, 160))
    for y in (rack_h * 0.33, rack_h * 0.7):
        draw.rect(floor, -2, y, w + 2, y + 4, (230, 110, 20))
    for x in np.arange(rng.uniform(5, 20), w, 22):
        draw.rect(floor, x, rack_h * 0.38, x + 15, rack_h * 0.68, _jitter(rng, (170, 130, 80), 25))
    body_w, body_h = rng.uniform(0.24, 0.32) * w, rng.uniform(0.14, 0.2) * h
    direction = 1 if rng.random() < 0.5 else -1
    lane_y = rng.uniform(rack_h + 0.05 * h, wy0 - stripe - body_h - 4)
    speed = rng.uniform(0.5, 0.9) * (w + 2 * body_w) / (n / fps)
    start_x = -body_w * 1.2 if direction > 0 else w + body_w * 0.2
    body_colour = _jitter(rng, (235, 175, 25), 15)
    ped_x0, ped_speed = rng.uniform(0.2, 0.8) * w, rng.uniform(12, 25) * (-direction)
    vest = _jitter(rng, (190, 240, 40), 20) if rng.random() < 0.5 else _jitter(rng, (250, 120, 20), 10)
    noise = _noise_bank(rng, h, w, 2.5)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        img = floor.copy()
        px = ped_x0 + ped_speed * t
        py = (wy0 + wy1) / 2 + 2 * np.sin(2 * np.pi * 2 * t)
        draw.ellipse(img, px, py, 0.035 * w, 0.05 * h, vest)
        draw.disc(img, px, py - 0.055 * h, 0.025 * h, (235, 235, 235))
        x0 = start_x + direction * speed * t
        y0 = lane_y
        fork_x = x0 + body_w if direction > 0 else x0 - 0.35 * body_w
        for fy in (y0 + 0.2 * body_h, y0 + 0.7 * body_h):
            draw.rect(img, fork_x, fy, fork_x + 0.35 * body_w, fy + 0.1 * body_h, (45, 45, 50))
        mast_x = x0 + body_w - 5 if direction > 0 else x0
        draw.rect(img, mast_x, y0 - 0.05 * body_h, mast_x + 5, y0 + 1.05 * body_h, (35, 35, 40))
        draw.rect(img, x0, y0, x0 + body_w, y0 + body_h, body_colour)
        cab_x = x0 + 0.35 * body_w if direction > 0 else x0 + 0.15 * body_w
        draw.rect(img, cab_x, y0 + 0.15 * body_h, cab_x + 0.5 * body_w, y0 + 0.85 * body_h, (40, 40, 45))
        for wx in (x0 + 0.15 * body_w, x0 + 0.85 * body_w):
            for wy in (y0 - 2, y0 + body_h + 2):
                draw.disc(img, wx, wy, 0.1 * body_h, (20, 20, 20))
        if int(t * 4) % 2 == 0:
            draw.glow(img, cab_x + 0.25 * body_w, y0 + 0.5 * body_h, 6, (255, 140, 20), 1.5)
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_curling(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """A curling sheet from above: pebbled ice, the red/blue house, a granite stone sliding in, sweepers."""
    ice = _jitter(rng, (226, 236, 246), 6) * (0.95 + 0.05 * draw.smooth_noise(rng, h, w, 12))[..., None]
    ice += rng.normal(0, 3.0, (h, w, 1)).astype(np.float32)
    side = min(h, w)
    hx, hy = w / 2 + rng.uniform(-0.08, 0.08) * w, rng.uniform(0.22, 0.34) * h
    r12 = rng.uniform(0.3, 0.38) * side
    outer, inner = ((30, 80, 200), (210, 30, 40)) if rng.random() < 0.7 else ((210, 30, 40), (30, 80, 200))
    draw.disc(ice, hx, hy, r12, _jitter(rng, outer, 12))
    draw.disc(ice, hx, hy, 0.66 * r12, (238, 240, 246))
    draw.disc(ice, hx, hy, 0.33 * r12, _jitter(rng, inner, 12))
    draw.disc(ice, hx, hy, 0.11 * r12, (238, 240, 246))
    draw.rect(ice, hx - 0.8, -2, hx + 0.8, h + 2, (60, 60, 70))
    draw.rect(ice, -2, hy - 0.8, w + 2, hy + 0.8, (60, 60, 70))
    hog = rng.uniform(0.72, 0.85) * h
    draw.rect(ice, -2, hog - 2.5, w + 2, hog + 2.5, (200, 30, 40))
    draw.rect(ice, -2, -2, 4, h + 2, (150, 150, 160))
    draw.rect(ice, w - 4, -2, w + 2, h + 2, (150, 150, 160))
    r_stone = rng.uniform(0.06, 0.08) * side
    parked = []
    for _ in range(int(rng.integers(0, 3))):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.1) * r12
        parked.append((hx + d * np.cos(a), hy + d * np.sin(a), (240, 210, 30) if rng.random() < 0.5 else (200, 30, 30)))
    handle = (200, 30, 30) if rng.random() < 0.5 else (240, 210, 30)
    x0, y0 = hx + rng.uniform(-0.15, 0.15) * w, h + r_stone
    x1, y1 = hx + rng.uniform(-0.6, 0.6) * r12, hy + rng.uniform(-0.5, 0.8) * r12
    curl = rng.uniform(-0.1, 0.1) * w
    spin = rng.uniform(0.5, 1.5) * (1 if rng.random() < 0.5 else -1)
    noise = _noise_bank(rng, h, w, 2.0)

    def stone(img: np.ndarray, x: float, y: float, colour, angle: float) -> None:
        draw.disc(img, x + 2, y + 3, r_stone, (150, 160, 175), alpha=0.5)
        draw.disc(img, x, y, r_stone, (95, 95, 100))
        draw.disc(img, x, y, 0.78 * r_stone, (140, 140, 145))
        dx, dy = 0.55 * r_stone * np.cos(angle), 0.55 * r_stone * np.sin(angle)
        draw.capsule(img, x - dx, y - dy, x + dx, y + dy, 0.18 * r_stone, colour)

    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        u = f / max(n - 1, 1)
        ease = 1 - (1 - u) ** 2
        sx = x0 + (x1 - x0) * ease + curl * u**2
        sy = y0 + (y1 - y0) * ease
        img = ice.copy()
        for px, py, colour in parked:
            stone(img, px, py, colour, 0.5)
        stone(img, sx, sy, handle, spin * u * 3)
        for k, sgn in enumerate((-1, 1)):
            bx = sx + sgn * 0.6 * r_stone + 0.8 * r_stone * np.sin(2 * np.pi * 3 * f / fps + k)
            by = sy - 2.2 * r_stone - k * 0.6 * r_stone
            draw.ellipse(img, bx, by, 0.9 * r_stone, 0.3 * r_stone, (40, 40, 45))
            draw.capsule(img, bx, by, bx + sgn * 1.5 * r_stone, by + 2.5 * r_stone, 0.12 * r_stone, (30, 30, 30))
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_security(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """Night CCTV: noisy monochrome, a chain-link fence with a warning sign, a silhouette walking through the gate."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = rng.uniform(0.3, 0.42) * h
    scene = draw.vertical_gradient(h, w, (18, 20, 24), (50, 52, 50))
    draw.rect(scene, -2, horizon - 0.25 * h, w + 2, horizon, _jitter(rng, (38, 38, 42), 8))  # building wall
    draw.glow(scene, rng.uniform(0.2, 0.8) * w, horizon - 0.2 * h, 0.25 * w, (90, 90, 80), 1.0)
    fence_top, fence_bottom = horizon - 0.05 * h, rng.uniform(0.62, 0.72) * h
    gate_x = rng.uniform(0.35, 0.65) * w
    gate_w = rng.uniform(0.12, 0.18) * w
    p = rng.uniform(9, 13)
    mesh = ((((xx + yy) % p) < 1.3) | (((xx - yy) % p) < 1.3)) & (yy > fence_top) & (yy < fence_bottom)
    mesh &= np.abs(xx - gate_x) > gate_w / 2
    scene[mesh] = scene[mesh] * 0.4 + np.float32(110) * 0.6
    for x in np.arange(rng.uniform(0, 20), w, rng.uniform(45, 70)):
        draw.rect(scene, x, fence_top - 4, x + 3, fence_bottom, (120, 120, 115))
    draw.rect(scene, -2, fence_top - 2, w + 2, fence_top + 1, (120, 120, 115))
    sx = gate_x + gate_w * rng.choice([-1.2, 0.9])
    sy = fence_top + 0.25 * (fence_bottom - fence_top)
    draw.rect(scene, sx, sy, sx + 0.12 * w, sy + 0.08 * h, (190, 40, 35))
    draw.rect(scene, sx + 0.01 * w, sy + 0.03 * h, sx + 0.11 * w, sy + 0.05 * h, (220, 220, 220))
    tint = np.array([0.75, 1.0, 0.75], np.float32) if rng.random() < 0.6 else np.array([1.0, 1.0, 1.0], np.float32)
    direction = 1 if rng.random() < 0.5 else -1
    path_x0 = gate_x - direction * 0.45 * w
    path_y0 = rng.uniform(0.45, 0.55) * h
    path_y1 = rng.uniform(0.75, 0.9) * h
    noise = _noise_bank(rng, h, w, rng.uniform(6, 10))
    rows = (np.arange(h) % 2 == 0)[:, None, None] * -6.0
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        u = f / max(n - 1, 1)
        img = scene.copy()
        x = path_x0 + direction * 0.45 * w * min(1.0, 1.6 * u)
        y = path_y0 + (path_y1 - path_y0) * max(0.0, (u - 0.5) * 2)
        s = 0.11 * h * (1 + 0.8 * max(0.0, u - 0.5))
        swing = 0.35 * s * np.sin(2 * np.pi * 1.8 * f / fps)
        body = (12, 12, 14)
        for sgn in (-1, 1):
            draw.capsule(img, x, y + 0.2 * s, x + sgn * swing, y + 1.1 * s, 0.12 * s, body)
        draw.capsule(img, x, y - 0.7 * s, x, y + 0.2 * s, 0.25 * s, body)
        draw.disc(img, x, y - 1.05 * s, 0.2 * s, body)
        img = img.mean(axis=2, keepdims=True) * tint + noise[f % len(noise)] + rows
        for k in range(6):
            level = 230 if (int(f / fps) + k) % 3 else 150
            draw.rect(img, 6 + k * 9, 6, 12 + k * 9, 14, (level, level, level))
        if (f // max(1, fps // 2)) % 2 == 0:
            draw.disc(img, w - 12, 10, 4, (230, 30, 30))
        frames[f] = draw.to_uint8(img)
    return frames


def render_product(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """Unboxing on a wooden desk: a box whose lid comes off, hands lifting a round smart thermostat out."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    wood = _jitter(rng, (150, 100, 62), 20)
    grain = np.sin(yy * rng.uniform(0.08, 0.14) + 6 * draw.smooth_noise(rng, h, w, 6))
    desk = wood * (0.85 + 0.1 * grain + 0.1 * draw.smooth_noise(rng, h, w, 20))[..., None]
    side = min(h, w)
    bx, by = w / 2 + rng.uniform(-0.08, 0.08) * w, rng.uniform(0.55, 0.65) * h
    bw, bh = rng.uniform(0.55, 0.7) * w, rng.uniform(0.3, 0.38) * h
    box_colour = _jitter(rng, (235, 235, 230), 10) if rng.random() < 0.5 else _jitter(rng, (190, 150, 100), 12)
    draw.rect(desk, bx - bw / 2 + 4, by - bh / 2 + 5, bx + bw / 2 + 4, by + bh / 2 + 5, (60, 40, 25), alpha=0.5)
    draw.rect(desk, bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2, box_colour)
    draw.rect(desk, bx - bw / 2 + 6, by - bh / 2 + 6, bx + bw / 2 - 6, by + bh / 2 - 6, box_colour * 0.55)
    r = rng.uniform(0.13, 0.17) * side
    accent = _jitter(rng, (255, 140, 30), 10) if rng.random() < 0.5 else _jitter(rng, (60, 160, 255), 10)
    skin = _jitter(rng, (215, 170, 140), 25)
    lid_dir = rng.choice([-1.0, 1.0])
    noise = _noise_bank(rng, h, w, 2.0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        u = f / max(n - 1, 1)
        img = desk.copy()
        lift = min(1.0, u * 2.5)
        lx = bx + lid_dir * lift * 0.9 * w
        ly = by - bh / 2 - lift * 0.25 * h
        rise = max(0.0, (u - 0.3) / 0.7)
        tx, ty = bx, by - rise * 0.3 * h
        draw.disc(img, tx + 3, ty + 4, r, (30, 25, 20), alpha=0.4)
        draw.disc(img, tx, ty, r, (195, 198, 205))
        draw.disc(img, tx, ty, 0.82 * r, (30, 32, 38))
        draw.ring(img, tx, ty, 0.6 * r, 0.68 * r, accent)
        for k in range(2):
            draw.rect(
                img,
                tx - 0.25 * r + k * 0.28 * r,
                ty - 0.18 * r,
                tx - 0.03 * r + k * 0.28 * r,
                ty + 0.18 * r,
                (240, 240, 240),
            )
        a = 2 * np.pi * u
        draw.disc(
            img, tx + 0.5 * r * np.cos(a), ty - 0.5 * r * np.abs(np.sin(a)), 0.12 * r, (255, 255, 255), alpha=0.35
        )
        if rise > 0:
            for sgn in (-1, 1):
                hx = tx + sgn * 1.25 * r
                draw.ellipse(img, hx, ty + 0.2 * r, 0.35 * r, 0.55 * r, skin)
                draw.capsule(img, hx + sgn * 0.2 * r, ty + 0.3 * r, hx + sgn * 0.9 * r, ty + 1.5 * r, 0.3 * r, skin)
        draw.rect(img, lx - bw / 2, ly - 0.05 * h, lx + bw / 2, ly + 0.05 * h, box_colour * 0.9)
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_welding(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """A welding arc crawling along a steel seam: blue-white glare, glowing bead, showers of orange sparks."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scene = draw.vertical_gradient(h, w, (22, 22, 26), (35, 33, 32))
    plate_top = rng.uniform(0.4, 0.55) * h
    brushed = draw.smooth_noise(rng, h, max(8, w // 40), 30)
    import cv2

    brushed = cv2.resize(brushed, (w, h), interpolation=cv2.INTER_LINEAR)
    plate = _jitter(rng, (70, 72, 78), 10) * (0.8 + 0.3 * brushed)[..., None]
    scene = np.where((yy >= plate_top)[..., None], plate, scene).astype(np.float32)
    seam_y0 = plate_top + rng.uniform(0.25, 0.5) * (h - plate_top)
    slope = rng.uniform(-0.15, 0.15)
    draw.capsule(scene, -5, seam_y0, w + 5, seam_y0 + slope * (w + 10), 1.5, (40, 40, 42))
    direction = 1 if rng.random() < 0.5 else -1
    x_start = 0.1 * w if direction > 0 else 0.9 * w
    speed = rng.uniform(0.25, 0.5) * w / (n / fps)
    n_sparks = int(rng.integers(250, 400))
    spawn = rng.uniform(-0.5, n / fps, n_sparks)
    ang = rng.uniform(-np.pi * 0.95, -np.pi * 0.05, n_sparks)
    vel = rng.uniform(60, 220, n_sparks)
    life = rng.uniform(0.2, 0.7, n_sparks)
    gravity = 260.0
    steps = np.linspace(0, 1, 6, dtype=np.float32)
    bead_hot = _jitter(rng, (255, 150, 50), 5)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        ax = x_start + direction * speed * t
        ay = seam_y0 + slope * (ax + 5)
        img = scene.copy()
        lo, hi = sorted((x_start, ax))
        if hi > lo + 1:
            band = (
                slice(max(0, int(ay - abs(slope) * w - 6)), min(h, int(ay + abs(slope) * w + 6))),
                slice(int(lo), int(hi)),
            )
            by, bx = yy[band], xx[band]
            d_seam = np.abs(by - (seam_y0 + slope * (bx + 5)))
            heat = np.exp(-np.abs(bx - ax) / (0.15 * w))
            cov = np.clip(3.0 - d_seam, 0, 1)[..., None]
            colour = heat[..., None] * bead_hot + (1 - heat[..., None]) * np.float32([70, 62, 55])
            img[band] += cov * (colour - img[band])
        flicker = rng.uniform(0.7, 1.0)
        img += np.float32(12 * flicker)  # the arc lights the whole shop
        draw.glow(img, ax, ay, 0.12 * w, (110, 140, 220), 0.7 * flicker)
        draw.glow(img, ax, ay, 0.03 * w, (255, 255, 255), 2.0 * flicker)
        draw.disc(img, ax, ay, 3.5, (255, 255, 255))
        draw.capsule(img, ax + 3 * direction, ay - 6, ax + 0.25 * w * direction, ay - 0.35 * h, 0.03 * w, (45, 45, 50))
        age = t - spawn
        live = (age > 0) & (age < life)
        if live.any():
            a = age[live][:, None] - steps[None, :] * 0.03
            a = np.maximum(a, 0)
            sx0 = x_start + direction * speed * spawn[live][:, None]
            sy0 = seam_y0 + slope * (sx0 + 5)
            px = sx0 + vel[live][:, None] * np.cos(ang[live])[:, None] * a
            py = sy0 + vel[live][:, None] * np.sin(ang[live])[:, None] * a + 0.5 * gravity * a * a
            fade = (1 - age[live] / life[live])[:, None] * np.ones_like(a)
            sparks = np.zeros((h, w, 3), np.float32)
            draw.points(sparks, px.ravel(), py.ravel(), (255, 180, 60), fade.ravel())
            img += cv2.GaussianBlur(sparks, (3, 3), 0.7) * 3.0
        frames[f] = draw.to_uint8(img)
    return frames


def render_underwater(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """ROV footage: murky blue-green water, a coated subsea pipeline with field joints scrolling by, marine snow."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    water_top = _jitter(rng, (25, 120, 135), 20)
    water_bottom = _jitter(rng, (8, 45, 65), 10)
    water = draw.vertical_gradient(h, w, water_top, water_bottom)
    water *= (0.85 + 0.3 * draw.smooth_noise(rng, h, w, 5))[..., None]
    bed_y = rng.uniform(0.68, 0.8) * h
    sand = (
        _jitter(rng, (120, 112, 80), 15)
        * (0.8 + 0.2 * np.sin(xx * 0.25 + 5 * draw.smooth_noise(rng, h, w, 7)))[..., None]
    )
    water = np.where((yy > bed_y)[..., None], 0.5 * sand + 0.5 * water, water).astype(np.float32)
    py = rng.uniform(0.45, 0.6) * h
    pr = rng.uniform(0.12, 0.18) * h
    coating = [(130, 130, 118), (200, 170, 50), (150, 95, 55)][int(rng.integers(0, 3))]
    coating = _jitter(rng, coating, 12)
    speed = rng.uniform(15, 40) * (1 if rng.random() < 0.5 else -1)
    period = rng.uniform(60, 110)
    growth_w = w + int(abs(speed) * n / fps) + 4
    growth = draw.smooth_noise(rng, h, growth_w, 30)
    r0, r1 = max(0, int(py - pr) - 1), min(h, int(py + pr) + 2)  # rows the pipe covers
    band_x = xx[r0:r1]
    rel = (yy[r0:r1] - py) / pr
    shade = np.sqrt(np.clip(1 - rel**2, 0, 1)) * (0.65 + 0.35 * (rel < 0))
    pipe_cov = np.clip((1 - np.abs(rel)) * pr, 0, 1)[..., None]
    n_snow = 160
    snow_x, snow_y = rng.uniform(0, w, n_snow), rng.uniform(0, h, n_snow)
    snow_v = rng.uniform(-6, 6, (n_snow, 2))
    light_x, light_y = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    tint = (water_top + water_bottom) / 2
    light = np.zeros((h, w, 3), np.float32)
    draw.glow(light, light_x, light_y, 0.3 * w, (90, 110, 100), 0.9)
    water = 0.7 * (water + light) + 0.3 * tint  # the ROV lamp, then the murk
    noise = _noise_bank(rng, h, w, 3.0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        offset = speed * t
        img = water.copy()
        joints = (np.abs(((band_x + offset) % period) - period / 2) < 3).astype(np.float32)
        g0 = int(abs(offset)) if speed > 0 else int(growth_w - w - abs(offset)) - 2
        g0 = int(np.clip(g0, 0, growth_w - w))
        moss = np.clip((growth[r0:r1, g0 : g0 + w] - 0.6) / 0.2, 0, 1)[..., None]
        pipe = coating * (0.3 + 0.8 * shade)[..., None]
        pipe = pipe * (1 - 0.35 * joints[..., None]) * (1 - 0.4 * moss) + moss * np.float32([24, 32, 16])
        pipe = 0.7 * (pipe + light[r0:r1]) + 0.3 * tint
        img[r0:r1] += pipe_cov * (pipe - img[r0:r1])
        draw.points(img, (snow_x + snow_v[:, 0] * t) % w, (snow_y + snow_v[:, 1] * t) % h, (200, 215, 210), 0.8)
        for k in range(4):
            draw.rect(img, 8 + k * 10, h - 16, 15 + k * 10, h - 9, (220, 230, 230))
        draw.rect(img, w / 2 - 8, h / 2 - 0.5, w / 2 + 8, h / 2 + 0.5, (220, 230, 230), alpha=0.6)
        draw.rect(img, w / 2 - 0.5, h / 2 - 8, w / 2 + 0.5, h / 2 + 8, (220, 230, 230), alpha=0.6)
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


@dataclass(frozen=True)
class Category:
    """One search category: its renderer and the label phrases a client would write.

    Attributes:
        name: Category name (the label record's ``category``).
        query: The main phrase (always among a clip's labels).
        paraphrases: Other phrases; each clip gets 2-3 of them.
        render: ``(rng, height, width, n_frames, fps) -> uint8 [T, H, W, 3]``.
    """

    name: str
    query: str
    paraphrases: tuple[str, ...]
    render: Renderer


CATEGORIES: tuple[Category, ...] = (
    Category(
        "medical",
        "laparoscopic cholecystectomy",
        (
            "gallbladder removal surgery",
            "minimally invasive abdominal surgery with endoscopic instruments",
            "keyhole surgery on the gallbladder",
            "laparoscope view of grasper and dissector on tissue",
            "surgical procedure inside the abdomen",
        ),
        render_medical,
    ),
    Category(
        "industrial_safety",
        "forklift near pedestrian walkway",
        (
            "warehouse forklift crossing a marked walkway",
            "lift truck driving close to workers",
            "industrial safety hazard in a warehouse aisle",
            "near miss between a forklift and a pedestrian",
            "hazard stripes beside a pedestrian lane",
        ),
        render_industrial,
    ),
    Category(
        "niche_sport",
        "curling stone delivery",
        (
            "curling stone sliding toward the house",
            "curler delivering a granite stone on the ice sheet",
            "sweepers brushing ahead of a curling stone",
            "curling match throw to the button",
            "overhead view of a curling sheet",
        ),
        render_curling,
    ),
    Category(
        "security",
        "person entering restricted area",
        (
            "intruder walking through the fence gate at night",
            "CCTV footage of unauthorized access",
            "surveillance camera sees a trespasser",
            "night security footage of a perimeter breach",
            "someone crossing into a no entry zone",
        ),
        render_security,
    ),
    Category(
        "custom_product",
        "smart thermostat unboxing",
        (
            "unboxing a round smart home thermostat",
            "product reveal of a wifi thermostat",
            "taking the thermostat out of its package",
            "hands lifting a smart thermostat from the box",
            "new home climate controller unboxed on a desk",
        ),
        render_product,
    ),
    Category(
        "welding",
        "welding sparks",
        (
            "arc welding a steel seam",
            "MIG welder throwing sparks in a workshop",
            "close-up of metal welding with a bright arc",
            "weld bead glowing on a steel plate",
            "fabrication shop welding footage",
        ),
        render_welding,
    ),
    Category(
        "underwater_inspection",
        "underwater pipeline inspection",
        (
            "ROV survey of a subsea pipeline",
            "subsea pipe inspection footage near the seabed",
            "remotely operated vehicle inspecting an offshore pipeline",
            "marine growth on a pipeline field joint",
            "diver camera view of an underwater pipe",
        ),
        render_underwater,
    ),
)

RESOLUTIONS: tuple[tuple[int, int], ...] = ((320, 240), (256, 256), (240, 320))  # (width, height)
FPS_CHOICES: tuple[int, ...] = (10, 12, 15)

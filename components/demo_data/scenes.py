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


def render_medical(
    rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "laparoscopy"
) -> np.ndarray:
    """Endoscope view: glossy tissue, metal instruments, round scope field.

    ``laparoscopy`` (the demo's): pink-red tissue, a greenish gallbladder, 2-3 instruments. The benchmark's near
    distractors: ``arthroscopy`` (pale cartilage-coloured tissue, one probe) and ``colonoscopy`` (ringed
    folds around a dark lumen, no instrument).
    """
    m = 24
    big_h, big_w = h + 2 * m, w + 2 * m
    t1, t2, t3 = (draw.smooth_noise(rng, big_h, big_w, c) for c in (5, 18, 9))
    base = _jitter(rng, {"laparoscopy": (196, 82, 88), "arthroscopy": (226, 206, 184)}.get(variant, (212, 118, 108)))
    tissue = base * (0.6 + 0.5 * t1 + 0.2 * t2)[..., None]
    if variant == "colonoscopy":
        ry, rx = np.mgrid[0:big_h, 0:big_w].astype(np.float32)
        folds = np.sin(np.hypot(rx - big_w / 2, ry - big_h / 2) * rng.uniform(0.12, 0.2) + 4 * t1)
        tissue *= (0.8 + 0.2 * folds)[..., None]
    vessels = np.clip(1 - np.abs(t3 - 0.5) / 0.025, 0, 1)[..., None]
    tissue += vessels * (np.array([120, 25, 35], np.float32) - tissue) * 0.8
    fat = np.clip((t1 - 0.72) / 0.1, 0, 1)[..., None]
    tissue += fat * (_jitter(rng, (225, 195, 120)) - tissue) * 0.7
    tissue += np.clip((t2 - 0.86) / 0.14, 0, 1)[..., None] * 110  # wet specular highlights
    if variant == "laparoscopy":
        gx, gy = rng.uniform(0.3, 0.7) * big_w, rng.uniform(0.3, 0.7) * big_h
        draw.ellipse(
            tissue, gx, gy, 0.22 * w, 0.13 * h, _jitter(rng, (120, 140, 78)), angle=rng.uniform(0, np.pi), alpha=0.8
        )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = 0.5 * min(h, w) * rng.uniform(1.0, 1.25)
    dist = np.hypot(xx - w / 2, yy - h / 2)
    scope = (np.clip(radius - dist, 0, 1) * np.clip(1.15 - 0.45 * dist / radius, 0, 1))[..., None]
    tools = []
    n_tools = {"laparoscopy": None, "arthroscopy": 1}.get(variant, 0)
    for _ in range(int(rng.integers(2, 4)) if n_tools is None else n_tools):
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
        if variant == "colonoscopy":
            lx, ly = w / 2 + 0.08 * w * np.sin(drift * t), h / 2 + 0.06 * h * np.cos(drift * t + phase_c)
            draw.glow(img, lx, ly, 0.12 * min(h, w), (-150, -90, -90), 1.0)
            draw.disc(img, lx, ly, 0.07 * min(h, w), (25, 8, 12))
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


def render_industrial(
    rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "walkway"
) -> np.ndarray:
    """Warehouse floor with racking.

    ``walkway`` (the demo's): a hazard-striped pedestrian walkway, a forklift driving past a walking person.
    The benchmark's near distractors: ``pallets`` (the forklift carries a loaded pallet; no walkway, nobody on
    foot) and ``conveyor`` (cardboard boxes riding a conveyor belt; no forklift).
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    floor = _jitter(rng, (138, 138, 132), 12) * (0.85 + 0.25 * draw.smooth_noise(rng, h, w, 8))[..., None]
    floor *= (0.9 + 0.1 * draw.smooth_noise(rng, h, w, 40))[..., None]
    stripe = max(4.0, 0.035 * h)
    if variant == "walkway":
        wy0 = rng.uniform(0.55, 0.68) * h
        wy1 = wy0 + rng.uniform(0.14, 0.2) * h
        walk = _jitter(rng, (70, 150, 85), 15)
        draw.rect(floor, -2, wy0, w + 2, wy1, walk)
        period = rng.uniform(14, 22)
        yellow = _jitter(rng, (235, 200, 30), 10)
        for band_y in (wy0 - stripe, wy1):
            band = (yy >= band_y) & (yy < band_y + stripe)
            yellow_part = band & (((xx + yy) % period) < period / 2)
            floor[band] = (25, 25, 25)
            floor[yellow_part] = yellow
    else:
        wy0 = wy1 = rng.uniform(0.75, 0.85) * h
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
    if variant == "walkway":
        ped_x0, ped_speed = rng.uniform(0.2, 0.8) * w, rng.uniform(12, 25) * (-direction)
        vest = _jitter(rng, (190, 240, 40), 20) if rng.random() < 0.5 else _jitter(rng, (250, 120, 20), 10)
    elif variant == "conveyor":
        belt_y0 = lane_y + 0.1 * body_h
        belt_y1 = belt_y0 + 0.9 * body_h
        gaps = rng.uniform(0.25, 0.45, 8) * w
        box_colours = [_jitter(rng, (185, 140, 90), 20) for _ in gaps]
    noise = _noise_bank(rng, h, w, 2.5)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        img = floor.copy()
        if variant == "walkway":
            px = ped_x0 + ped_speed * t
            py = (wy0 + wy1) / 2 + 2 * np.sin(2 * np.pi * 2 * t)
            draw.ellipse(img, px, py, 0.035 * w, 0.05 * h, vest)
            draw.disc(img, px, py - 0.055 * h, 0.025 * h, (235, 235, 235))
        elif variant == "conveyor":
            _conveyor(img, belt_y0, belt_y1, direction * 0.4 * speed * t, gaps, box_colours)
            frames[f] = draw.to_uint8(img + noise[f % len(noise)])
            continue
        x0 = start_x + direction * speed * t
        y0 = lane_y
        fork_x = x0 + body_w if direction > 0 else x0 - 0.35 * body_w
        for fy in (y0 + 0.2 * body_h, y0 + 0.7 * body_h):
            draw.rect(img, fork_x, fy, fork_x + 0.35 * body_w, fy + 0.1 * body_h, (45, 45, 50))
        if variant == "pallets":
            draw.rect(img, fork_x, y0 + 0.05 * body_h, fork_x + 0.35 * body_w, y0 + 0.95 * body_h, (150, 110, 60))
            for k in range(3):
                by = y0 + (0.1 + 0.28 * k) * body_h
                draw.rect(img, fork_x + 2, by, fork_x + 0.35 * body_w - 2, by + 0.22 * body_h, (195, 155, 100))
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


def _conveyor(img: np.ndarray, y0: float, y1: float, offset: float, gaps: np.ndarray, colours: list) -> None:
    """A conveyor belt band with rollers and cardboard boxes, shifted by ``offset`` pixels (wraps around)."""
    w = img.shape[1]
    draw.rect(img, -2, y0, w + 2, y1, (55, 57, 60))
    for x in np.arange(offset % 12 - 12, w + 12, 12):
        draw.rect(img, x, y0, x + 2, y1, (85, 88, 92))
    draw.rect(img, -2, y0 - 3, w + 2, y0, (160, 165, 170))
    draw.rect(img, -2, y1, w + 2, y1 + 3, (160, 165, 170))
    period = float(np.sum(gaps))
    pos = np.cumsum(gaps) - gaps[0]
    side = 0.75 * (y1 - y0)
    for x, colour in zip(pos, colours, strict=True):
        bx = (x + offset) % period - side
        if -side < bx < w:
            draw.rect(img, bx, y0 + 0.12 * (y1 - y0), bx + side, y0 + 0.12 * (y1 - y0) + side, colour)
            draw.rect(
                img,
                bx + 0.45 * side,
                y0 + 0.12 * (y1 - y0),
                bx + 0.55 * side,
                y0 + 0.12 * (y1 - y0) + side,
                (210, 190, 140),
            )


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


def render_ice_hockey(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """An ice rink from above (the benchmark's near distractor of curling): red and blue lines, face-off circles,
    skaters chasing a black puck."""
    ice = _jitter(rng, (228, 236, 244), 6) * (0.95 + 0.05 * draw.smooth_noise(rng, h, w, 12))[..., None]
    ice += rng.normal(0, 3.0, (h, w, 1)).astype(np.float32)
    draw.rect(ice, -2, 0.5 * h - 2, w + 2, 0.5 * h + 2, (200, 30, 40))
    for y in (0.3 * h, 0.7 * h):
        draw.rect(ice, -2, y - 3, w + 2, y + 3, (30, 70, 200))
    for cx, cy in ((0.28 * w, 0.15 * h), (0.72 * w, 0.15 * h), (0.28 * w, 0.85 * h), (0.72 * w, 0.85 * h)):
        draw.ring(ice, cx, cy, 0.11 * min(h, w), 0.12 * min(h, w), (200, 30, 40))
        draw.disc(ice, cx, cy, 3, (200, 30, 40))
    draw.ring(ice, w / 2, h / 2, 0.14 * min(h, w), 0.15 * min(h, w), (30, 70, 200))
    jerseys = [_jitter(rng, c, 20) for c in ((200, 30, 30), (30, 30, 160))]
    skaters = [
        (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-40, 40), rng.uniform(-40, 40), jerseys[k % 2])
        for k in range(int(rng.integers(4, 7)))
    ]
    puck0, puck_v = rng.uniform(0.3, 0.7, 2) * (w, h), rng.uniform(-90, 90, 2)
    noise = _noise_bank(rng, h, w, 2.0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        img = ice.copy()
        px, py = puck0[0] + puck_v[0] * t, puck0[1] + puck_v[1] * t
        px, py = w - abs(px % (2 * w) - w), h - abs(py % (2 * h) - h)  # bounces off the boards
        draw.disc(img, px, py, 0.015 * min(h, w) + 1, (15, 15, 15))
        for sx, sy, vx, vy, jersey in skaters:
            x, y = (sx + vx * t) % w, (sy + vy * t) % h
            draw.ellipse(img, x, y, 0.035 * w, 0.025 * h, jersey, angle=np.arctan2(vy, vx))
            draw.disc(img, x, y, 0.014 * min(h, w) + 1, (20, 20, 20))
            draw.capsule(img, x, y, x + 0.06 * w * np.cos(t), y + 0.06 * h, 1.2, (120, 80, 40))
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_bowling(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """A bowling lane seen from the foul line (the benchmark's near distractor of curling): oiled wood, gutters,
    arrows, a ball rolling into ten white pins."""
    xx = np.arange(w, dtype=np.float32)[None, :]
    lane_l, lane_r = rng.uniform(0.2, 0.28) * w, rng.uniform(0.72, 0.8) * w
    wood = _jitter(rng, (205, 160, 105), 12)
    boards = 0.9 + 0.1 * np.sin(xx * rng.uniform(0.6, 0.9))
    lane = wood * (boards * (0.9 + 0.15 * draw.smooth_noise(rng, h, w, 10)))[..., None]
    lane = np.where(((xx < lane_l) | (xx > lane_r))[..., None], np.float32([40, 40, 48]), lane).astype(np.float32)
    for k in range(5):
        ax = lane_l + (k + 1) / 6 * (lane_r - lane_l)
        draw.capsule(lane, ax, 0.62 * h, ax, 0.66 * h, 2.0, (90, 50, 30))
    pins = []
    for row in range(4):
        for k in range(row + 1):
            pins.append(((lane_l + lane_r) / 2 + (k - row / 2) * 0.06 * w, 0.08 * h + row * 0.045 * h))
    ball = _jitter(rng, [(30, 30, 140), (140, 20, 30), (20, 110, 60)][int(rng.integers(0, 3))], 20)
    bx0, bx1 = rng.uniform(lane_l + 10, lane_r - 10), (lane_l + lane_r) / 2 + rng.uniform(-0.05, 0.05) * w
    noise = _noise_bank(rng, h, w, 2.0)
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        u = f / max(n - 1, 1)
        img = lane.copy()
        by = h * (0.95 - 0.85 * u)
        hit = by < 0.3 * h
        for k, (px, py) in enumerate(pins):
            dx = (k % 3 - 1) * 0.05 * w * hit
            draw.disc(img, px + dx, py, 0.018 * w + 1, (245, 245, 245))
            draw.disc(img, px + dx, py, 0.006 * w + 1, (200, 30, 30))
        r = 0.045 * w * (0.6 + 0.4 * by / h)
        draw.disc(img, bx0 + (bx1 - bx0) * u, by, r, ball)
        draw.disc(img, bx0 + (bx1 - bx0) * u - 0.3 * r, by - 0.3 * r, 0.12 * r, (10, 10, 10))
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_security(rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "person") -> np.ndarray:
    """Night CCTV: noisy monochrome, a chain-link fence with a warning sign, something passing the gate.

    ``person`` (the demo's): a silhouette walking through the gate; ``vehicle`` (the benchmark's near distractor):
    a car with its headlights on driving through it.
    """
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
        if variant == "person":
            swing = 0.35 * s * np.sin(2 * np.pi * 1.8 * f / fps)
            body = (12, 12, 14)
            for sgn in (-1, 1):
                draw.capsule(img, x, y + 0.2 * s, x + sgn * swing, y + 1.1 * s, 0.12 * s, body)
            draw.capsule(img, x, y - 0.7 * s, x, y + 0.2 * s, 0.25 * s, body)
            draw.disc(img, x, y - 1.05 * s, 0.2 * s, body)
        else:
            draw.rect(img, x - 1.3 * s, y - 0.2 * s, x + 1.3 * s, y + 0.6 * s, (20, 20, 24))
            draw.rect(img, x - 0.8 * s, y - 0.6 * s, x + 0.8 * s, y - 0.2 * s, (28, 28, 32))
            for sgn in (-1, 1):
                draw.disc(img, x + sgn * 0.8 * s, y + 0.6 * s, 0.25 * s, (8, 8, 8))
                draw.glow(img, x + direction * 1.3 * s, y + sgn * 0.15 * s + 0.1 * s, 0.2 * s, (255, 255, 230), 2.0)
        img = img.mean(axis=2, keepdims=True) * tint + noise[f % len(noise)] + rows
        for k in range(6):
            level = 230 if (int(f / fps) + k) % 3 else 150
            draw.rect(img, 6 + k * 9, 6, 12 + k * 9, 14, (level, level, level))
        if (f // max(1, fps // 2)) % 2 == 0:
            draw.disc(img, w - 12, 10, 4, (230, 30, 30))
        frames[f] = draw.to_uint8(img)
    return frames


def render_traffic(rng: np.random.Generator, h: int, w: int, n: int, fps: int) -> np.ndarray:
    """Daytime traffic CCTV (the benchmark's near distractor of the night security camera): a road with lane
    markings and cars driving through, a timestamp overlay."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    grass = _jitter(rng, (90, 130, 70), 15) * (0.85 + 0.3 * draw.smooth_noise(rng, h, w, 8))[..., None]
    road_y0, road_y1 = rng.uniform(0.3, 0.4) * h, rng.uniform(0.7, 0.8) * h
    scene = np.where(((yy > road_y0) & (yy < road_y1))[..., None], np.float32([85, 85, 90]), grass)
    scene = scene.astype(np.float32)
    mid = (road_y0 + road_y1) / 2
    for x in np.arange(0, w, 28):
        draw.rect(scene, x, mid - 1.5, x + 14, mid + 1.5, (235, 235, 220))
    for y in (road_y0 + 3, road_y1 - 3):
        draw.rect(scene, -2, y - 1, w + 2, y + 1, (235, 235, 220))
    cars = [
        (
            rng.uniform(0, 1.5 * w),
            (road_y0 + mid) / 2 if k % 2 else (mid + road_y1) / 2,
            rng.uniform(40, 90) * (1 if k % 2 else -1),
            _jitter(rng, [(200, 30, 30), (230, 230, 230), (30, 60, 150), (40, 40, 40)][int(rng.integers(0, 4))], 20),
        )
        for k in range(int(rng.integers(2, 5)))
    ]
    noise = _noise_bank(rng, h, w, rng.uniform(3, 6))
    frames = np.empty((n, h, w, 3), np.uint8)
    for f in range(n):
        t = f / fps
        img = scene.copy()
        for x0, y, v, colour in cars:
            x = (x0 + v * t) % (1.5 * w) - 0.25 * w
            cl, ch = 0.1 * w, 0.07 * h
            draw.rect(img, x - cl, y - ch, x + cl, y + ch, colour)
            draw.rect(img, x - 0.4 * cl, y - 0.8 * ch, x + 0.4 * cl, y + 0.8 * ch, (60, 70, 80))
        for k in range(6):
            level = 230 if (int(t) + k) % 3 else 150
            draw.rect(img, 6 + k * 9, 6, 12 + k * 9, 14, (level, level, level))
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_product(
    rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "thermostat"
) -> np.ndarray:
    """Unboxing on a wooden desk: a box whose lid comes off, hands lifting the product out.

    ``thermostat`` (the demo's): a round smart thermostat. The benchmark's near distractors: ``phone`` (a
    smartphone) and ``headphones`` (over-ear headphones).
    """
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
        a = 2 * np.pi * u
        if variant == "thermostat":
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
            draw.disc(
                img, tx + 0.5 * r * np.cos(a), ty - 0.5 * r * np.abs(np.sin(a)), 0.12 * r, (255, 255, 255), alpha=0.35
            )
        elif variant == "phone":
            draw.rect(img, tx - 0.55 * r + 3, ty - r + 4, tx + 0.55 * r + 3, ty + r + 4, (30, 25, 20), alpha=0.4)
            draw.rect(img, tx - 0.55 * r, ty - r, tx + 0.55 * r, ty + r, (190, 192, 198))
            draw.rect(img, tx - 0.48 * r, ty - 0.9 * r, tx + 0.48 * r, ty + 0.9 * r, (20, 22, 30))
            draw.glow(img, tx, ty - 0.2 * r, 0.4 * r, accent * 0.6, 0.5 + 0.5 * np.sin(a))
            draw.disc(img, tx, ty - 0.8 * r, 0.05 * r, (80, 80, 90))
        else:  # headphones
            draw.ring(img, tx, ty, 0.85 * r, r, (40, 40, 45))
            for sgn in (-1, 1):
                draw.ellipse(img, tx + sgn * 0.92 * r, ty + 0.35 * r, 0.3 * r, 0.45 * r, (35, 35, 40))
                draw.ellipse(img, tx + sgn * 0.92 * r, ty + 0.35 * r, 0.18 * r, 0.32 * r, accent)
        if rise > 0:
            for sgn in (-1, 1):
                hx = tx + sgn * 1.25 * r
                draw.ellipse(img, hx, ty + 0.2 * r, 0.35 * r, 0.55 * r, skin)
                draw.capsule(img, hx + sgn * 0.2 * r, ty + 0.3 * r, hx + sgn * 0.9 * r, ty + 1.5 * r, 0.3 * r, skin)
        draw.rect(img, lx - bw / 2, ly - 0.05 * h, lx + bw / 2, ly + 0.05 * h, box_colour * 0.9)
        frames[f] = draw.to_uint8(img + noise[f % len(noise)])
    return frames


def render_welding(rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "arc") -> np.ndarray:
    """Hot metalwork crawling along a steel seam in a dark shop, with orange sparks.

    ``arc`` (the demo's): a welding arc with blue-white glare, a glowing bead and showers of sparks. The
    benchmark's near distractors: ``grinding`` (an angle-grinder disc throwing one long spark stream, no arc,
    no bead) and ``plasma`` (a small cyan plasma torch leaving a dark cut, sparks falling below the plate).
    """
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
    ang_range = {"arc": (-np.pi * 0.95, -np.pi * 0.05), "grinding": (-np.pi * 0.3, -np.pi * 0.05)}.get(
        variant, (np.pi * 0.35, np.pi * 0.65)
    )
    ang = rng.uniform(*ang_range, n_sparks)
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
            if variant == "plasma":
                colour = np.broadcast_to(np.float32([12, 10, 10]), colour.shape)
            if variant != "grinding":
                img[band] += cov * (colour - img[band])
        flicker = rng.uniform(0.7, 1.0)
        if variant == "arc":
            img += np.float32(12 * flicker)  # the arc lights the whole shop
            draw.glow(img, ax, ay, 0.12 * w, (110, 140, 220), 0.7 * flicker)
            draw.glow(img, ax, ay, 0.03 * w, (255, 255, 255), 2.0 * flicker)
            draw.disc(img, ax, ay, 3.5, (255, 255, 255))
        elif variant == "plasma":
            draw.glow(img, ax, ay, 0.04 * w, (90, 220, 255), 1.5 * flicker)
            draw.disc(img, ax, ay, 2.0, (230, 250, 255))
        if variant == "grinding":
            wheel = 0.09 * min(h, w)
            gx, gy = ax - direction * 0.6 * wheel, ay - 0.8 * wheel
            draw.disc(img, gx, gy, wheel, (70, 72, 78))
            draw.ring(img, gx, gy, 0.3 * wheel, 0.45 * wheel, (150, 150, 155))
            spin = 9.0 * t
            draw.capsule(img, gx, gy, gx + wheel * np.cos(spin), gy + wheel * np.sin(spin), 1.5, (120, 120, 125))
            draw.capsule(img, gx, gy, gx - direction * 0.3 * w, gy - 0.25 * h, 0.05 * w, (40, 90, 160))
            draw.glow(img, ax, ay, 0.02 * w, (255, 170, 60), 1.5 * flicker)
        else:
            draw.capsule(
                img, ax + 3 * direction, ay - 6, ax + 0.25 * w * direction, ay - 0.35 * h, 0.03 * w, (45, 45, 50)
            )
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


def render_underwater(
    rng: np.random.Generator, h: int, w: int, n: int, fps: int, variant: str = "pipeline"
) -> np.ndarray:
    """ROV footage: murky blue-green water, a structure scrolling by under the lamp, marine snow.

    ``pipeline`` (the demo's): a coated subsea pipeline with field joints. The benchmark's near distractors:
    ``hull`` (a ship's hull plating with weld seams, filling the upper frame) and ``coral`` (a reef of
    coloured coral heads on the seabed, no structure).
    """
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
    if variant == "hull":
        py, pr, coating = 0.0, rng.uniform(0.45, 0.6) * h, _jitter(rng, (110, 45, 35), 12)
    elif variant == "coral":
        heads = [
            (rng.uniform(0, 2 * w), rng.uniform(0.7, 0.95) * h, rng.uniform(0.04, 0.1) * h, _jitter(rng, c, 30))
            for c in [(230, 120, 90), (200, 80, 160), (240, 200, 80), (120, 200, 150)] * 4
        ]
    speed = rng.uniform(15, 40) * (1 if rng.random() < 0.5 else -1)
    period = rng.uniform(60, 110)
    growth_w = w + int(abs(speed) * n / fps) + 4
    growth = draw.smooth_noise(rng, h, growth_w, 30)
    r0, r1 = max(0, int(py - pr) - 1), min(h, int(py + pr) + 2)  # rows the pipe covers
    band_x = xx[r0:r1]
    rel = (yy[r0:r1] - py) / pr
    shade = np.sqrt(np.clip(1 - rel**2, 0, 1)) * (0.65 + 0.35 * (rel < 0))
    if variant == "hull":
        shade = np.clip(0.9 - 0.4 * rel, 0.3, 1.0)
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
        if variant == "coral":
            for cx, cy, cr, colour in heads:
                x = (cx - 0.6 * offset) % (2 * w) - 0.5 * w
                draw.disc(img, x, cy, cr, 0.6 * colour + 0.4 * tint)
                draw.disc(img, x + 0.3 * cr, cy - 0.4 * cr, 0.5 * cr, 0.7 * colour + 0.3 * tint)
        else:
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

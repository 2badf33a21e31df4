"""demo_data: a small, deterministic client library that exercises the whole monthly run.

The library is a local folder laid out like a client's bucket (``videos/*.mp4`` and one label file
``labels/records.jsonl``) plus, outside it, ``truth.jsonl``: what the generator knows about every file (face
boxes and mouth centres per frame, which face speaks, how a fake was made, why a file is broken) for tests.

Contents (default counts in :class:`DemoConfig`):

- search clips in seven visually distinct client categories (:mod:`components.demo_data.scenes`), several
  resolutions, 10-15 fps, 2-4 s, each with 3-4 descriptive labels;
- talking heads made from scikit-image's astronaut face (:mod:`components.demo_data.faces`) at 25 fps with
  AAC speech: real (mouth follows the clip's own speech), fake (mouth follows the speech shifted by
  0.3-0.8 s, or another clip's speech), two-face clips where one face speaks, and face-free clips with speech;
  one real clip hides the face behind a box for a few frames;
- broken uploads with label records: an empty file, a truncated mp4, a text file named ``.mp4``, an
  audio-only mp4, a talking head without audio, and an exact duplicate of a valid clip.

Upload times spread over ``span_days`` before ``as_of``; about ``in_window_fraction`` of the valid clips
(per category and kind) and all broken uploads fall in the last ``window_days`` days. Each file's mtime is
set to its upload time. Everything random comes from ``seed`` (and the counts), so two runs with the same
``(seed, as_of)`` write byte-identical files (x264 runs single-threaded; PyAV writes no creation time).

Why this file is long: the plan of the library and the renderers of its kinds of clips
share the seeded random streams that make two runs byte-identical; the drawing primitives, faces, scenes, speech
and media writing are in their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from components.demo_data.config import DemoConfig

__all__ = ["DemoConfig", "DemoSummary", "generate_demo_data", "write_library"]

logger = logging.getLogger("clipsync.demo_data")

RECORDS_KEY = "labels/records.jsonl"
TRUTH_FILE = "truth.jsonl"

TALKING_LABELS = (
    "news anchor talking to camera",
    "presenter speaking directly to the camera",
    "woman giving a video statement",
    "talking head interview shot",
    "spokesperson addressing the viewer",
)
INTERVIEW_LABELS = (
    "two-person interview on camera",
    "two people on screen, one of them speaking",
    "side by side video call with two participants",
    "panel discussion with two guests",
)
VOICEOVER_LABELS = (
    "narrated background footage",
    "voice-over with no person on screen",
    "spoken commentary over an abstract backdrop",
    "audio narration over textured b-roll",
)
NOT_MEDIA_TEXT = (
    "Meeting notes - Q4 video library\n"
    "- upload the new surgery clips before Friday\n"
    "- ask IT why the exporter saves .txt as .mp4\n"
)

# Seed streams (the second entry of each SeedSequence), so kinds never share random numbers.
_S_PLAN, _S_SEARCH, _S_TALK, _S_ENV, _S_TWO, _S_NOFACE, _S_BROKEN = range(7)


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_data` wrote.

    Attributes:
        bucket_dir: The client's bucket folder (``videos/``, ``labels/records.jsonl``).
        truth_path: ``truth.jsonl`` with one row per label record.
        videos: Label records written (every file under ``videos/``, broken ones included).
        broken: Broken uploads among them (empty, truncated, not media, audio-only, no audio, duplicate).
        categories: Sorted distinct categories of the label records.
        as_of: The resolved run date (ISO).
        records_path: The label file.
        kinds: Count of records per truth ``kind``.
        in_window: Records uploaded in the last ``window_days`` days before ``as_of``.
        seconds: Wall time of the generation.
    """

    bucket_dir: Path
    truth_path: Path
    videos: int
    broken: int
    categories: list[str]
    as_of: str
    records_path: Path = Path()
    kinds: dict[str, int] = field(default_factory=dict)
    in_window: int = 0
    seconds: float = 0.0


@dataclass
class _Job:
    """One file to write: what it is, its label record, and the parameters its renderer needs."""

    kind: str
    category: str
    labels: list[str]
    authenticity: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    timestamp: str = ""
    force_in_window: bool = False
    group: str = ""


def _rng(config: DemoConfig, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, index])


def _pick_labels(rng: np.random.Generator, query: str, pool: tuple[str, ...]) -> list[str]:
    k = int(rng.integers(2, 4))
    chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [query, *(pool[int(i)] for i in sorted(chosen))]


# ----------------------------------------------------------------------------------------------- plan


def _plan(config: DemoConfig) -> list[_Job]:
    from components.demo_data.scenes import CATEGORIES

    rng = _rng(config, _S_PLAN, 0)
    jobs: list[_Job] = []
    for c, cat in enumerate(CATEGORIES):
        for i in range(config.clips_per_category):
            labels = _pick_labels(rng, cat.query, cat.paraphrases)
            jobs.append(_Job("search", cat.name, labels, params={"category": c, "index": i}, group=cat.name))

    def talking_labels() -> list[str]:
        return _pick_labels(rng, TALKING_LABELS[0], TALKING_LABELS[1:])

    reals = []
    for i in range(config.talking_real):
        occluded = i == 0 and config.occlusion_frames > 0
        job = _Job(
            "talking_head",
            "talking_head",
            talking_labels(),
            "real",
            {"env": ["real", i], "index": i, "occluded": occluded},
            group="real",
        )
        reals.append(job)
        jobs.append(job)
    for j in range(config.talking_fake):
        params: dict[str, Any] = {"env": ["fake", j], "index": config.talking_real + j}
        if j % 2 == 0:
            low, high = config.fake_shift_s
            params["fake_kind"] = "shifted"
            params["shift_s"] = round(float(rng.uniform(low, high)) * (1 if rng.random() < 0.5 else -1), 3)
        else:
            params["fake_kind"] = "other_audio"
            if reals:
                source = reals[(j // 2) % len(reals)]
                params["mouth_env"] = source.params["env"]
                params["other_job"] = source
            else:
                params["mouth_env"] = ["other", j]
        jobs.append(_Job("talking_head", "talking_head", talking_labels(), "fake", params, group="fake"))
    for k in range(config.two_face):
        labels = _pick_labels(rng, INTERVIEW_LABELS[0], INTERVIEW_LABELS[1:])
        jobs.append(_Job("two_face", "interview", labels, "real", {"env": ["two", k], "index": k}, group="two"))
    for k in range(config.no_face):
        labels = _pick_labels(rng, VOICEOVER_LABELS[0], VOICEOVER_LABELS[1:])
        jobs.append(_Job("no_face", "voiceover", labels, "real", {"env": ["none", k], "index": k}, group="none"))

    if config.broken:
        n_cat = len(CATEGORIES)

        def search_labels(c: int) -> list[str]:
            return _pick_labels(rng, CATEGORIES[c].query, CATEGORIES[c].paraphrases)

        c_empty, c_trunc, c_text = (int(x) for x in rng.integers(0, n_cat, 3))
        broken = [
            _Job("broken", CATEGORIES[c_empty].name, search_labels(c_empty), params={"broken_kind": "empty"}),
            _Job(
                "broken",
                CATEGORIES[c_trunc].name,
                search_labels(c_trunc),
                params={"broken_kind": "truncated", "category": c_trunc},
            ),
            _Job("broken", CATEGORIES[c_text].name, search_labels(c_text), params={"broken_kind": "not_media"}),
            _Job("broken", "talking_head", talking_labels(), params={"broken_kind": "audio_only", "env": ["audio", 0]}),
            _Job(
                "broken",
                "talking_head",
                talking_labels(),
                "real",
                {"broken_kind": "no_audio", "env": ["noaudio", 0]},
            ),
        ]
        search_jobs = [j for j in jobs if j.kind == "search"]
        if search_jobs:
            source = search_jobs[int(rng.integers(0, len(search_jobs)))]
            source.force_in_window = True
            broken.append(
                _Job(
                    "broken",
                    source.category,
                    list(source.labels),
                    params={"broken_kind": "duplicate", "source": source},
                )
            )
        for job in broken:
            job.force_in_window = True
            job.group = "broken"
        jobs.extend(broken)

    _name_and_date(jobs, config, rng)
    return jobs


def _name_and_date(jobs: list[_Job], config: Any, rng: np.random.Generator) -> None:
    """Give the jobs their file names (a random order) and upload times."""
    order = rng.permutation(len(jobs))
    width = max(3, len(str(len(jobs))))
    for number, k in enumerate(order, start=1):
        jobs[int(k)].name = f"videos/clip_{number:0{width}d}.mp4"
    _assign_timestamps(jobs, config, rng)


def _as_of_date(config: Any) -> date:
    return date.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC).date()


def _assign_timestamps(jobs: list[_Job], config: Any, rng: np.random.Generator) -> None:
    end = datetime.combine(_as_of_date(config), datetime.min.time(), tzinfo=UTC)
    window = config.window_days * 86400.0
    span = config.span_days * 86400.0

    def inside() -> float:
        return float(rng.uniform(3600.0, window - 43200.0))

    def outside() -> float:
        return float(rng.uniform(window + 86400.0, span))

    groups: dict[str, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    ages: dict[int, float] = {}
    # Error diffusion over the groups: small groups still add up to the wanted share overall.
    seen = placed = 0
    for members in groups.values():
        free = [j for j in members if not j.force_in_window]
        forced = [j for j in members if j.force_in_window]
        seen += len(members)
        quota = min(len(members), max(len(forced), math.floor(config.in_window_fraction * seen + 0.5) - placed))
        placed += quota
        n_in = quota - len(forced)
        picks = set(rng.permutation(len(free))[:n_in].tolist())
        for j in forced:
            ages[id(j)] = float(rng.uniform(min(3 * 86400.0, 0.1 * window), min(20 * 86400.0, window - 43200.0)))
        for i, j in enumerate(free):
            ages[id(j)] = inside() if i in picks else outside()
    for job in jobs:
        if job.params.get("broken_kind") == "duplicate":
            # The copy is uploaded a little after the original.
            ages[id(job)] = max(3600.0, ages[id(job.params["source"])] - float(rng.uniform(3600.0, 2 * 86400.0)))
        stamp = end - timedelta(seconds=round(ages[id(job)]))
        job.timestamp = stamp.isoformat()


# ---------------------------------------------------------------------------------------------- render


def _null_truth() -> dict[str, Any]:
    return {"fps": 0.0, "n_frames": 0, "width": 0, "height": 0, "faces": [], "has_audio": False}


def _render_search(
    config: Any, c: int, rng: np.random.Generator, path: Path, categories: tuple | None = None
) -> dict[str, Any]:
    from components.demo_data.media import write_mp4
    from components.demo_data.scenes import CATEGORIES, FPS_CHOICES, RESOLUTIONS

    category = (categories or CATEGORIES)[c]
    width, height = RESOLUTIONS[int(rng.integers(0, len(RESOLUTIONS)))]
    fps = int(FPS_CHOICES[int(rng.integers(0, len(FPS_CHOICES)))])
    duration = float(rng.uniform(2.0, 4.0))
    n = max(2, round(duration * fps))
    frames = category.render(rng, height, width, n, fps)
    write_mp4(path, frames, fps, crf=config.crf, preset=config.preset)
    return {
        "fps": float(fps),
        "n_frames": n,
        "width": width,
        "height": height,
        "faces": [],
        "has_audio": False,
        "transform": {"scene": category.name},
    }


def _syllables(config: Any, env_key: list) -> np.ndarray:
    from components.demo_data.speech import syllables

    # The key's text part is hashed stably (not with hash(), which is salted per process).
    tag = int.from_bytes(str(env_key[0]).encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([config.seed, _S_ENV, tag, int(env_key[1])])
    return syllables(rng, -1.5, config.talking_duration_s + 1.5)


def _single_pose(rng: np.random.Generator, size: int):
    from components.demo_data.faces import FacePose

    face_px = float(rng.uniform(0.3, 0.45)) * size
    wobble_px = float(rng.uniform(1.0, 0.03 * size))
    margin = 0.75 * face_px + wobble_px
    squeeze = float(rng.uniform(0.6, 0.85)) if rng.random() < 0.3 else 1.0
    return FacePose(
        cx=float(rng.uniform(margin, size - margin)),
        cy=float(rng.uniform(margin, size - margin)),
        face_px=face_px,
        angle_deg=float(rng.uniform(-30.0, 30.0)),
        flip=bool(rng.random() < 0.5),
        squeeze=squeeze,
        squeeze_right=bool(rng.random() < 0.5),
        wobble_px=wobble_px,
        wobble_deg=float(rng.uniform(0.0, 3.0)),
        wobble_hz=float(rng.uniform(0.2, 0.5)),
        wobble_phase=float(rng.uniform(0, 2 * np.pi)),
        gain=tuple(float(g) for g in rng.uniform(0.85, 1.1, 3)),
    )


def _pose_dict(pose) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(pose).items()}


def _face_truth(pose, n: int, fps: float, size: tuple[int, int], speaking: bool, index: int, hidden=()) -> dict:
    w, h = size
    boxes, mouths, eyes = [], [], []
    for f in range(n):
        if f in hidden:
            boxes.append(None)
            mouths.append(None)
            eyes.append(None)
            continue
        tr = pose.truth(f / fps)
        x0, y0, x1, y1 = tr["box"]
        boxes.append([round(max(0.0, x0), 2), round(max(0.0, y0), 2), round(min(w, x1), 2), round(min(h, y1), 2)])
        mouths.append([round(v, 2) for v in tr["mouth"]])
        eyes.append([[round(v, 2) for v in p] for p in tr["eyes"]])
    return {"face_index": index, "speaking": speaking, "boxes": boxes, "mouth_centers": mouths, "eyes": eyes}


def _render_talking(config: DemoConfig, params: dict, rng: np.random.Generator, path: Path, audio: bool) -> dict:
    from components.demo_data import draw
    from components.demo_data.faces import FaceSprite, studio_background
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import frame_envelope, speech_audio

    size, fps = config.size, config.talking_fps
    n = round(config.talking_duration_s * fps)
    syl = _syllables(config, params["env"])
    shift = float(params.get("shift_s", 0.0))
    mouth_syl = _syllables(config, params["mouth_env"]) if "mouth_env" in params else syl
    opening = frame_envelope(mouth_syl, n, fps, shift)
    pose = _single_pose(rng, size)
    bg = studio_background(rng, size, size)
    noise = rng.normal(0.0, 1.5, (4, size, size, 1)).astype(np.float32)
    hidden: list[int] = []
    occluder = None
    if params.get("occluded"):
        start = int(rng.integers(n // 4, n // 2))
        hidden = list(range(start, start + config.occlusion_frames))
        occluder = rng.uniform(60, 200, 3)
    sprite = FaceSprite(pose)
    frames = np.empty((n, size, size, 3), np.uint8)
    for f in range(n):
        img = bg + noise[f % len(noise)]
        sprite.paint(img, float(opening[f]), f / fps)
        if f in hidden:
            x0, y0, x1, y1 = pose.truth(f / fps)["box"]
            pad = 0.3 * (x1 - x0)
            draw.rect(img, x0 - pad, y0 - pad, x1 + pad, y1 + pad, occluder)
        frames[f] = draw.to_uint8(img)
    sound = speech_audio(syl, config.talking_duration_s, config.sample_rate, rng) if audio else None
    write_mp4(path, frames, fps, sound, config.sample_rate, crf=config.crf, preset=config.preset)
    transform = {"pose": _pose_dict(pose), "occluded_frames": hidden}
    if "other_audio_of" in params:
        transform["other_audio_of"] = params["other_audio_of"]
    return {
        "fps": float(fps),
        "n_frames": n,
        "width": size,
        "height": size,
        "faces": [_face_truth(pose, n, fps, (size, size), True, 0, set(hidden))],
        "has_audio": audio,
        "av_offset_s": shift,
        "fake_kind": params.get("fake_kind", ""),
        "mouth_opening": [round(float(v), 4) for v in opening],
        "transform": transform,
    }


def _render_two_face(config: DemoConfig, params: dict, rng: np.random.Generator, path: Path) -> dict:
    from components.demo_data import draw
    from components.demo_data.faces import FacePose, FaceSprite, studio_background
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import frame_envelope, speech_audio

    size, fps = config.size, config.talking_fps
    n = round(config.talking_duration_s * fps)
    syl = _syllables(config, params["env"])
    speaker = int(rng.integers(0, 2))
    quiet_mode = "closed" if rng.random() < 0.5 else "slight"
    quiet_syl = _syllables(config, ["quiet", params["index"]])
    openings = [frame_envelope(syl, n, fps), frame_envelope(quiet_syl, n, fps) * 0.15]
    if quiet_mode == "closed":
        openings[1] = np.full(n, 0.02)
    left_flip = bool(rng.random() < 0.5)
    poses = []
    for side, cx_range in enumerate(((0.24, 0.3), (0.7, 0.76))):
        gain = rng.uniform(0.85, 1.1, 3) if side == 0 else rng.uniform(0.6, 0.8, 3) * np.array([1.15, 1.0, 0.9])
        poses.append(
            FacePose(
                cx=float(rng.uniform(*cx_range)) * size,
                cy=float(rng.uniform(0.42, 0.58)) * size,
                face_px=float(rng.uniform(0.22, 0.3)) * size,
                angle_deg=float(rng.uniform(-12.0, 12.0)),
                flip=left_flip if side == 0 else not left_flip,
                wobble_px=float(rng.uniform(1.0, 0.015 * size)),
                wobble_deg=float(rng.uniform(0.0, 2.0)),
                wobble_hz=float(rng.uniform(0.2, 0.5)),
                wobble_phase=float(rng.uniform(0, 2 * np.pi)),
                gain=tuple(float(g) for g in gain),
            )
        )
    # Face 0 is on the left; the speaker gets the speech envelope, the other the quiet one.
    face_open = [openings[0] if i == speaker else openings[1] for i in range(2)]
    bg = studio_background(rng, size, size)
    noise = rng.normal(0.0, 1.5, (4, size, size, 1)).astype(np.float32)
    sprites = [FaceSprite(pose) for pose in poses]
    frames = np.empty((n, size, size, 3), np.uint8)
    for f in range(n):
        img = bg + noise[f % len(noise)]
        for i, sprite in enumerate(sprites):
            sprite.paint(img, float(face_open[i][f]), f / fps)
        frames[f] = draw.to_uint8(img)
    sound = speech_audio(syl, config.talking_duration_s, config.sample_rate, rng)
    write_mp4(path, frames, fps, sound, config.sample_rate, crf=config.crf, preset=config.preset)
    return {
        "fps": float(fps),
        "n_frames": n,
        "width": size,
        "height": size,
        "faces": [_face_truth(p, n, fps, (size, size), i == speaker, i) for i, p in enumerate(poses)],
        "has_audio": True,
        "mouth_opening": [round(float(v), 4) for v in face_open[speaker]],
        "transform": {"poses": [_pose_dict(p) for p in poses], "speaker": speaker, "quiet_mode": quiet_mode},
    }


def _render_no_face(config: DemoConfig, params: dict, rng: np.random.Generator, path: Path) -> dict:
    from components.demo_data import draw
    from components.demo_data.faces import textured_background
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import speech_audio

    size, fps = config.size, config.talking_fps
    n = round(config.talking_duration_s * fps)
    pad = 32
    big = textured_background(rng, size + pad, size + pad)
    vx, vy = rng.uniform(-1, 1, 2) * pad / max(n - 1, 1)
    frames = np.empty((n, size, size, 3), np.uint8)
    for f in range(n):
        ox = int(np.clip(pad / 2 + vx * f, 0, pad))
        oy = int(np.clip(pad / 2 + vy * f, 0, pad))
        frames[f] = draw.to_uint8(big[oy : oy + size, ox : ox + size])
    sound = speech_audio(_syllables(config, params["env"]), config.talking_duration_s, config.sample_rate, rng)
    write_mp4(path, frames, fps, sound, config.sample_rate, crf=config.crf, preset=config.preset)
    return {"fps": float(fps), "n_frames": n, "width": size, "height": size, "faces": [], "has_audio": True}


def _render_broken(config: DemoConfig, params: dict, rng: np.random.Generator, path: Path) -> dict:
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import speech_audio

    kind = params["broken_kind"]
    truth = _null_truth()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_media":
        path.write_text(NOT_MEDIA_TEXT, encoding="utf-8")
    elif kind == "truncated":
        full = path.with_suffix(".full.tmp")
        inner = _render_search(config, params["category"], rng, full)
        data = full.read_bytes()
        full.unlink()
        keep = int(len(data) * 0.4)
        path.write_bytes(data[:keep])
        truth["transform"] = {"full_bytes": len(data), "kept_bytes": keep, "scene": inner["transform"]["scene"]}
    elif kind == "audio_only":
        sound = speech_audio(_syllables(config, params["env"]), config.talking_duration_s, config.sample_rate, rng)
        write_mp4(path, None, config.talking_fps, sound, config.sample_rate)
        truth["has_audio"] = True
    elif kind == "no_audio":
        truth = _render_talking(config, params, rng, path, audio=False)
    else:  # pragma: no cover - the plan only makes the kinds above
        raise ValueError(f"unknown broken kind {kind!r}")
    return truth


def _render_job(config: DemoConfig, bucket: str, kind: str, params: dict, index: int) -> dict[str, Any]:
    path = Path(bucket) / params["name"]
    if kind == "search":
        return _render_search(config, params["category"], _rng(config, _S_SEARCH, index), path)
    if kind == "talking_head":
        return _render_talking(config, params, _rng(config, _S_TALK, index), path, audio=True)
    if kind == "two_face":
        return _render_two_face(config, params, _rng(config, _S_TWO, index), path)
    if kind == "no_face":
        return _render_no_face(config, params, _rng(config, _S_NOFACE, index), path)
    return _render_broken(config, params, _rng(config, _S_BROKEN, index), path)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # the workers already fill the cores; OpenCV's own threads would only contend


# ------------------------------------------------------------------------------------------------ main


def generate_demo_data(bucket_dir: Path, truth_dir: Path, config: DemoConfig) -> DemoSummary:
    """Write the demo client library into ``bucket_dir`` and its ground truth into ``truth_dir``.

    A folder that already holds a demo library is regenerated: files ``videos/clip_*.mp4`` that are not
    part of the new library are removed, other files are left alone.

    Args:
        bucket_dir: The client's bucket folder (created): ``videos/`` and ``labels/records.jsonl``.
        truth_dir: Where ``truth.jsonl`` goes (created); keep it outside the bucket.
        config: What to generate.

    Returns:
        A summary with counts and paths.

    Raises:
        ValueError: If ``truth_dir`` lies inside ``bucket_dir`` (the pipeline must not see the truth).
    """
    return write_library(bucket_dir, truth_dir, config, _plan, _render_job)


def _render_all(config: Any, bucket_dir: Path, tasks: list, render: Callable) -> dict[int, dict[str, Any]]:
    """Render every task, in a process pool when ``config.workers > 1``, logging progress about every 10 %."""
    started = time.perf_counter()
    step = max(1, len(tasks) // 10)
    results: dict[int, dict[str, Any]] = {}

    def done(index: int, truth: dict[str, Any]) -> None:
        results[index] = truth
        if len(results) % step == 0 or len(results) == len(tasks):
            elapsed = time.perf_counter() - started
            logger.info("rendered %d/%d files (%.0f s)", len(results), len(tasks), elapsed)

    if config.workers > 1:
        # Spawned, not forked: a fork of a process that already runs OpenCV/FFmpeg threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {
                pool.submit(render, config, str(bucket_dir), kind, params, index): index
                for index, kind, params in tasks
            }
            for future in as_completed(futures):
                done(futures[future], future.result())
    else:
        for index, kind, params in tasks:
            done(index, render(config, str(bucket_dir), kind, params, index))
    return results


def write_library(
    bucket_dir: Path,
    truth_dir: Path,
    config: Any,
    plan: Callable[[Any], list[_Job]],
    render: Callable[..., dict[str, Any]],
) -> DemoSummary:
    """Plan, render and write a library (the demo's or the benchmark's); see :func:`generate_demo_data`.

    Args:
        bucket_dir: The client's bucket folder.
        truth_dir: Where ``truth.jsonl`` goes.
        config: A :class:`DemoConfig` or :class:`~components.demo_data.config.BenchmarkConfig`.
        plan: ``plan(config) -> jobs`` (names and upload times set).
        render: ``render(config, bucket_dir, kind, params, index) -> truth``, a module-level function (the
            pool pickles it); a ``benchmark`` dict in the truth is merged into the file's truth row.

    Returns:
        The summary.
    """
    started = time.perf_counter()
    bucket_dir, truth_dir = Path(bucket_dir).resolve(), Path(truth_dir).resolve()
    if truth_dir == bucket_dir or bucket_dir in truth_dir.parents:
        raise ValueError(f"truth_dir {truth_dir} must not lie inside the bucket {bucket_dir}")
    as_of = _as_of_date(config).isoformat()
    if not config.as_of:
        config = dataclasses.replace(config, as_of=as_of)
    jobs = plan(config)
    (bucket_dir / "videos").mkdir(parents=True, exist_ok=True)
    (bucket_dir / "labels").mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    names = {job.name for job in jobs}
    for stale in sorted((bucket_dir / "videos").glob("clip_*.mp4")):
        if f"videos/{stale.name}" not in names:
            logger.info("removing %s (not part of the regenerated library)", stale)
            stale.unlink()

    for job in jobs:
        if "other_job" in job.params:
            job.params["other_audio_of"] = job.params.pop("other_job").name
    tasks = []
    for index, job in enumerate(jobs):
        if job.params.get("broken_kind") == "duplicate":
            continue
        params = {k: v for k, v in job.params.items() if k != "source"}
        params["name"] = job.name
        tasks.append((index, job.kind, params))
    logger.info("rendering %d files into %s with %d worker(s)", len(jobs), bucket_dir, config.workers)
    results = _render_all(config, bucket_dir, tasks, render)

    records, truths = [], []
    window_start = datetime.fromisoformat(as_of).replace(tzinfo=UTC) - timedelta(days=config.window_days)
    for index, job in enumerate(jobs):
        path = bucket_dir / job.name
        if job.params.get("broken_kind") == "duplicate":
            source = job.params["source"]
            path.write_bytes((bucket_dir / source.name).read_bytes())
            truth = dict(results[jobs.index(source)])
            truth["transform"] = {**truth.get("transform", {}), "duplicate_of": source.name}
        else:
            truth = results[index]
        stamp = datetime.fromisoformat(job.timestamp)
        os.utime(path, (stamp.timestamp(), stamp.timestamp()))
        record: dict[str, Any] = {
            "video_path": job.name,
            "labels": job.labels,
            "category": job.category,
            "timestamp": job.timestamp,
        }
        if job.authenticity:
            record["authenticity"] = job.authenticity
        if job.params.get("fake_type"):  # the benchmark's fakes (the demo's records stay as they were)
            record["fake_type"] = job.params["fake_type"]
        records.append(record)
        truth_row = {
            "video_path": job.name,
            "kind": job.kind,
            "fps": truth["fps"],
            "n_frames": truth["n_frames"],
            "width": truth["width"],
            "height": truth["height"],
            "faces": truth["faces"],
            "av_offset_s": float(truth.get("av_offset_s", 0.0)),
            "fake_kind": truth.get("fake_kind", ""),
            "broken_kind": job.params.get("broken_kind", ""),
            "transform": truth.get("transform", {}),
            "has_audio": truth["has_audio"],
            "sample_rate": config.sample_rate if truth["has_audio"] else 0,
            "mouth_opening": truth.get("mouth_opening", []),
            "category": job.category,
            "labels": job.labels,
            "authenticity": job.authenticity,
            "timestamp": job.timestamp,
            "in_window": stamp >= window_start,
            **truth.get("benchmark", {}),
        }
        truths.append(truth_row)

    records.sort(key=lambda r: r["video_path"])
    truths.sort(key=lambda r: r["video_path"])
    records_path = bucket_dir / RECORDS_KEY
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    truth_path = truth_dir / TRUTH_FILE
    truth_path.write_text("".join(json.dumps(r) + "\n" for r in truths), encoding="utf-8")
    kinds: dict[str, int] = {}
    for row in truths:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    summary = DemoSummary(
        bucket_dir=bucket_dir,
        truth_path=truth_path,
        videos=len(records),
        broken=kinds.get("broken", 0),
        categories=sorted({r["category"] for r in records}),
        as_of=as_of,
        records_path=records_path,
        kinds=kinds,
        in_window=sum(row["in_window"] for row in truths),
        seconds=round(time.perf_counter() - started, 2),
    )
    logger.info(
        "library: %d files (%d broken), %d in the %d-day window, %.1f s",
        summary.videos,
        summary.broken,
        summary.in_window,
        config.window_days,
        summary.seconds,
    )
    return summary

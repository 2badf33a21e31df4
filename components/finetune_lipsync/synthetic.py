"""Synthetic talking mouths for tests and quick measurements (no media files needed).

A dark mouth blob whose height follows a speech-like envelope, and audio that is noise modulated by
an envelope: the same envelope for a real clip, a time-shifted one or another clip's for a fake.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


def speech_envelope(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A syllable-like envelope in [0, 1] at the frame rate: random bumps with pauses."""
    env = np.zeros(n_frames + 16)
    t = int(rng.integers(0, 4))
    while t < n_frames:
        length = int(rng.integers(3, 9))
        env[t : t + length] += np.sin(np.linspace(0, np.pi, length)) * rng.uniform(0.5, 1.0)
        t += length + int(rng.integers(1, 7))
    return np.clip(env[:n_frames], 0.0, 1.0)


def render_mouths(env: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[T, size, size, 3]`` frames: skin-toned noisy face with a dark ellipse of height ~ env."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = np.array([200, 150, 130], dtype=np.float32) * rng.uniform(0.7, 1.1)
    cx, cy = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    half_w = size * rng.uniform(0.22, 0.3)
    frames = np.empty((len(env), size, size, 3), dtype=np.uint8)
    for i, e in enumerate(env):
        half_h = size * (0.02 + 0.2 * e)
        inside = ((xx - cx) / half_w) ** 2 + ((yy - cy) / half_h) ** 2 <= 1.0
        img = np.broadcast_to(skin, (size, size, 3)) + rng.normal(0, 6, (size, size, 3))
        img[inside] = (40, 20, 25)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def modulated_audio(env: np.ndarray, fps: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """float32 audio: noise plus a voiced tone, amplitude following ``env`` (interpolated to ``sr``)."""
    n = round(len(env) / fps * sr)
    t = np.arange(n) / sr
    amp = np.interp(t, (np.arange(len(env)) + 0.5) / fps, env)
    f0 = rng.uniform(100, 220)
    carrier = 0.6 * rng.normal(0, 1, n) + np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(4 * np.pi * f0 * t)
    return (0.2 * (amp + 0.01) * carrier).astype(np.float32)


def synthetic_video(
    fake: bool,
    seed: int,
    duration_s: float = 3.0,
    fps: float = 25.0,
    size: int = 96,
    sr: int = SAMPLE_RATE,
    shift_frames: tuple[int, int] = (5, 15),
    unrelated_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic clip.

    Args:
        fake: Mouth follows a shifted or unrelated envelope instead of the audio's.
        seed: Seed of everything random in the clip.
        duration_s: Clip length.
        fps: Frame rate.
        size: Crop side.
        sr: Audio sample rate.
        shift_frames: Range (inclusive) of the shift of a shifted fake, in frames (either direction).
        unrelated_prob: Share of fakes that follow an unrelated envelope instead of a shifted one.

    Returns:
        ``(crops uint8 [T, size, size, 3], audio float32 [duration_s * sr])``.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * fps)
    env_audio = speech_envelope(n + max(20, shift_frames[1]), rng)
    if not fake:
        env_video = env_audio[:n]
    elif rng.random() < 1.0 - unrelated_prob:
        shift = int(rng.integers(shift_frames[0], shift_frames[1] + 1)) * (1 if rng.random() < 0.5 else -1)
        env_video = np.roll(env_audio, shift)[:n] if shift > 0 else env_audio[-shift : -shift + n]
    else:
        env_video = speech_envelope(n, rng)
    return render_mouths(env_video, size, rng), modulated_audio(env_audio[:n], fps, rng, sr)


def write_synthetic_faces(
    directory,
    splits: dict[str, int] | None = None,
    duration_s: float = 3.0,
    fps: float = 25.0,
    size: int = 96,
    fallback_ids: tuple[str, ...] = (),
    seed: int = 0,
    **fake_options,
) -> list[str]:
    """Write a faces Dataset (FORMATS.md layout) of synthetic clips, alternating real and fake.

    Args:
        directory: Target folder.
        splits: Videos per split, e.g. ``{"train": 8, "val": 2, "test": 4}``.
        duration_s: Clip length.
        fps: Frame rate.
        size: Crop side.
        fallback_ids: Video ids written as centre-crop fallbacks (``fallback_used``).
        seed: Base seed.
        **fake_options: ``shift_frames`` / ``unrelated_prob`` of :func:`synthetic_video`.

    Returns:
        The video ids written.
    """
    from pathlib import Path

    from components.face_tracking.dataset import FaceRecord, FaceSample, write_face_index

    out = Path(directory)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    records, k = [], 0
    for split, count in (splits or {"train": 8, "val": 2, "test": 4}).items():
        for i in range(count):
            video_id = f"{split}{i:03d}"
            fake = i % 2 == 1
            crops, audio = synthetic_video(fake, seed * 100003 + k, duration_s, fps, size, **fake_options)
            k += 1
            fallback = video_id in fallback_ids
            sample_id = f"{video_id}-center" if fallback else f"{video_id}-t0"
            np.save(out / "crops" / f"{sample_id}.npy", crops)
            np.save(out / "audio" / f"{video_id}.npy", audio)
            sample = FaceSample(sample_id, -1 if fallback else 0, True, f"crops/{sample_id}.npy", len(crops))
            records.append(
                FaceRecord(
                    video_id=video_id,
                    split=split,
                    authenticity="fake" if fake else "real",
                    status="ok",
                    fps=fps,
                    n_frames=len(crops),
                    faces_seen=0 if fallback else 1,
                    n_tracks=0 if fallback else 1,
                    selected_track=-1 if fallback else 0,
                    fallback_used=fallback,
                    has_audio=True,
                    face_px=0.0 if fallback else 4.0 * size,  # a face about four mouth crops wide
                    face_score=0.0 if fallback else 0.9,
                    samples=(sample,),
                )
            )
    write_face_index(out, records)
    return [r.video_id for r in records]

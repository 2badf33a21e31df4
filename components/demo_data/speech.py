"""Speech-like audio with a known syllable envelope.

A clip's speech is a list of syllables ``(start_s, duration_s, amplitude)``: phrases of 2-7 syllables at
3-7 per second with short gaps, separated by pauses. The envelope is a sum of raised-cosine bumps and can
be evaluated at any time, so the mouth of a video can follow it exactly, shifted, or follow another clip's.
The waveform is a glottal-like harmonic series (F0 with drift and per-syllable inflection) shaped by
per-syllable vowel formants, plus breath noise, multiplied by the envelope.
"""

from __future__ import annotations

import numpy as np


def syllables(rng: np.random.Generator, start_s: float, end_s: float) -> np.ndarray:
    """Random syllables covering ``[start_s, end_s]``, float64 ``[K, 3]`` of (start, duration, amplitude)."""
    rows = []
    t = start_s + rng.uniform(0.0, 0.3)
    while t < end_s:
        for _ in range(int(rng.integers(2, 8))):
            duration = rng.uniform(0.12, 0.3)
            rows.append((t, duration, rng.uniform(0.55, 1.0)))
            t += duration + rng.uniform(0.02, 0.12)
        t += rng.uniform(0.2, 0.6)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def envelope(syl: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The speech envelope in [0, 1] at the ascending 1-D times ``t`` (seconds)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(t.shape, dtype=np.float64)
    bounds = np.searchsorted(t, np.stack([syl[:, 0], syl[:, 0] + syl[:, 1]], axis=1))
    for (start, duration, amp), (lo, hi) in zip(syl, bounds, strict=True):
        out[lo:hi] += amp * np.sin(np.pi * (t[lo:hi] - start) / duration) ** 2
    return np.clip(out, 0.0, 1.0)


def frame_envelope(syl: np.ndarray, n_frames: int, fps: float, shift_s: float = 0.0, sub: int = 4) -> np.ndarray:
    """The envelope averaged over each frame's interval, delayed by ``shift_s`` (positive: later).

    Returns:
        float64 ``[n_frames]``: the mouth opening of each frame.
    """
    t = (np.arange(n_frames * sub) + 0.5) / (fps * sub) - shift_s
    return envelope(syl, t).reshape(n_frames, sub).mean(axis=1)


def speech_audio(syl: np.ndarray, duration_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """float32 mono speech-like audio of ``duration_s`` whose loudness follows ``envelope(syl, t)``."""
    n = round(duration_s * sample_rate)
    t = np.arange(n) / sample_rate
    env = envelope(syl, t)
    idx = np.clip(np.searchsorted(syl[:, 0], t, side="right") - 1, 0, max(len(syl) - 1, 0))
    k = max(len(syl), 1)
    f1_table, f2_table = rng.uniform(300, 850, k), rng.uniform(900, 2300, k)
    inflect = rng.uniform(-0.12, 0.12, k)
    base_f0 = rng.uniform(110, 230)
    rel = np.clip((t - syl[idx, 0]) / np.maximum(syl[idx, 1], 1e-3), 0, 1) if len(syl) else np.zeros(n)
    f0 = base_f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.3, 0.9) * t) + inflect[idx] * (rel - 0.5))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    # Formant weights change slowly: compute them every 10 ms and hold them.
    step = max(1, sample_rate // 100)
    coarse = slice(0, n, step)
    f0c, f1, f2 = f0[coarse], f1_table[idx[coarse]], f2_table[idx[coarse]]
    voiced = np.zeros(n)
    for h in range(1, 25):
        fh = h * f0c
        weight = (np.exp(-(((fh - f1) / 180) ** 2)) + 0.6 * np.exp(-(((fh - f2) / 260) ** 2)) + 0.04) / h**0.5
        weight = np.where(fh < 0.45 * sample_rate, weight, 0.0)
        voiced += np.repeat(weight, step)[:n] * np.sin(h * phase)
    voiced /= max(np.abs(voiced).max(), 1e-9)
    breath = rng.normal(0.0, 0.12, n)
    signal = env * (voiced + breath) + rng.normal(0.0, 0.003, n)
    return (0.6 * signal / max(np.abs(signal).max(), 1e-9)).astype(np.float32)

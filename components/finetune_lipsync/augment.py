"""Training-time augmentations of audio-visual windows (validation and serving never use them).

- temporal speed 0.9x-1.1x, applied to both streams through one time mapping (alignment is kept);
- per-window rotation, horizontal flip, colour jitter and Gaussian noise of the mouth crops (the same
  spatial transform for every frame of a window, so the motion itself is not distorted).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from components.finetune_lipsync.config import AugmentConfig
from components.finetune_lipsync.model import extract_window


def speed_window(
    crops: np.ndarray,
    audio: np.ndarray,
    fps: float,
    start_s: float,
    n_frames: int,
    out_fps: float,
    n_samples: int,
    speed: float,
    sr: int = 16000,
) -> tuple[np.ndarray, np.ndarray]:
    """A window played at ``speed`` x: both streams are resampled with the same time mapping.

    The start is moved back when needed so that the sped-up window stays inside the clip.
    """
    duration = len(crops) / fps
    span = speed * n_frames / out_fps
    start = max(0.0, min(start_s, duration - span))
    return extract_window(crops, audio, fps, start, n_frames, out_fps, n_samples, sr, speed=speed)


def random_speed(rng: np.random.Generator, params: AugmentConfig) -> float:
    """A speed factor drawn uniformly from the configured range."""
    return float(rng.uniform(params.speed_min, params.speed_max))


def augment_video(video: torch.Tensor, params: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Spatial and photometric augmentation of a batch of windows.

    Args:
        video: ``[B, T, H, W, 3]`` uint8 or float in [0, 1].
        params: The ranges.
        generator: Random generator (CPU) for reproducibility.

    Returns:
        Float ``[B, T, H, W, 3]`` in [0, 1].
    """
    x = video.float()
    if video.dtype == torch.uint8:
        x = x / 255.0
    b, t, h, w, _ = x.shape

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(x.device)

    x = x.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
    if params.rotation_deg > 0:
        angles = (rand(b) * 2 - 1) * math.radians(params.rotation_deg)
        cos, sin = torch.cos(angles), torch.sin(angles)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta = theta.repeat_interleave(t, dim=0)
        flat = x.reshape(b * t, 3, h, w)
        grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
        x = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False).reshape(
            b, t, 3, h, w
        )
    if params.flip_prob > 0:
        flip = rand(b) < params.flip_prob
        x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    if params.color_jitter > 0:
        j = params.color_jitter
        brightness = 1 + (rand(b) * 2 - 1) * j
        contrast = 1 + (rand(b) * 2 - 1) * j
        saturation = 1 + (rand(b) * 2 - 1) * j
        x = x * brightness[:, None, None, None, None]
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        x = (x - mean) * contrast[:, None, None, None, None] + mean
        gray = (0.299 * x[:, :, 0] + 0.587 * x[:, :, 1] + 0.114 * x[:, :, 2]).unsqueeze(2)
        x = (x - gray) * saturation[:, None, None, None, None] + gray
    if params.noise_std > 0:
        std = rand(b) * params.noise_std
        x = x + torch.randn(x.shape, generator=generator).to(x.device) * std[:, None, None, None, None]
    return x.clamp(0, 1).permute(0, 1, 3, 4, 2).contiguous()

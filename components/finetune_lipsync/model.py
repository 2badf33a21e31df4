"""The lip-sync manipulation detector, shared by training (finetune_lipsync, evaluate) and serving.

A real talking head moves its mouth with its voice; a lip-synced fake breaks that timing. The detector
looks at one aligned audio-visual window at a time:

- a visual encoder (3D convolutions over the mouth-crop sequence, then a temporal convolution) gives one
  embedding per video frame;
- an audio encoder (1D convolutions over the log-mel spectrogram) gives embeddings at 25 Hz-ish;
- a fusion block aligns both sequences in time (cross-attention with shared time encodings, or
  concatenation after pooling the audio to the video's length), adds their element-wise product (the
  per-instant agreement of both streams) and runs a temporal convolution over the result;
- a classifier turns the pooled sequence into one logit: the log-odds that the window is manipulated.

The forward pass takes raw inputs (uint8 or [0, 1] video ``[B, T, H, W, 3]`` and 16 kHz audio ``[B, S]``)
so that training and serving cannot preprocess differently. This module holds no training code.

Why this file is long: the detector's layers, its config, its safetensors file format and
the per-video prediction that training, evaluate and serving share must change together.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.common.device import no_autocast
from components.common.errors import ConfigError
from components.finetune_lipsync.config import AGGREGATIONS, LipSyncArchitecture

SAMPLE_RATE = 16000
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelConfigError(ConfigError):
    """A model configuration is invalid or does not match the weights."""


@dataclass(frozen=True)
class LipSyncModelConfig(LipSyncArchitecture):
    """Everything :class:`LipSyncDetector` is built from (``config.json`` of a model folder, JSON-serializable).

    The architecture and input geometry are the ``finetune_lipsync.model`` settings
    (:class:`~components.finetune_lipsync.config.LipSyncArchitecture`, validated there); this adds the audio front
    end's constants and what training decided.

    Attributes:
        sample_rate: Audio sample rate.
        n_fft: FFT size of the spectrogram.
        win_length: Analysis window in samples (25 ms).
        hop_length: Spectrogram hop in samples (10 ms).
        threshold: Decision threshold on the video probability (chosen on validation by training).
        extra: Free-form metadata (training facts); not used by the model.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    threshold: float = 0.5
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ConfigError as exc:
            raise ModelConfigError(str(exc)) from None

    @property
    def n_frames(self) -> int:
        """Video frames per window."""
        return max(1, round(self.window_s * self.fps))

    @property
    def n_samples(self) -> int:
        """Audio samples per window."""
        return max(1, round(self.window_s * self.sample_rate))

    def to_dict(self) -> dict:
        """Plain dict for ``config.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LipSyncModelConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error (a newer, incompatible model)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float = 20.0, f_max: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filterbank ``[n_mels, n_fft // 2 + 1]`` (float32), each filter of unit area."""
    f_max = f_max or sr / 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lower) / np.maximum(center - lower, 1e-9)
    down = (upper - bins[None, :]) / np.maximum(upper - center, 1e-9)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    fb /= np.maximum(fb.sum(axis=1, keepdims=True), 1e-9)
    return fb.astype(np.float32)


def log_mel(
    audio: np.ndarray | torch.Tensor,
    sr: int = SAMPLE_RATE,
    n_mels: int = 40,
    n_fft: int = 512,
    win_length: int = 400,
    hop_length: int = 160,
    normalize: bool = True,
) -> torch.Tensor:
    """Log-mel spectrogram of mono audio.

    Args:
        audio: ``[S]`` or ``[B, S]`` float waveform.
        sr: Sample rate.
        n_mels: Mel bands.
        n_fft: FFT size.
        win_length: Hann window length in samples.
        hop_length: Hop in samples (frames = 1 + S // hop_length).
        normalize: Standardize each example over bands and time (loudness-invariant; silence gives zeros).

    Returns:
        ``[n_mels, F]`` or ``[B, n_mels, F]`` float32 tensor.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    if x.shape[-1] < n_fft // 2 + 1:  # reflect padding needs more samples than half the FFT
        x = F.pad(x, (0, n_fft // 2 + 1 - x.shape[-1]))
    window = torch.hann_window(win_length, device=x.device)
    spec = torch.stft(x, n_fft, hop_length, win_length, window, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    fb = torch.from_numpy(mel_filterbank(sr, n_fft, n_mels)).to(x.device)
    mel = torch.einsum("mf,bft->bmt", fb, power)
    # A floor relative to the loudest bin (100 dB below) keeps the features loudness-invariant.
    mel = torch.log(mel + 1e-10 * mel.amax(dim=(1, 2), keepdim=True) + 1e-12)
    if normalize:
        mean = mel.mean(dim=(1, 2), keepdim=True)
        std = mel.std(dim=(1, 2), keepdim=True)
        mel = (mel - mean) / (std + 1e-3)
    return mel[0] if squeeze else mel


# -------------------------------------------------------------------------------------------- windows


@dataclass
class AVWindows:
    """Aligned audio-visual windows of one video.

    Attributes:
        video: uint8 ``[N, n_frames, H, W, 3]``.
        audio: float32 ``[N, n_samples]``.
        starts_s: float ``[N]`` window start times relative to the crops' first frame.
    """

    video: np.ndarray
    audio: np.ndarray
    starts_s: np.ndarray

    def __len__(self) -> int:
        return len(self.starts_s)


def extract_window(
    crops: np.ndarray,
    audio: np.ndarray,
    fps: float,
    start_s: float,
    n_frames: int,
    out_fps: float,
    n_samples: int,
    sr: int = SAMPLE_RATE,
    speed: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one window that starts at ``start_s``, optionally played at ``speed`` x.

    Both streams use the same time mapping, source time = ``start_s + speed * t``, so a speed change
    keeps audio and video aligned. Frames are picked by nearest preceding frame, audio is linearly
    interpolated; beyond the end, the last frame repeats and the audio is silent.

    Returns:
        ``(video [n_frames, H, W, 3], audio [n_samples] float32)``.
    """
    t_video = start_s + speed * np.arange(n_frames) / out_fps
    idx = np.clip(np.floor(t_video * fps + 1e-6).astype(np.int64), 0, len(crops) - 1)
    video = crops[idx]
    if speed == 1.0:
        first = round(start_s * sr)
        seg = np.asarray(audio[max(first, 0) : first + n_samples], dtype=np.float32)
        out = np.zeros(n_samples, dtype=np.float32)
        out[: len(seg)] = seg
    else:
        pos = start_s * sr + speed * np.arange(n_samples)
        out = np.interp(pos, np.arange(len(audio)), audio, left=0.0, right=0.0).astype(np.float32)
    return video, out


def window_starts(duration_s: float, window_s: float, hop_s: float) -> np.ndarray:
    """Start times of the windows covering ``duration_s`` (at least one, even for a short clip)."""
    n = max(1, math.floor((duration_s - window_s) / hop_s + 1e-6) + 1)
    return np.arange(n) * hop_s


def windows(
    crops: np.ndarray,
    audio: np.ndarray,
    fps: float,
    window_s: float = 1.0,
    hop_s: float = 0.5,
    target_fps: float | None = None,
    sr: int = SAMPLE_RATE,
) -> AVWindows:
    """Cut a video's mouth crops and audio into aligned, overlapping windows.

    Args:
        crops: uint8 ``[T, H, W, 3]`` mouth crops at ``fps``; frame 0 is at time 0 of ``audio``.
        audio: float32 mono audio at ``sr`` starting with frame 0.
        fps: Frame rate of ``crops``.
        window_s: Window length in seconds.
        hop_s: Step between windows.
        target_fps: Frame rate of the windows (default ``fps``); frames are resampled by time.
        sr: Audio sample rate.

    Returns:
        The windows; a clip shorter than one window gives one padded window.

    Raises:
        ValueError: On empty crops or a bad shape.
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) == 0:
        raise ValueError(f"crops must be [T, H, W, 3] with T > 0, got {crops.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    out_fps = target_fps or fps
    n_frames = max(1, round(window_s * out_fps))
    n_samples = max(1, round(window_s * sr))
    starts = window_starts(len(crops) / fps, window_s, hop_s)
    vids, auds = [], []
    for t0 in starts:
        v, a = extract_window(crops, audio, fps, float(t0), n_frames, out_fps, n_samples, sr)
        vids.append(v)
        auds.append(a)
    return AVWindows(np.stack(vids), np.stack(auds), starts.astype(np.float32))


# ----------------------------------------------------------------------------------------------- model


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: batches are small and frozen encoders must not drift through running stats.
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv3d_block(cin: int, cout: int, kernel, stride) -> nn.Sequential:
    kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), _norm(cout), nn.ReLU(inplace=True))


def _conv1d_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class VisualEncoder(nn.Module):
    """3D-conv encoder of the mouth-crop sequence: ``[B, 3, T, S, S] -> [B, D, T]``."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        c = channels
        self.blocks = nn.ModuleList(
            [
                _conv3d_block(3, c, (3, 5, 5), (1, 2, 2)),
                _conv3d_block(c, 2 * c, 3, (1, 2, 2)),
                _conv3d_block(2 * c, 4 * c, 3, (1, 2, 2)),
            ]
        )
        self.temporal = _conv1d_block(4 * c, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.temporal(x.mean(dim=(3, 4)))

    def layer_groups(self) -> list[nn.Module]:
        """Layer groups from the top (closest to the fusion) down."""
        return [self.temporal, *reversed(self.blocks)]


class AudioEncoder(nn.Module):
    """1D-conv encoder of the log-mel spectrogram: ``[B, n_mels, F] -> [B, D, F / 4]``."""

    def __init__(self, n_mels: int, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                _conv1d_block(n_mels, channels),
                _conv1d_block(channels, channels, stride=2),
                _conv1d_block(channels, embed_dim, stride=2),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def layer_groups(self) -> list[nn.Module]:
        """Layer groups from the top down."""
        return list(reversed(self.blocks))


def _time_encoding(n: int, dim: int, n_ref: int, device) -> torch.Tensor:
    """Sinusoidal encoding ``[n, dim]`` of token centres as positions on an ``n_ref``-step time axis."""
    pos = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (n_ref / n)
    freqs = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(1000.0) / dim))
    angles = pos[:, None] * freqs[None, :]
    enc = torch.zeros(n, dim, device=device)
    enc[:, 0::2] = torch.sin(angles)
    enc[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return enc


def _standardize_time(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the last (time) axis, per example and channel."""
    x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.square().mean(dim=-1, keepdim=True) + 1e-5).sqrt()


def lag_correlations(v: torch.Tensor, a: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Per-channel correlation of two ``[B, D, T]`` sequences at lags ``-max_lag..max_lag``: ``[B, D, 2L+1]``.

    At lag ``k`` frame ``t`` of ``v`` meets frame ``t + k`` of ``a`` (positive: the lips lead the sound); each
    lag averages over the frames both sequences cover.
    """
    v, a = _standardize_time(v), _standardize_time(a)
    t = v.shape[-1]
    return torch.stack(
        [
            (v[..., max(0, -k) : t - max(0, k)] * a[..., max(0, k) : t + min(0, k)]).mean(dim=-1)
            for k in range(-max_lag, max_lag + 1)
        ],
        dim=-1,
    )


class Fusion(nn.Module):
    """Aligns audio to the video frames, then a temporal conv over [v, a, std(v) * std(a)]: ``-> [B, out_dim]``.

    With ``sync_lags`` it also reads the streams' correlation at every lag within +-``sync_lags`` frames
    (:func:`lag_correlations`, SyncNet's offset search as a feature): where the agreement peaks tells a window whose
    sound is a frame or three off from one whose lips merely lead it, which the lag-0 product cannot.
    """

    def __init__(self, kind: str, embed_dim: int, heads: int, sync_lags: int) -> None:
        super().__init__()
        self.kind = kind
        self.sync_lags = sync_lags
        d = embed_dim
        if kind == "cross_attention":
            self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
            self.attention_norm = nn.LayerNorm(d)
        self.temporal = nn.Sequential(_conv1d_block(3 * d, d), _conv1d_block(d, d))
        if sync_lags:
            self.lags = nn.Sequential(nn.Flatten(), nn.Linear(d * (2 * sync_lags + 1), d), nn.ReLU(inplace=True))
        self.out_dim = (3 if sync_lags else 2) * d

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        t = v.shape[-1]
        if self.kind == "concat":
            aligned = F.adaptive_avg_pool1d(a, t)
        else:
            d = v.shape[1]
            q = v.transpose(1, 2) + _time_encoding(t, d, t, v.device).to(v.dtype)
            k = a.transpose(1, 2) + _time_encoding(a.shape[-1], d, t, a.device).to(a.dtype)
            attended, _ = self.attention(q, k, a.transpose(1, 2), need_weights=False)
            aligned = self.attention_norm(attended + F.adaptive_avg_pool1d(a, t).transpose(1, 2)).transpose(1, 2)
        # Standardized over time, the product's mean is the per-channel correlation of the two streams:
        # the direct evidence of (a)synchrony, available from the first step on.
        x = self.temporal(torch.cat([v, aligned, _standardize_time(v) * _standardize_time(aligned)], dim=1))
        pooled = [x.mean(dim=-1), x.amax(dim=-1)]
        if self.sync_lags:
            pooled.append(self.lags(lag_correlations(v, aligned, self.sync_lags)))
        return torch.cat(pooled, dim=1)


class LipSyncDetector(nn.Module):
    """Audio-visual lip-sync manipulation detector; ``forward`` returns one logit per window (fake = 1)."""

    def __init__(self, config: LipSyncModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or LipSyncModelConfig()
        c = self.config
        self.visual = VisualEncoder(c.visual_channels, c.embed_dim)
        self.audio = AudioEncoder(c.n_mels, c.audio_channels, c.embed_dim)
        self.fusion = Fusion(c.fusion, c.embed_dim, c.attention_heads, c.sync_lags)
        self.classifier = nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(self.fusion.out_dim, c.embed_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(c.dropout),
            nn.Linear(c.embed_dim, 1),
        )

    def prepare_video(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, H, W, 3]`` uint8 (or float in [0, 1]) -> normalized ``[B, 3, T, S, S]`` float."""
        if video.dim() != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be [B, T, H, W, 3], got {tuple(video.shape)}")
        x = video.float()
        if video.dtype == torch.uint8:
            x = x / 255.0
        b, t, h, w, _ = x.shape
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w)
        s = self.config.crop_size
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = (x - 0.45) / 0.25
        return x.reshape(b, t, 3, s, s).permute(0, 2, 1, 3, 4).contiguous()

    def prepare_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` waveform -> normalized log-mel ``[B, n_mels, F]`` (always computed in fp32)."""
        c = self.config
        with no_autocast(audio.device):
            return log_mel(audio.float(), c.sample_rate, c.n_mels, c.n_fft, c.win_length, c.hop_length)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of manipulation for windows ``video [B, T, H, W, 3]`` and ``audio [B, S]``."""
        v = self.visual(self.prepare_video(video))
        a = self.audio(self.prepare_audio(audio))
        return self.classifier(self.fusion(v, a)).squeeze(-1)

    def encoder_layer_groups(self) -> dict[str, list[nn.Module]]:
        """Encoder layer groups, top first, per encoder (for progressive unfreezing)."""
        return {"visual": self.visual.layer_groups(), "audio": self.audio.layer_groups()}

    def head_modules(self) -> list[nn.Module]:
        """Fusion and classifier: what phase 1 trains."""
        return [self.fusion, self.classifier]


# ------------------------------------------------------------------------------------- save / load


def save_model(model: LipSyncDetector, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "model": "LipSyncDetector"})
    (out / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True))
    return out


def load_weights(model: LipSyncDetector, weights_path: str | Path) -> None:
    """Load a safetensors state dict into ``model`` (strict: every key and shape must match).

    Raises:
        ModelConfigError: When the weights do not fit the architecture.
    """
    from safetensors.torch import load_file

    state = load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelConfigError(f"weights {weights_path} do not match the model configuration: {exc}") from exc


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> LipSyncDetector:
    """Load a model saved by :func:`save_model`, in eval mode.

    Raises:
        FileNotFoundError: If a file is missing.
        ModelConfigError: If the config is unknown or does not fit the weights.
    """
    d = Path(model_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"lip-sync model file missing: {d / name}")
    config = LipSyncModelConfig.from_dict(json.loads((d / CONFIG_FILE).read_text()))
    model = LipSyncDetector(config)
    load_weights(model, d / WEIGHTS_FILE)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------- inference


def aggregate(logits: np.ndarray, method: str = "mean_logit") -> float:
    """Video probability of manipulation from its window logits.

    Args:
        logits: Window logits.
        method: ``mean_logit`` (sigmoid of the mean logit), ``top2_logit`` (sigmoid of the mean of the two highest
            logits: a manipulation of a second or two of the clip is not averaged away by its clean windows),
            ``max`` or ``median`` of window probabilities, or ``noisy_or`` (``1 - prod(1 - p)``: any window fake).
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if logits.size == 0:
        raise ValueError("no window scores to aggregate")
    if method == "mean_logit":
        return float(1.0 / (1.0 + np.exp(-logits.mean())))
    if method == "top2_logit":
        return float(1.0 / (1.0 + np.exp(-np.sort(logits)[-2:].mean())))
    probs = 1.0 / (1.0 + np.exp(-logits))
    if method == "max":
        return float(probs.max())
    if method == "median":
        return float(np.median(probs))
    if method == "noisy_or":
        return float(1.0 - np.prod(1.0 - probs))
    raise ValueError(f"unknown aggregation {method!r}; expected one of {AGGREGATIONS}")


@dataclass
class VideoScore:
    """Scores of one video.

    Attributes:
        window_probabilities: Probability of manipulation per window.
        window_starts_s: Start time of each window (seconds from the first crop).
        probability: Video probability of manipulation (aggregated).
        is_fake: ``probability >= threshold``.
        threshold: The model's decision threshold.
    """

    window_probabilities: list[float]
    window_starts_s: list[float]
    probability: float
    is_fake: bool
    threshold: float


@torch.inference_mode()
def window_logits(model: LipSyncDetector, av: AVWindows, batch_size: int = 32) -> np.ndarray:
    """Logits of the windows of one video."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(av), batch_size):
        v = torch.from_numpy(np.ascontiguousarray(av.video[i : i + batch_size])).to(device)
        a = torch.from_numpy(np.ascontiguousarray(av.audio[i : i + batch_size])).to(device)
        out.append(model(v, a).float().cpu().numpy())
    return np.concatenate(out)


def predict_video(
    model: LipSyncDetector,
    crops: np.ndarray,
    audio: np.ndarray,
    fps: float,
    aggregation: str | None = None,
    batch_size: int = 32,
) -> VideoScore:
    """Score one video: windows, per-window probabilities, video probability and decision.

    Args:
        model: A loaded detector (put in eval mode here).
        crops: uint8 ``[T, H, W, 3]`` mouth crops at ``fps``.
        audio: float32 16 kHz mono audio aligned with ``crops`` (empty: silence).
        fps: Frame rate of ``crops``.
        aggregation: Overrides the model's ``video_aggregation``.
        batch_size: Windows per forward pass.
    """
    model.eval()
    c = model.config
    av = windows(crops, audio, fps, c.window_s, c.hop_s, target_fps=c.fps, sr=c.sample_rate)
    logits = window_logits(model, av, batch_size)
    prob = aggregate(logits, aggregation or c.video_aggregation)
    return VideoScore(
        window_probabilities=[float(p) for p in 1.0 / (1.0 + np.exp(-logits))],
        window_starts_s=[float(s) for s in av.starts_s],
        probability=prob,
        is_fake=bool(prob >= c.threshold),
        threshold=float(c.threshold),
    )

"""Settings of the finetune_lipsync stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.device import is_device_name
from components.common.errors import require

FUSIONS = ("cross_attention", "concat")
AGGREGATIONS = ("mean_logit", "max", "median")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


_require = functools.partial(require, section="finetune_lipsync")


@dataclass(frozen=True)
class FinetuneLipsyncConfig:
    """How the lip-sync detector is built and fine-tuned (defaults: the demo, ~37 videos, in ~2.5 min on 1 CPU core).

    Attributes:
        window_s: Length of one audio-visual window in seconds.
        hop_s: Step between consecutive windows in seconds.
        model_fps: Frame rate the model sees; videos at another rate are resampled to it (nearest frame).
        crop_size: Side the mouth crops are resized to before the visual encoder (48 for CPU, 96 on GPU).
        n_mels: Mel bands of the log-mel spectrogram (16 kHz audio, 25 ms windows, 10 ms hop).
        visual_channels: Channels of the first 3D-conv block; later blocks use 2x and 4x.
        audio_channels: Channels of the audio 1D-conv blocks.
        embed_dim: Width of both encoders' output sequence and of the fusion block.
        attention_heads: Heads of the cross-attention fusion.
        fusion: ``cross_attention`` (video queries attend to audio) or ``concat`` (aligned concatenation).
        dropout: Dropout before the classifier.
        epochs: Total epochs (phase 1 + phase 2).
        freeze_epochs: Phase 1 length: encoders frozen, fusion + classifier trained at ``lr``. Applies when
            training starts from pretrained weights, or always when ``freeze_from_scratch`` is set.
        freeze_from_scratch: Also freeze randomly initialized encoders in phase 1 (off: from scratch,
            every layer trains from epoch 0 at ``lr_scratch``).
        batch_size: Windows per optimizer micro-batch.
        grad_accum: Micro-batches accumulated per optimizer step.
        lr: Learning rate of fusion + classifier.
        lr_encoder: Learning rate of unfrozen encoder layers in phase 2.
        lr_scratch: Learning rate of every layer when training from scratch (no pretrained weights).
        weight_decay: AdamW weight decay.
        unfreeze_every: Phase 2 unfreezes ``unfreeze_groups`` more encoder layer groups (top first) every
            this many epochs, until all are trainable.
        unfreeze_groups: Layer groups per encoder unfrozen at each step of phase 2.
        plateau_patience: ReduceLROnPlateau patience (epochs without val-loss improvement).
        plateau_factor: ReduceLROnPlateau factor.
        val_fraction: Share of the training pool held out for validation, by video (stratified by label).
        use_augmentation: Augment training windows (validation never augments).
        speed_min: Lowest temporal speed factor (applied to video and audio together).
        speed_max: Highest temporal speed factor.
        rotation_deg: Largest absolute rotation of the crops in degrees.
        flip_prob: Probability of a horizontal flip.
        color_jitter: Largest relative change of brightness, contrast and saturation.
        noise_std: Largest standard deviation of Gaussian pixel noise (pixel values in [0, 1]).
        video_aggregation: Video score from window scores: ``mean_logit``, ``max`` or ``median``.
        precision: ``auto`` (bf16 where the CPU has native bf16 or on CUDA, else fp32), ``fp32``, ``bf16``, ``fp16``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        num_threads: Torch CPU threads (0 keeps torch's default).
        seed: Seed of the split, initialization, shuffling and augmentation.
        pretrained: ``""`` (from scratch), a ``.safetensors`` path (``config.json`` beside it when present),
            or ``champion`` (the registry's champion of ``lipsync-<client>``; from scratch when there is none).
        max_windows_per_video: Cap on training windows per video per epoch (0: no cap).
    """

    window_s: float = 1.0
    hop_s: float = 0.5
    model_fps: float = 25.0
    crop_size: int = 48
    n_mels: int = 40
    visual_channels: int = 16
    audio_channels: int = 32
    embed_dim: int = 64
    attention_heads: int = 4
    fusion: str = "concat"
    dropout: float = 0.2
    epochs: int = 20
    freeze_epochs: int = 3
    freeze_from_scratch: bool = False
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    lr_encoder: float = 1e-5
    lr_scratch: float = 2e-3
    weight_decay: float = 1e-4
    unfreeze_every: int = 1
    unfreeze_groups: int = 1
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    val_fraction: float = 0.2
    use_augmentation: bool = True
    speed_min: float = 0.9
    speed_max: float = 1.1
    rotation_deg: float = 15.0
    flip_prob: float = 0.5
    color_jitter: float = 0.2
    noise_std: float = 0.03
    video_aggregation: str = "mean_logit"
    precision: str = "auto"
    device: str = "auto"
    num_threads: int = 0
    seed: int = 0
    pretrained: str = "champion"
    max_windows_per_video: int = 0

    def __post_init__(self) -> None:
        _require(0.2 <= self.window_s <= 10.0, f"window_s must be 0.2..10, got {self.window_s}")
        _require(0 < self.hop_s <= self.window_s, f"hop_s must be in (0, window_s], got {self.hop_s}")
        _require(1.0 <= self.model_fps <= 120.0, f"model_fps must be 1..120, got {self.model_fps}")
        _require(
            16 <= self.crop_size <= 256 and self.crop_size % 8 == 0,
            f"crop_size must be a multiple of 8 in 16..256, got {self.crop_size}",
        )
        _require(8 <= self.n_mels <= 128, f"n_mels must be 8..128, got {self.n_mels}")
        for name in ("visual_channels", "audio_channels", "embed_dim", "attention_heads"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require(
            self.embed_dim % self.attention_heads == 0,
            f"embed_dim ({self.embed_dim}) must be divisible by attention_heads ({self.attention_heads})",
        )
        _require(self.fusion in FUSIONS, f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(
            0 <= self.freeze_epochs <= self.epochs,
            f"freeze_epochs must be in 0..epochs ({self.epochs}), got {self.freeze_epochs}",
        )
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("lr", "lr_encoder", "lr_scratch"):
            _require(0 < getattr(self, name) < 1, f"{name} must be in (0, 1), got {getattr(self, name)}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.unfreeze_every >= 1, f"unfreeze_every must be >= 1, got {self.unfreeze_every}")
        _require(self.unfreeze_groups >= 1, f"unfreeze_groups must be >= 1, got {self.unfreeze_groups}")
        _require(self.plateau_patience >= 0, f"plateau_patience must be >= 0, got {self.plateau_patience}")
        _require(0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        _require(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _require(
            0.5 <= self.speed_min <= 1.0 <= self.speed_max <= 2.0,
            f"need 0.5 <= speed_min <= 1 <= speed_max <= 2, got {self.speed_min}, {self.speed_max}",
        )
        _require(0 <= self.rotation_deg <= 45, f"rotation_deg must be 0..45, got {self.rotation_deg}")
        _require(0 <= self.flip_prob <= 1, f"flip_prob must be 0..1, got {self.flip_prob}")
        _require(0 <= self.color_jitter < 1, f"color_jitter must be in [0, 1), got {self.color_jitter}")
        _require(0 <= self.noise_std <= 0.5, f"noise_std must be 0..0.5, got {self.noise_std}")
        _require(
            self.video_aggregation in AGGREGATIONS,
            f"video_aggregation must be one of {AGGREGATIONS}, got {self.video_aggregation!r}",
        )
        _require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _require(is_device_name(self.device), f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _require(
            self.pretrained in ("", "champion") or self.pretrained.endswith(".safetensors"),
            f"pretrained must be '', 'champion' or a .safetensors path, got {self.pretrained!r}",
        )
        _require(
            self.max_windows_per_video >= 0, f"max_windows_per_video must be >= 0, got {self.max_windows_per_video}"
        )

    def model_config_dict(self) -> dict:
        """The architecture fields, as accepted by ``LipSyncModelConfig(**...)``."""
        return {
            "window_s": self.window_s,
            "fps": self.model_fps,
            "crop_size": self.crop_size,
            "n_mels": self.n_mels,
            "visual_channels": self.visual_channels,
            "audio_channels": self.audio_channels,
            "embed_dim": self.embed_dim,
            "attention_heads": self.attention_heads,
            "fusion": self.fusion,
            "dropout": self.dropout,
            "video_aggregation": self.video_aggregation,
            "hop_s": self.hop_s,
        }

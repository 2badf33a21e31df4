"""Settings of the finetune_lipsync stage (standard library only: the kfp wrapper imports this).

The detector's architecture (``finetune_lipsync.model``) and the training augmentation (``finetune_lipsync.augment``)
are sub-configs: :class:`LipSyncArchitecture` is also what a saved model's ``config.json`` holds
(:class:`components.finetune_lipsync.model.LipSyncModelConfig` adds the audio front end's constants and the trained
threshold to it), and :class:`AugmentConfig` is what the augmentations take, so each setting is defined once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from components.common.config import DistributedConfig
from components.common.device import PRECISIONS, is_device_name
from components.common.errors import require

FUSIONS = ("cross_attention", "concat")
AGGREGATIONS = ("mean_logit", "top2_logit", "max", "median", "noisy_or")


_require = functools.partial(require, section="finetune_lipsync")
_require_model = functools.partial(require, section="finetune_lipsync.model")
_require_augment = functools.partial(require, section="finetune_lipsync.augment")


@dataclass(frozen=True)
class LipSyncArchitecture:
    """The detector's architecture and input geometry (``finetune_lipsync.model``; saved in ``config.json``).

    Attributes:
        window_s: Length of one audio-visual window in seconds.
        hop_s: Step between consecutive windows in seconds.
        fps: Frame rate the model sees; videos at another rate are resampled to it (nearest frame).
        crop_size: Side the mouth crops are resized to before the visual encoder (48 for CPU, 96 on GPU).
        n_mels: Mel bands of the log-mel spectrogram (16 kHz audio, 25 ms windows, 10 ms hop).
        visual_channels: Channels of the first 3D-conv block; later blocks use 2x and 4x.
        audio_channels: Channels of the audio 1D-conv blocks.
        embed_dim: Width of both encoders' output sequence and of the fusion block.
        attention_heads: Heads of the cross-attention fusion.
        fusion: ``cross_attention`` (video queries attend to audio) or ``concat`` (aligned concatenation).
        dropout: Dropout before the classifier.
        sync_lags: Also feed the classifier the two streams' per-channel correlation at every lag within
            +-``sync_lags`` frames (``finetune_lipsync.model.lag_correlations``; 0: off, the lag-0 product only).
            With 5 the detector learns from its first epoch on benchmark v2, but on the full benchmark its validation
            loss was not lower, so it is not the default (README, "The whole benchmark on the CPU, the video score
            and lag features").
        video_aggregation: Video score from window scores (``finetune_lipsync.model.aggregate``): ``mean_logit``,
            ``top2_logit``, ``max``, ``median`` or ``noisy_or``. On benchmark v2's validation they differ by less than
            their noise (README, "The whole benchmark on the CPU, the video score and lag features").
    """

    window_s: float = 1.0
    hop_s: float = 0.5
    fps: float = 25.0
    crop_size: int = 48
    n_mels: int = 40
    visual_channels: int = 16
    audio_channels: int = 32
    embed_dim: int = 64
    attention_heads: int = 4
    fusion: str = "concat"
    dropout: float = 0.2
    sync_lags: int = 0
    video_aggregation: str = "mean_logit"

    def __post_init__(self) -> None:
        _require_model(0.2 <= self.window_s <= 10.0, f"window_s must be 0.2..10, got {self.window_s}")
        _require_model(0 < self.hop_s <= self.window_s, f"hop_s must be in (0, window_s], got {self.hop_s}")
        _require_model(1.0 <= self.fps <= 120.0, f"fps must be 1..120, got {self.fps}")
        _require_model(
            16 <= self.crop_size <= 256 and self.crop_size % 8 == 0,
            f"crop_size must be a multiple of 8 in 16..256, got {self.crop_size}",
        )
        _require_model(8 <= self.n_mels <= 128, f"n_mels must be 8..128, got {self.n_mels}")
        for name in ("visual_channels", "audio_channels", "embed_dim", "attention_heads"):
            _require_model(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require_model(
            self.embed_dim % self.attention_heads == 0,
            f"embed_dim ({self.embed_dim}) must be divisible by attention_heads ({self.attention_heads})",
        )
        _require_model(self.fusion in FUSIONS, f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        _require_model(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _require_model(
            0 <= self.sync_lags < self.window_s * self.fps / 2,
            f"sync_lags must be 0..{math.ceil(self.window_s * self.fps / 2) - 1} (under half a window's frames), "
            f"got {self.sync_lags}",
        )
        _require_model(
            self.video_aggregation in AGGREGATIONS,
            f"video_aggregation must be one of {AGGREGATIONS}, got {self.video_aggregation!r}",
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of the windows (``finetune_lipsync.augment``; validation never augments).

    Attributes:
        enabled: Augment the training windows.
        speed_min: Lowest temporal speed factor (applied to video and audio together).
        speed_max: Highest temporal speed factor.
        rotation_deg: Largest absolute rotation of the crops in degrees.
        flip_prob: Probability of a horizontal flip.
        color_jitter: Largest relative change of brightness, contrast and saturation.
        noise_std: Largest standard deviation of Gaussian pixel noise (pixel values in [0, 1]).
    """

    enabled: bool = True
    speed_min: float = 0.9
    speed_max: float = 1.1
    rotation_deg: float = 15.0
    flip_prob: float = 0.5
    color_jitter: float = 0.2
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        _require_augment(
            0.5 <= self.speed_min <= 1.0 <= self.speed_max <= 2.0,
            f"need 0.5 <= speed_min <= 1 <= speed_max <= 2, got {self.speed_min}, {self.speed_max}",
        )
        _require_augment(0 <= self.rotation_deg <= 45, f"rotation_deg must be 0..45, got {self.rotation_deg}")
        _require_augment(0 <= self.flip_prob <= 1, f"flip_prob must be 0..1, got {self.flip_prob}")
        _require_augment(0 <= self.color_jitter < 1, f"color_jitter must be in [0, 1), got {self.color_jitter}")
        _require_augment(0 <= self.noise_std <= 0.5, f"noise_std must be 0..0.5, got {self.noise_std}")


# The flat finetune_lipsync keys of earlier configs that kept their name in a sub-config.
_FLAT_ARCHITECTURE = (
    "window_s", "hop_s", "crop_size", "n_mels", "visual_channels", "audio_channels", "embed_dim", "attention_heads",
    "fusion", "dropout", "video_aggregation",
)  # fmt: skip
_FLAT_AUGMENT = ("speed_min", "speed_max", "rotation_deg", "flip_prob", "color_jitter", "noise_std")


def _sub_config(cls: type, value: Any) -> Any:
    """A sub-config given as a mapping (Python callers, a JSON round trip) built into its dataclass."""
    return cls(**value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class FinetuneLipsyncConfig:
    """How the lip-sync detector is built and fine-tuned (defaults: the demo, ~37 videos, in ~2.5 min on 1 CPU core).

    Attributes:
        model: The architecture, :class:`LipSyncArchitecture` (the champion's own when fine-tuning from it, except
            ``hop_s``, ``video_aggregation`` and ``dropout``, which follow this run's settings).
        augment: The training augmentation, :class:`AugmentConfig`.
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
        precision: The training autocast: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA only, with a gradient
            scaler); see :mod:`components.common.device` (``auto``: bf16 on GPUs and CPUs that have it, else fp16 on
            CUDA, fp32 on CPUs).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        num_threads: Torch CPU threads; 0 (auto) is the CPUs available to the process (cgroup quota, affinity).
        loader_workers: DataLoader worker processes that read the training shards (0: the training process).
        seed: Seed of the split, initialization, shuffling and augmentation.
        pretrained: ``""`` (from scratch), a ``.safetensors`` path (``config.json`` beside it when present),
            or ``champion`` (the registry's champion of ``lipsync-<client>``; from scratch when there is none).
        max_windows_per_video: Cap on training windows per video per epoch (0: no cap).
        sync_negatives: Self-supervised negatives per real training window per epoch (SyncNet-style; 0: off): the
            window's mouth crops with the clip's own audio shifted by ``sync_shift_min_frames`` ..
            ``sync_shift_max_frames`` frames (at ``model.fps``, either direction), labelled fake. Every real clip
            then also teaches what out-of-sync looks like, which a few dozen labelled fakes cannot (README, "Why
            the detector learned nothing on version 2": with 3-25 frames the default architecture starts learning
            within 6 epochs, with 1-6 it does not).
        sync_shift_min_frames: Smallest shift of a self-supervised negative, in frames.
        sync_shift_max_frames: Largest shift of a self-supervised negative, in frames.
        distributed: More than one process (nodes x processes per node): the stage runs as a Kubeflow Trainer
            TrainJob, see :class:`components.common.config.DistributedConfig`.
    """

    #: Settings that moved: old key -> where it lives now (a file with the old key is refused with that message).
    MOVED: ClassVar[dict[str, str]] = {
        **{name: f"finetune_lipsync.model.{name}" for name in _FLAT_ARCHITECTURE},
        "model_fps": "finetune_lipsync.model.fps",
        "use_augmentation": "finetune_lipsync.augment.enabled",
        **{name: f"finetune_lipsync.augment.{name}" for name in _FLAT_AUGMENT},
    }

    model: LipSyncArchitecture = field(default_factory=LipSyncArchitecture)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
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
    precision: str = "auto"
    device: str = "auto"
    num_threads: int = 0
    loader_workers: int = 0
    seed: int = 0
    pretrained: str = "champion"
    max_windows_per_video: int = 0
    sync_negatives: int = 1
    sync_shift_min_frames: int = 3
    sync_shift_max_frames: int = 25
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distributed", _sub_config(DistributedConfig, self.distributed))
        object.__setattr__(self, "model", _sub_config(LipSyncArchitecture, self.model))
        object.__setattr__(self, "augment", _sub_config(AugmentConfig, self.augment))
        _require(isinstance(self.model, LipSyncArchitecture), f"model must be a mapping, got {self.model!r}")
        _require(isinstance(self.augment, AugmentConfig), f"augment must be a mapping, got {self.augment!r}")
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
        _require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _require(is_device_name(self.device), f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _require(0 <= self.loader_workers <= 64, f"loader_workers must be 0..64, got {self.loader_workers}")
        _require(
            self.pretrained in ("", "champion") or self.pretrained.endswith(".safetensors"),
            f"pretrained must be '', 'champion' or a .safetensors path, got {self.pretrained!r}",
        )
        _require(
            self.max_windows_per_video >= 0, f"max_windows_per_video must be >= 0, got {self.max_windows_per_video}"
        )
        _require(0 <= self.sync_negatives <= 8, f"sync_negatives must be 0..8, got {self.sync_negatives}")
        _require(
            1 <= self.sync_shift_min_frames <= self.sync_shift_max_frames <= 50,
            "need 1 <= sync_shift_min_frames <= sync_shift_max_frames <= 50, got "
            f"{self.sync_shift_min_frames}, {self.sync_shift_max_frames}",
        )

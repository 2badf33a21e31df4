"""Settings of the finetune_clip stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import ClassVar

from components.common.config import DistributedConfig
from components.common.device import PRECISIONS, is_device_name
from components.common.errors import require

STRATEGIES = ("lora", "hybrid", "full")
POOLINGS = ("mean", "max")


_require = functools.partial(require, section="finetune_clip")
_require_federated = functools.partial(require, section="finetune_clip.federated")
_SITE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class FederatedConfig:
    """Federated LoRA across the client's sites with Flower (``finetune_clip.federated``; off by default).

    Each site trains the LoRA adapter on its own videos and sends only the adapter's weights and its number of
    training videos; the server averages them (FedAvg weighted by videos) for ``rounds`` rounds, and the result is
    registered as the month's challenger like any finetune_clip model
    (:mod:`~components.finetune_clip.federated`). Only ``strategy: lora`` federates.

    Attributes:
        enabled: Train federated instead of in one process.
        sites: The sites, at least 2: each a folder under ``storage.videos_prefix`` that holds that site's videos
            (``videos/<site>/...``). In the embedded default Flower's simulation runtime runs one ClientApp per
            site on this machine; a training video outside every site's folder is not trained on (logged).
        rounds: Federated rounds (each: every site trains ``local_epochs`` from the current global adapter, then
            the server aggregates). ``finetune_clip.epochs`` does not apply.
        local_epochs: Epochs each site trains per round.
        clip_norm: Server-side update clipping (Flower's ``DifferentialPrivacyServerSideFixedClipping``): each
            site's adapter update (its weights minus the round's global weights) is scaled to L2 norm at most
            this before averaging, bounding what one site can move the model; 0 disables.
        noise_multiplier: Gaussian noise added to the aggregate, its standard deviation
            ``noise_multiplier * clip_norm / sites`` (central differential privacy); 0: clipping only. Needs
            ``clip_norm > 0``.
    """

    enabled: bool = False
    sites: tuple[str, ...] = ()
    rounds: int = 10
    local_epochs: int = 2
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.sites, list | str):
            object.__setattr__(self, "sites", (self.sites,) if isinstance(self.sites, str) else tuple(self.sites))
        _require_federated(isinstance(self.enabled, bool), f"enabled must be true or false, got {self.enabled!r}")
        _require_federated(
            all(isinstance(s, str) and _SITE.match(s) for s in self.sites),
            f"sites must be folder names (lower-case letters, digits, '-', '_'), got {self.sites!r}",
        )
        _require_federated(len(set(self.sites)) == len(self.sites), f"sites must be distinct, got {self.sites!r}")
        _require_federated(
            not self.enabled or len(self.sites) >= 2, f"enabled needs at least 2 sites, got {self.sites!r}"
        )
        _require_federated(1 <= self.rounds <= 1000, f"rounds must be 1..1000, got {self.rounds}")
        _require_federated(1 <= self.local_epochs <= 100, f"local_epochs must be 1..100, got {self.local_epochs}")
        _require_federated(self.clip_norm >= 0, f"clip_norm must be >= 0, got {self.clip_norm}")
        _require_federated(self.noise_multiplier >= 0, f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        _require_federated(
            self.noise_multiplier == 0 or self.clip_norm > 0,
            f"noise_multiplier {self.noise_multiplier} needs clip_norm > 0 (the noise is scaled by it)",
        )


@dataclass(frozen=True)
class FinetuneClipConfig:
    """How the CLIP search model is adapted to a client. The defaults train the demo in about a minute on 2 CPU cores.

    Attributes:
        base_model: The base CLIP: a Hugging Face hub id (``openai/clip-vit-base-patch32``), a local folder
            written by ``save_pretrained`` or an ``s3://bucket/prefix`` folder. ``""`` means the small demo
            base CLIP that ``clipsync demo-data`` pretrains into ``{state_dir}/models/base-clip``.
        strategy: ``lora`` (low-rank adapters on ``target_modules`` of both towers, via peft), ``hybrid``
            (vision tower frozen, text tower and text projection trained) or ``full`` (every weight).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: Dropout on the LoRA branch input.
        target_modules: Module names that receive LoRA adapters (both towers' attention projections).
        epochs: Most epochs to train (early stopping may end sooner).
        batch_size: Videos per micro-batch (the label texts of those videos form the text side).
        grad_accum: Micro-batches accumulated per optimizer step.
        lr: AdamW peak learning rate (reached after the warm-up, then cosine decay to 0). The default 1e-3
            suits LoRA on the small demo base and a few dozen videos (the seed's 1e-4 left the demo adapter
            barely better than the base after 40 epochs); use 1e-4 for LoRA on ViT-B/32 with thousands of
            videos and 1e-5..1e-4 for ``hybrid`` / ``full``.
        warmup_ratio: Share of all optimizer steps spent in linear warm-up.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient norm clipping (0 disables).
        pooling: Temporal pooling of frame embeddings into a video embedding: ``mean`` or ``max``
            (element-wise over L2-normalized frame embeddings, then re-normalized).
        frames_per_video: Frames per video, sampled evenly over the video's search frames.
        early_stopping_patience: Epochs without a lower validation loss before training stops (0 disables).
            20 because the validation loss of a few dozen videos is noisy: on the demo data patience 3 stopped
            at epoch 14 while retrieval was still improving (test mAP 0.32 vs. 0.41 with 8), and with 80 epochs /
            patience 20 test R@1 (category relevance) rose from the base's 0.233 to 0.349 where 40 / 8 gave 0.233.
        eval_relevance: Which test videos count as right answers to a label query in evaluate: ``category``
            (every video of the query's category: a search for "laparoscopic cholecystectomy" should find
            the client's cholecystectomy videos, whichever paraphrase they were labelled with) or ``label``
            (only videos carrying that exact label text; stricter, and noisy when labels are paraphrases).
        precision: The training autocast: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA only, with a gradient
            scaler); see :mod:`components.common.device` (``auto``: bf16 on GPUs that have it, else fp16; fp32 on
            CPUs without native bf16).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        num_threads: Torch CPU threads; 0 (auto) is the CPUs available to the process (cgroup quota, affinity).
        loader_workers: DataLoader worker processes that read the training shards (0: the training process).
        seed: Seed of initialization, shuffling and dropout (each epoch reseeds from it, so a resumed run
            follows the same path as an uninterrupted one).
        negative_weight: Weight of a known negative (a result the client marked not relevant, from the feedback
            stage) in the contrastive loss's denominators, relative to an ordinary in-batch negative (>= 1; 1: no
            extra weight). A setting of the loss, so it is part of the checkpoint fingerprint.
        history_days: Besides the window's videos, train on the labelled videos earlier months trained on
            (:mod:`~components.finetune_clip.history`) that were first seen within this many days before the
            window's end; 0: all of them.
        history_max_videos: Most remembered videos per run, newest first; 0: no cap.
        warm_start: Start from the champion's LoRA adapter when it was trained on the same base with the same
            LoRA shape (rank, alpha, target modules), instead of from the base; other strategies start from the
            base.
        distributed: More than one process (nodes x processes per node): the stage runs as a Kubeflow Trainer
            TrainJob, see :class:`components.common.config.DistributedConfig`.
        federated: Federated LoRA across the client's sites, :class:`FederatedConfig` (off by default).
    """

    #: Settings that moved: old key -> where it lives now (a file with the old key is refused with that message).
    MOVED: ClassVar[dict[str, str]] = {
        "mixed_precision": "finetune_clip.precision (auto, fp32, bf16, fp16; 'no' is fp32)",
    }

    base_model: str = ""
    strategy: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 80
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    pooling: str = "mean"
    frames_per_video: int = 4
    early_stopping_patience: int = 20
    eval_relevance: str = "category"
    precision: str = "auto"
    device: str = "auto"
    num_threads: int = 0
    loader_workers: int = 0
    seed: int = 0
    negative_weight: float = 2.0
    history_days: int = 0
    history_max_videos: int = 0
    warm_start: bool = True
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)

    def __post_init__(self) -> None:
        # Mappings from a JSON round trip or a Python caller.
        if isinstance(self.distributed, dict):
            object.__setattr__(self, "distributed", DistributedConfig(**self.distributed))
        if isinstance(self.federated, dict):
            object.__setattr__(self, "federated", FederatedConfig(**self.federated))
        # YAML and JSON give lists; keep the frozen dataclass hashable.
        if isinstance(self.target_modules, list | str):
            modules = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
            object.__setattr__(self, "target_modules", tuple(modules))
        _require(isinstance(self.base_model, str), f"base_model must be a string, got {self.base_model!r}")
        _require(self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        _require(1 <= self.lora_r <= 1024, f"lora_r must be 1..1024, got {self.lora_r}")
        _require(self.lora_alpha >= 1, f"lora_alpha must be >= 1, got {self.lora_alpha}")
        _require(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _require(
            len(self.target_modules) > 0 and all(isinstance(m, str) and m for m in self.target_modules),
            f"target_modules must be a non-empty list of module names, got {self.target_modules!r}",
        )
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 2, f"batch_size must be >= 2 (a contrastive batch), got {self.batch_size}")
        _require(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        _require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}")
        _require(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        _require(
            self.eval_relevance in ("category", "label"),
            f"eval_relevance must be category or label, got {self.eval_relevance!r}",
        )
        _require(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _require(1 <= self.frames_per_video <= 64, f"frames_per_video must be 1..64, got {self.frames_per_video}")
        _require(
            self.early_stopping_patience >= 0,
            f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}",
        )
        _require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _require(is_device_name(self.device), f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        _require(1.0 <= self.negative_weight <= 100.0, f"negative_weight must be 1..100, got {self.negative_weight}")
        _require(0 <= self.history_days <= 36600, f"history_days must be 0..36600, got {self.history_days}")
        _require(self.history_max_videos >= 0, f"history_max_videos must be >= 0, got {self.history_max_videos}")
        _require(isinstance(self.warm_start, bool), f"warm_start must be true or false, got {self.warm_start!r}")
        _require(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _require(0 <= self.loader_workers <= 64, f"loader_workers must be 0..64, got {self.loader_workers}")
        _require(isinstance(self.federated, FederatedConfig), f"federated must be a mapping, got {self.federated!r}")
        _require(
            not self.federated.enabled or self.strategy == "lora",
            f"federated training sends LoRA adapters only: strategy must be lora, got {self.strategy!r}",
        )

    def training_fingerprint(self) -> dict:
        """The fields a checkpoint must share with the current run to be resumed (everything but device knobs)."""
        skip = {"device", "num_threads", "loader_workers", "precision", "early_stopping_patience", "distributed"}
        skip |= {"federated"}  # added below only when enabled
        out = {}
        for name in self.__dataclass_fields__:
            if name not in skip:
                value = getattr(self, name)
                out[name] = list(value) if isinstance(value, tuple) else value
        if self.federated.enabled:  # off, it leaves the fingerprint of earlier checkpoints as it was
            fed = dataclasses.asdict(self.federated)
            out["federated"] = {k: list(v) if isinstance(v, tuple) else v for k, v in fed.items()}
        return out

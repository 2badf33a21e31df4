"""CLIP model code shared by training, evaluation and (later) serving: loading, strategies, encoders.

A *base reference* is a Hugging Face hub id (``openai/clip-vit-base-patch32``), a local folder written by
``save_pretrained`` or an ``s3://bucket/prefix`` folder. A *model folder* written by
:func:`components.finetune_clip.core.export_model` holds ``card.json`` naming its base, its strategy and
its files; :func:`load_clip_model` accepts either.

Videos are encoded as the pooled (mean or max) L2-normalized embeddings of a few frames; texts as the
L2-normalized text features. Pixels are resized to the model's image size and normalized with the image
processor's mean and std, in torch, so training and serving share one preprocessing path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from components.finetune_clip.config import FinetuneClipConfig

logger = logging.getLogger("clipsync.finetune_clip")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CARD_FILE = "card.json"
HYBRID_PREFIXES = ("text_model.", "text_projection.")


class ModelLoadError(RuntimeError):
    """A base model or a trained model folder cannot be loaded."""


@dataclass(frozen=True)
class ImageSpec:
    """How frames are turned into pixel values: square side and per-channel mean/std."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


@dataclass
class ClipBundle:
    """A loaded CLIP with what is needed to feed it.

    Attributes:
        model: ``CLIPModel`` or a peft ``PeftModel`` wrapping one.
        tokenizer: The text tokenizer.
        image_spec: Pixel preprocessing.
        base_ref: The base reference the weights come from.
        strategy: ``None`` for a base model, else the fine-tuning strategy of the model folder.
        card: The model folder's ``card.json`` (empty for a base model).
    """

    model: Any
    tokenizer: Any
    image_spec: ImageSpec
    base_ref: str
    strategy: str | None = None
    card: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainableStats:
    """Trainable parameters after a strategy was applied."""

    strategy: str
    trainable: int
    total: int
    names: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def resolve_base_ref(base_model: str, state_dir: str | Path) -> str:
    """The configured base model, with ``""`` meaning the demo base CLIP under ``state_dir``."""
    return base_model or str(Path(state_dir) / "models" / "base-clip")


def _fetch_s3_folder(uri: str, cache_dir: Path) -> Path:
    """Download every object under ``s3://bucket/prefix`` into ``cache_dir/base-models/<bucket__prefix>``."""
    from components.common import storage

    dest = Path(cache_dir) / "base-models" / uri[len("s3://") :].strip("/").replace("/", "__")
    store = storage.open_store(uri.rstrip("/"))
    keys = list(store.list_keys(""))
    if not keys:
        raise ModelLoadError(f"no files under {uri}")
    for key in keys:
        storage.fetch_to_local(store, key, dest)
    return dest


def _read_image_spec(folder: Path | None, model: Any) -> ImageSpec:
    size = int(model.config.vision_config.image_size)
    mean, std = CLIP_MEAN, CLIP_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        crop = pre.get("crop_size") or {}
        if isinstance(crop, dict) and crop.get("height"):
            size = int(crop["height"])
        elif isinstance(crop, int):
            size = crop
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    return ImageSpec(size=size, mean=mean, std=std)


def load_base_clip(ref: str, cache_dir: str | Path | None = None) -> ClipBundle:
    """Load a base CLIP with its tokenizer and image preprocessing.

    Args:
        ref: Hub id, local folder or ``s3://bucket/prefix`` folder.
        cache_dir: Where an s3 folder is fetched to (and the hub cache, if given).

    Returns:
        The bundle in eval mode on CPU.

    Raises:
        ModelLoadError: If the reference cannot be loaded (a hub id offline, a missing folder).
    """
    from transformers import AutoTokenizer, CLIPModel

    folder: Path | None = None
    source = ref
    if ref.startswith("s3://"):
        if cache_dir is None:
            raise ModelLoadError(f"a cache_dir is needed to fetch {ref}")
        folder = _fetch_s3_folder(ref, Path(cache_dir))
        source = str(folder)
    elif Path(ref).expanduser().exists() or ref.startswith(("/", "./", "../", "~")):
        folder = Path(ref).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"base model folder {folder} has no config.json (run `clipsync demo-data` for the demo base CLIP, "
                "or set finetune_clip.base_model)"
            )
        source = str(folder)
    try:
        kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None and folder is None else {}
        model = CLIPModel.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        hint = (
            " (is the Hugging Face hub reachable? set HF_HUB_OFFLINE=1 and pre-fill the cache)"
            if folder is None
            else ""
        )
        raise ModelLoadError(f"cannot load base CLIP {ref!r}{hint}: {exc}") from exc
    if folder is None:
        try:
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(source, **kwargs)
            crop = proc.crop_size
            size = int(crop["height"]) if isinstance(crop, dict) else int(crop)
            spec = ImageSpec(size=size, mean=tuple(proc.image_mean), std=tuple(proc.image_std))
        except OSError:
            spec = _read_image_spec(None, model)
    else:
        spec = _read_image_spec(folder, model)
    model.eval()
    return ClipBundle(model=model, tokenizer=tokenizer, image_spec=spec, base_ref=ref)


def apply_strategy(model: Any, cfg: FinetuneClipConfig) -> tuple[Any, TrainableStats]:
    """Make the chosen parameters trainable (and add LoRA adapters for ``lora``).

    ``lora``: only the adapters' ``lora_A``/``lora_B`` matrices on ``cfg.target_modules`` of both towers.
    ``hybrid``: the text tower and the text projection (vision tower, visual projection, logit scale frozen).
    ``full``: every parameter, the logit scale included.

    Args:
        model: A ``CLIPModel``.
        cfg: The stage config (strategy and LoRA settings).

    Returns:
        The model to train (a ``PeftModel`` for ``lora``) and its trainable-parameter statistics.
    """
    if cfg.strategy == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
        )
        model = get_peft_model(model, lora)
    else:
        for name, param in model.named_parameters():
            param.requires_grad = cfg.strategy == "full" or name.startswith(HYBRID_PREFIXES)
    return model, trainable_stats(model, cfg.strategy)


def trainable_stats(model: Any, strategy: str) -> TrainableStats:
    """Count trainable and total parameters of ``model``."""
    names, trainable, total = [], 0, 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            names.append(name)
    return TrainableStats(strategy=strategy, trainable=trainable, total=total, names=tuple(names))


def sample_frame_indices(n_frames: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``n_frames`` (repeats when the video has fewer frames)."""
    if n_frames <= 0:
        raise ValueError("a video needs at least one frame")
    return np.round(np.linspace(0, n_frames - 1, k)).astype(np.int64) if k > 1 else np.array([n_frames // 2])


def prepare_frames(frames: np.ndarray, k: int, spec: ImageSpec) -> torch.Tensor:
    """Sample ``k`` frames and resize them to the model's side, kept as uint8 (normalized per batch).

    Args:
        frames: ``uint8 [N, H, W, 3]`` RGB frames.
        k: Frames to keep.
        spec: The model's image spec.

    Returns:
        ``uint8 [k, 3, S, S]``.
    """
    import torch
    import torch.nn.functional as F

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    picked = torch.from_numpy(np.ascontiguousarray(frames[sample_frame_indices(len(frames), k)]))
    if picked.shape[1:3] == (spec.size, spec.size):  # already the model's size: no float round trip
        return picked.permute(0, 3, 1, 2).contiguous()
    x = _square(picked.permute(0, 3, 1, 2).float())
    x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _square(x: torch.Tensor) -> torch.Tensor:
    """Center-crop ``[..., H, W]`` to a square (the search frames are usually square already)."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top : top + side, left : left + side]


def normalize_pixels(
    images: torch.Tensor, size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` to normalized float pixel values at ``size`` x ``size``."""
    import torch
    import torch.nn.functional as F

    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:]).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(_square(x), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).reshape(*lead, 3, size, size)


def pool_frames(frame_emb: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool normalized frame embeddings ``[B, N, D]`` into normalized video embeddings ``[B, D]``."""
    import torch.nn.functional as F

    if pooling == "mean":
        pooled = frame_emb.mean(dim=1)
    elif pooling == "max":
        pooled = frame_emb.max(dim=1).values
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    return F.normalize(pooled, dim=-1)


def encode_videos(model: Any, frames: torch.Tensor, spec: ImageSpec, pooling: str = "mean") -> torch.Tensor:
    """Video embeddings from frames.

    Args:
        model: ``CLIPModel`` or ``PeftModel``.
        frames: uint8 ``[B, N, 3, H, W]`` (from :func:`prepare_frames`); moved to the model's device.
        spec: Pixel preprocessing.
        pooling: ``mean`` or ``max`` over the N frames.

    Returns:
        ``[B, D]`` L2-normalized float embeddings on the model's device.
    """
    import torch.nn.functional as F

    from components.common.device import module_device

    frames = frames.to(module_device(model))
    b, n = frames.shape[:2]
    pixels = normalize_pixels(frames.reshape(b * n, *frames.shape[2:]), spec.size, spec.mean, spec.std)
    feats = model.get_image_features(pixel_values=pixels).pooler_output
    return pool_frames(F.normalize(feats.float(), dim=-1).reshape(b, n, -1), pooling)


def encode_texts(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """``[T, D]`` L2-normalized text embeddings on the model's device."""
    import torch.nn.functional as F

    from components.common.device import module_device

    device = module_device(model)
    max_len = min(
        int(getattr(tokenizer, "model_max_length", 77) or 77), 77, int(model.config.text_config.max_position_embeddings)
    )
    tokens = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    # No attention mask: CLIP's text tower is causal and pools the end-of-text token, which never sees the
    # padding after it, so the mask changes nothing but costs transformers a device-to-host check per batch.
    feats = model.get_text_features(input_ids=tokens["input_ids"].to(device)).pooler_output
    return F.normalize(feats.float(), dim=-1)


def load_clip_model(ref_or_dir: str | Path, cache_dir: str | Path | None = None, merge: bool = True) -> ClipBundle:
    """Load a trained model folder (``card.json`` present) on top of its base, or a base reference.

    Args:
        ref_or_dir: A model folder from :func:`~components.finetune_clip.core.export_model`, or a base reference.
        cache_dir: Passed to :func:`load_base_clip`.
        merge: Merge LoRA adapters into the base weights (faster inference; no effect for other strategies).

    Returns:
        The bundle in eval mode on CPU.
    """
    folder = Path(ref_or_dir)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        return load_base_clip(str(ref_or_dir), cache_dir)
    card = json.loads(card_path.read_text())
    strategy = card.get("strategy")
    base = load_base_clip(card["base_model"], cache_dir)
    model = base.model
    if strategy == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        if merge:
            model = model.merge_and_unload()
    elif strategy in ("hybrid", "full"):
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ModelLoadError(f"{folder}: weights not in the base model: {unexpected[:5]}")
        if strategy == "full" and missing:
            raise ModelLoadError(f"{folder}: full weights miss {missing[:5]}")
    else:
        raise ModelLoadError(f"{card_path}: unknown strategy {strategy!r}")
    model.eval()
    spec = (
        ImageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in card["image_spec"].items()})
        if card.get("image_spec")
        else base.image_spec
    )
    return ClipBundle(
        model=model,
        tokenizer=base.tokenizer,
        image_spec=spec,
        base_ref=card["base_model"],
        strategy=strategy,
        card=card,
    )

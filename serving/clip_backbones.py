"""Shared CLIP backbones: each base model loaded once, the LoRA adapters of many clients attached to it.

:class:`ClipBackbones` loads each base model once and attaches every client's LoRA adapter to it (peft
``load_adapter``); a request switches to its client's adapter (``set_adapter``) under the base's lock. Hybrid /
full fine-tunes (whole towers changed) get their own copy. A server shared by many clients (a KServe pool) pins
its one base (``base_model``): loaded at start, kept, and any client model that does not fit it is refused.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("clipsync.serving.clip_backbones")


@dataclass
class _Backbone:
    """One loaded CLIP and the client adapters attached to it."""

    bundle: Any
    shared: bool
    adapters: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: The adapter this process last activated; ``None`` after any change to the adapters (then it is set again).
    active: str | None = None


@dataclass
class ClipHandle:
    """A client's view of a loaded CLIP: which backbone, which adapter, how to feed it."""

    name: str
    backbone: _Backbone
    adapter: str | None
    pooling: str
    frames_per_video: int

    @property
    def tokenizer(self) -> Any:
        return self.backbone.bundle.tokenizer

    @property
    def image_spec(self) -> Any:
        return self.backbone.bundle.image_spec

    @property
    def embed_dim(self) -> int:
        """Length of the embeddings (CLIP's projection dimension)."""
        return int(self.backbone.bundle.model.config.projection_dim)

    def _activate(self) -> Any:
        """The backbone's model with this client's adapter active (call under the backbone's lock).

        peft's ``set_adapter`` walks every module of the model (about 1 ms on the demo CLIP, a fifth of a one-query
        search), so it runs only when another adapter was active.
        """
        model = self.backbone.bundle.model
        if self.adapter is not None and self.backbone.active != self.adapter:
            model.set_adapter(self.adapter)
            self.backbone.active = self.adapter
        return model

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """``[T, D]`` normalized text embeddings with this client's adapter."""
        import torch

        from components.finetune_clip.model import encode_texts

        with self.backbone.lock, torch.inference_mode():
            model = self._activate()
            return encode_texts(model, self.tokenizer, texts).cpu().numpy()

    def encode_frames(self, videos: list[np.ndarray]) -> np.ndarray:
        """``[B, D]`` embeddings of videos given as uint8 ``[N, H, W, 3]`` frames (an image is one frame)."""
        import torch

        from components.finetune_clip.model import encode_videos, prepare_frames

        k = max(1, self.frames_per_video)
        prepared = torch.stack([prepare_frames(v, k if len(v) > 1 else 1, self.image_spec) for v in videos])
        with self.backbone.lock, torch.inference_mode():
            model = self._activate()
            return encode_videos(model, prepared, self.image_spec, self.pooling).cpu().numpy()


def _adapter_name(name: str) -> str:
    return name.replace(".", "_")


class ClipBackbones:
    """Process-wide registry: one base CLIP per base reference, LoRA adapters of many clients on it.

    Args:
        cache_dir: Where base models fetched from ``s3://`` are cached.
        base_model: The one base this server shares (a KServe pool): it is loaded at start and kept loaded,
            and a client model trained on another base, or a hybrid/full fine-tune (a whole CLIP of its own), is
            refused with :class:`serving.folder_error.ModelFolderError`. ``None``: any base, loaded on demand.
        device: Where every model goes (the ``serving.device`` setting; ``auto``: CUDA when available).
    """

    def __init__(
        self, cache_dir: str | Path | None = None, base_model: str | None = None, device: str = "auto"
    ) -> None:
        from components.common.device import resolve_device

        self.cache_dir = cache_dir
        self.base_model = base_model or None
        self.device = resolve_device(device)
        self._shared: dict[str, _Backbone] = {}
        self._counter = 0
        self._lock = threading.Lock()
        if self.base_model is not None:
            from components.finetune_clip.model import load_base_clip

            bundle = load_base_clip(self.base_model, cache_dir)
            bundle.model.to(self.device)
            self._shared[self.base_model] = _Backbone(bundle=bundle, shared=True)
            logger.info("base CLIP %s loaded (shared by every client of this server)", self.base_model)

    def _check_fits(self, name: str, card: dict[str, Any]) -> None:
        from serving.folder_error import ModelFolderError

        if self.base_model is None:
            return
        if card.get("strategy") != "lora":
            raise ModelFolderError(
                f"{name} is a {card.get('strategy', 'base')!r} model (a whole CLIP); this server shares the base "
                f"{self.base_model!r} between LoRA adapters only"
            )
        if str(card.get("base_model")) != self.base_model:
            raise ModelFolderError(
                f"{name}'s adapter was trained on base {card.get('base_model')!r}; this server serves adapters of "
                f"base {self.base_model!r}"
            )

    def attach(self, name: str, model_dir: str | Path) -> ClipHandle:
        """Load client model ``name`` from ``model_dir`` (a clipsync CLIP model folder or a plain base).

        Every attach gets its own adapter name, so a new version of a client can be attached beside the one
        still answering requests and the old one detached after the swap.

        Raises:
            components.finetune_clip.model.ModelLoadError: If the folder cannot be loaded.
            serving.folder_error.ModelFolderError: If it does not fit this server's shared base.
        """
        from components.finetune_clip.model import CARD_FILE, load_base_clip, load_clip_model

        model_dir = Path(model_dir)
        card_path = model_dir / CARD_FILE
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        self._check_fits(name, card)
        pooling = str(card.get("pooling", "mean"))
        frames = int(card.get("frames_per_video", 4))
        with self._lock:
            self._counter += 1
            if card.get("strategy") == "lora":
                from peft import PeftModel

                base_ref = str(card["base_model"])
                backbone = self._shared.get(base_ref)
                adapter = f"{_adapter_name(name)}_{self._counter}"
                if backbone is None:
                    bundle = load_base_clip(base_ref, self.cache_dir)
                    bundle.model.to(self.device)
                    backbone = _Backbone(bundle=bundle, shared=True)
                    self._shared[base_ref] = backbone
                    logger.info("base CLIP %s loaded for %s", base_ref, name)
                with backbone.lock:
                    backbone.active = None  # loading an adapter may change the active one
                    if isinstance(backbone.bundle.model, PeftModel):
                        backbone.bundle.model.load_adapter(str(model_dir), adapter_name=adapter, is_trainable=False)
                    else:
                        backbone.bundle.model = PeftModel.from_pretrained(
                            backbone.bundle.model, str(model_dir), adapter_name=adapter, is_trainable=False
                        ).eval()
                    backbone.bundle.model.to(self.device)  # the new adapter's weights join the base's device
                backbone.adapters.add(adapter)
                handle = ClipHandle(name, backbone, adapter, pooling, frames)
            else:
                bundle = load_clip_model(model_dir, self.cache_dir) if card else load_base_clip(str(model_dir))
                bundle.model.to(self.device)
                handle = ClipHandle(name, _Backbone(bundle=bundle, shared=False), None, pooling, frames)
        logger.info("clip model %s attached (%s)", name, card.get("strategy", "base"))
        return handle

    def detach(self, handle: ClipHandle) -> None:
        """Remove a client model's adapter; a base is dropped with its last adapter (unless it is the server's)."""
        if not handle.backbone.shared:
            return
        with self._lock:
            backbone = handle.backbone
            if handle.adapter not in backbone.adapters:
                return
            backbone.adapters.discard(handle.adapter)
            with backbone.lock:
                backbone.active = None
                model = backbone.bundle.model
                if backbone.adapters:
                    model.set_adapter(sorted(backbone.adapters)[0])
                    model.delete_adapter(handle.adapter)
                elif backbone is self._shared.get(self.base_model or ""):
                    backbone.bundle.model = model.unload()  # the plain base again, kept for the next client
                else:
                    self._shared = {k: v for k, v in self._shared.items() if v is not backbone}

    def shared_bases(self) -> dict[str, list[str]]:
        """Base reference -> adapters attached (for logs and tests)."""
        with self._lock:
            return {ref: sorted(b.adapters) for ref, b in self._shared.items()}

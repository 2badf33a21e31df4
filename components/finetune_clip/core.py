"""finetune_clip: adapt a base CLIP to a client's labelled videos (LoRA, hybrid or full fine-tuning).

Training is symmetric contrastive (InfoNCE) between video embeddings (pooled frame embeddings) and the
embeddings of the label texts of the videos in the batch. A video may carry several labels and a label
may be shared by several videos: every (video, label) pair that is true is a positive, and a positive is
never used as a negative of the same video or label (see :func:`contrastive_loss`).

Checkpoints (no pickle, :mod:`components.common.checkpoints`): ``<work_dir>/checkpoints/last/`` holds the
trainable weights, the AdamW state, the scheduler position, the epoch, the early-stopping state and the
history; ``best.safetensors`` holds the best epoch's trainable weights. The stage mirrors the folder to the
artifacts store after every epoch, so a retried (preempted) pod resumes. Every epoch reseeds torch and the
shuffle from ``seed + epoch``, so a run resumed from its last checkpoint follows the same path as an
uninterrupted one (exactly on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common import checkpoints as ckpt
from components.common.no_challenger import NotTrainable, write_no_challenger
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_clip.model import (
    CARD_FILE,
    HYBRID_PREFIXES,
    ClipBundle,
    ImageSpec,
    TrainableStats,
    apply_strategy,
    encode_texts,
    encode_videos,
    prepare_frames,
)

if TYPE_CHECKING:
    import torch

    from components.common.config import ClientConfig

logger = logging.getLogger("clipsync.finetune_clip")

LogFn = Callable[[dict[str, float], int], None]
CHECKPOINT_FORMAT = 2  # the checkpoint layout; a checkpoint of another format is not resumed


@dataclass
class ClipSample:
    """One labelled video ready for the model.

    Attributes:
        video_id: The manifest's video id.
        frames: uint8 ``[F, 3, S, S]`` (see :func:`~components.finetune_clip.model.prepare_frames`).
        labels: Its label texts (at least one for training).
        category: The client's category (for per-category metrics).
    """

    video_id: str
    frames: Any
    labels: tuple[str, ...]
    category: str = ""


@dataclass
class TrainResult:
    """What :func:`train_clip` produced (the model holds the best epoch's weights)."""

    model: Any
    stats: TrainableStats
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    device: str
    precision: str


@dataclass
class FinetuneReport:
    """Summary of one finetune_clip stage run."""

    model_dir: str
    strategy: str
    base_model: str
    n_train: int
    n_val: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    trainable_fraction: float = 0.0
    best_epoch: int = 0
    best_val_loss: float = float("nan")
    epochs_run: int = 0
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    registered_version: str | None = None
    run_id: str | None = None
    not_trained_reason: str = ""

    def as_metrics(self) -> dict[str, float]:
        return {
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_skipped": len(self.skipped),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_fraction": self.trainable_fraction,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "epochs_run": self.epochs_run,
        }


def positive_mask(video_labels: Sequence[Sequence[str]], texts: Sequence[str]) -> torch.Tensor:
    """``[B, T]`` bool: text ``j`` is one of video ``i``'s labels."""
    import torch

    return torch.tensor([[t in set(labels) for t in texts] for labels in video_labels], dtype=torch.bool)


def batch_texts(video_labels: Sequence[Sequence[str]]) -> list[str]:
    """The unique label texts of a batch, in first-seen order (a shared label appears once)."""
    return list(dict.fromkeys(t for labels in video_labels for t in labels))


def contrastive_loss(
    video_emb: torch.Tensor, text_emb: torch.Tensor, positive: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE.

    With ``l = logit_scale * v @ t.T`` and ``P`` the positive mask, the video-to-text term of a positive
    pair ``(i, j)`` is ``-log(exp(l_ij) / (exp(l_ij) + sum_{k not in P_i} exp(l_ik)))``: the pair competes
    only with the video's negatives, never with its other labels. Pair terms are averaged per video, then
    over videos with at least one positive; the text-to-video term is the same on ``l.T`` (a label shared
    by two videos is positive for both). The loss is the mean of the two directions. With one label per
    video and no shared labels (``P`` = identity) this is exactly CLIP's loss.

    The logits are computed in float32 whatever the embeddings' dtype or an active autocast (half precision
    would round away the small differences between similarities), on the embeddings' device.

    Args:
        video_emb: ``[B, D]`` L2-normalized video embeddings.
        text_emb: ``[T, D]`` L2-normalized text embeddings.
        positive: ``[B, T]`` bool mask of true (video, text) pairs.
        logit_scale: Multiplier of the cosine similarities (CLIP's ``logit_scale.exp()``).

    Returns:
        Scalar loss (float32).

    Raises:
        ValueError: If the mask does not match the embeddings or holds no positive pair.
    """
    import torch

    from components.common.device import no_autocast

    if tuple(positive.shape) != (video_emb.shape[0], text_emb.shape[0]):
        raise ValueError(
            f"positive mask {tuple(positive.shape)} does not match logits {(video_emb.shape[0], text_emb.shape[0])}"
        )
    if not bool(positive.any()):  # checked on the mask as built (CPU), not on the device
        raise ValueError("no positive pair in the batch")
    with no_autocast(video_emb.device):
        logits = (video_emb.float() @ text_emb.float().T) * logit_scale
        pos = positive.to(device=logits.device, dtype=torch.bool)
        return 0.5 * (_directional_nll(logits, pos) + _directional_nll(logits.T, pos.T))


def _directional_nll(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One direction of :func:`contrastive_loss` (rows are the anchors), without a host synchronization."""
    import torch

    # The dtype's lowest value stands for "minus infinity": it keeps a row without negatives finite in any
    # precision (a fixed -1e9 does not fit in float16).
    neg_lse = torch.logsumexp(logits.masked_fill(pos, torch.finfo(logits.dtype).min), dim=1, keepdim=True)
    nll = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits
    counts = pos.sum(dim=1)
    rows = (counts > 0).to(logits.dtype)
    per_row = (nll * pos).sum(dim=1) / counts.clamp(min=1)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------- training


def _resolve_precision(cfg: FinetuneClipConfig, device: torch.device) -> str:
    import torch

    if cfg.mixed_precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"  # CPU autocast is slower than fp32 on CPUs without bf16 units
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise RuntimeError("finetune_clip.mixed_precision fp16 needs CUDA (use bf16 or no on CPU)")
    return cfg.mixed_precision


def _batches(n: int, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        # A one-video batch has no negative; fold it into the previous batch.
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out


def _logit_scale(model: Any) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=100.0)


def _batch_loss(
    model: Any,
    bundle: ClipBundle,
    samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    video_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """The contrastive loss of one batch; ``video_emb`` (``[B, D]``) stands in for a frozen vision tower."""
    import torch

    labels = [s.labels for s in samples]
    texts = batch_texts(labels)
    if video_emb is None:
        video_emb = encode_videos(model, torch.stack([s.frames for s in samples]), bundle.image_spec, cfg.pooling)
    text_emb = encode_texts(model, bundle.tokenizer, texts)
    return contrastive_loss(video_emb, text_emb, positive_mask(labels, texts), _logit_scale(model))


def embed_samples(
    bundle: ClipBundle, model: Any, samples: Sequence[ClipSample], pooling: str, batch_size: int = 32
) -> torch.Tensor:
    """``[N, D]`` video embeddings of ``samples`` on the model's device (no gradient; the caller sets eval mode)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            frames = torch.stack([s.frames for s in samples[i : i + batch_size]])
            outs.append(encode_videos(model, frames, bundle.image_spec, pooling))
    return torch.cat(outs) if outs else torch.empty(0)


def query_video_similarity(
    bundle: ClipBundle,
    model: Any,
    samples: Sequence[ClipSample],
    queries: Sequence[str],
    pooling: str,
    batch_size: int = 32,
    video_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[Q, V]`` cosine similarities (float32, on the model's device) of ``queries`` to the videos of ``samples``.

    Args:
        bundle: Tokenizer and image spec of ``model``.
        model: The CLIP to score with (the caller sets eval mode).
        samples: The videos.
        queries: Query texts.
        pooling: Temporal pooling of the frame embeddings.
        batch_size: Videos per forward pass (texts go 64 at a time).
        video_emb: Precomputed ``[V, D]`` video embeddings (a frozen vision tower), else computed here.
    """
    import torch

    from components.common.device import no_autocast

    with torch.no_grad():
        if video_emb is None:
            video_emb = embed_samples(bundle, model, samples, pooling, batch_size)
        text_emb = torch.cat(
            [encode_texts(model, bundle.tokenizer, list(queries[i : i + 64])) for i in range(0, len(queries), 64)]
        )
        with no_autocast(text_emb.device):
            return text_emb.float() @ video_emb.float().T


def _validate(
    model: Any,
    bundle: ClipBundle,
    val: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    autocast: Callable[[], Any],
    val_emb: torch.Tensor | None = None,
) -> dict[str, float]:
    import torch

    from components.evaluate.clip_eval import retrieval_metrics, retrieval_problem

    model.eval()
    losses, weights = [], []
    queries, relevant, q_cats = retrieval_problem(val)
    with torch.no_grad(), autocast():
        for idx in _batches(len(val), cfg.batch_size, np.arange(len(val))):
            emb = None if val_emb is None else val_emb[torch.from_numpy(idx).to(val_emb.device)]
            losses.append(float(_batch_loss(model, bundle, [val[i] for i in idx], cfg, emb)))
            weights.append(len(idx))
        sim = query_video_similarity(bundle, model, val, queries, cfg.pooling, cfg.batch_size, val_emb)
    metrics = retrieval_metrics(sim.cpu().numpy(), relevant, q_cats, [s.category for s in val], queries)
    return {
        "val_loss": float(np.average(losses, weights=weights)),
        "val_recall_at_1": metrics.recall_at_1,
        "val_recall_at_5": metrics.recall_at_5,
        "val_map": metrics.mean_ap,
    }


def _data_fingerprint(samples: Sequence[ClipSample]) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.video_id}|{'|'.join(s.labels)}\n".encode())
    return h.hexdigest()[:16]


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    import torch

    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)[:5]
        raise RuntimeError(f"checkpoint does not match the trainable parameters (e.g. {diff})")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device))


def train_clip(
    bundle: ClipBundle,
    train_samples: Sequence[ClipSample],
    val_samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    work_dir: Path,
    log_fn: LogFn | None = None,
    mirror: ckpt.CheckpointMirror | None = None,
) -> TrainResult:
    """Fine-tune ``bundle.model`` with the configured strategy; resume from a checkpoint when one fits.

    AdamW over the trainable parameters, linear warm-up then cosine decay (per optimizer step), gradient
    accumulation over ``cfg.grad_accum`` micro-batches, autocast where the device supports it, early
    stopping on the validation loss, a checkpoint at the end of every epoch. A checkpoint written with
    another config fingerprint or other training data is discarded (logged) and training starts over.
    With ``hybrid`` the frozen vision tower embeds every video once per run (training and validation
    videos); an epoch then runs only the text tower.

    Args:
        bundle: The base model (modified in place: ``bundle.model`` becomes the trained model).
        train_samples: Labelled training videos (at least 2).
        val_samples: Labelled validation videos (may be empty: then no early stopping, the last epoch wins).
        cfg: Stage settings.
        work_dir: Checkpoint folder (``work_dir/checkpoints``); not the exported model.
        log_fn: Called after every epoch with that epoch's metrics and the epoch number (1-based).
        mirror: Where every epoch's checkpoint is copied (the artifacts store) and, when ``work_dir`` holds
            none, pulled from: a retried pod resumes instead of starting over.

    Returns:
        The training result; ``result.model`` holds the best epoch's weights, in eval mode.

    Raises:
        NotTrainable: With fewer than 2 training videos.
    """
    import contextlib

    import torch
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from components.common.device import resolve_device

    if len(train_samples) < 2:
        raise NotTrainable(f"need at least 2 labelled training videos, got {len(train_samples)}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    precision = _resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    model, stats = apply_strategy(bundle.model, cfg)
    model.to(device)
    bundle.model = model
    logger.info(
        "strategy %s: %d of %d parameters trainable (%.3f%%), device %s, precision %s",
        stats.strategy,
        stats.trainable,
        stats.total,
        100 * stats.fraction,
        device,
        precision,
    )

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order0 = np.arange(len(train_samples))
    micro_per_epoch = len(_batches(len(train_samples), cfg.batch_size, order0))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_ratio * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    ckpt_dir = Path(work_dir) / "checkpoints"
    last_dir, best_file = ckpt_dir / ckpt.LAST_DIR, ckpt_dir / ckpt.BEST_FILE
    fingerprint = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.training_fingerprint(),
        "train": _data_fingerprint(train_samples),
        "val": _data_fingerprint(val_samples),
    }
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_val": None,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "finished": False,
        "stopped_early": False,
        "fingerprint": fingerprint,
    }
    resumed_from = 0
    if mirror is not None and ckpt.read_state(last_dir) is None:
        mirror.pull(ckpt_dir)
    saved = ckpt.read_state(last_dir)
    if saved is not None and saved.get("fingerprint") == fingerprint:
        weights, state = ckpt.load_last(last_dir, opt, sched, scaler)
        _load_trainable(model, weights)
        resumed_from = int(state["epoch"])
        logger.info("resuming from the checkpoint of epoch %d (step %d)", resumed_from, state["step"])
    elif saved is not None:
        logger.warning("checkpoint in %s was written for another config or data; starting over", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    train_emb = val_emb = None
    if cfg.strategy == "hybrid" and not state["finished"]:
        # The vision tower is frozen: a video's embedding is the same in every epoch, so compute it once.
        t0 = time.monotonic()
        model.eval()
        with autocast():
            emb = embed_samples(bundle, model, [*train_samples, *val_samples], cfg.pooling, cfg.batch_size)
        train_emb, val_emb = emb[: len(train_samples)], emb[len(train_samples) :]
        logger.info("hybrid: %d video embeddings of the frozen vision tower in %.1f s", len(emb), time.monotonic() - t0)

    epoch = int(state["epoch"])
    while not state["finished"] and epoch < cfg.epochs:
        started = time.monotonic()
        # Reseed per epoch: dropout and shuffling of epoch e do not depend on whether the run was resumed.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(len(train_samples))
        batches = _batches(len(train_samples), cfg.batch_size, order)
        model.train()
        opt.zero_grad(set_to_none=True)
        train_losses = []
        bar = tqdm(batches, desc=f"finetune_clip epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for i, idx in enumerate(bar):
            emb = None if train_emb is None else train_emb[torch.from_numpy(idx).to(train_emb.device)]
            with autocast():
                loss = _batch_loss(model, bundle, [train_samples[j] for j in idx], cfg, emb)
            train_losses.append(float(loss.detach()))
            # Scale by the accumulation group's real size (the last group of an epoch may be shorter).
            group_start = (i // cfg.grad_accum) * cfg.grad_accum
            group_size = min(cfg.grad_accum, len(batches) - group_start)
            scaled = loss / group_size
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if i - group_start + 1 == group_size:
                if scaler is not None:
                    scaler.unscale_(opt)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
            bar.set_postfix(loss=f"{train_losses[-1]:.3f}")
        bar.close()
        epoch += 1
        metrics: dict[str, float] = {"train_loss": float(np.mean(train_losses)), "lr": float(sched.get_last_lr()[0])}
        if val_samples:
            metrics.update(_validate(model, bundle, val_samples, cfg, autocast, val_emb))
            val_loss = metrics["val_loss"]
            improved = state["best_val"] is None or val_loss < state["best_val"] - 1e-6
        else:
            val_loss, improved = float("nan"), True
        if improved:
            state.update(best_val=None if math.isnan(val_loss) else val_loss, best_epoch=epoch, bad_epochs=0)
            save_file(_trainable_state(model), str(best_file))
        else:
            state["bad_epochs"] += 1
        metrics["epoch_seconds"] = time.monotonic() - started
        state["history"].append({"epoch": epoch, **metrics})
        state["epoch"] = epoch
        if cfg.early_stopping_patience and state["bad_epochs"] >= cfg.early_stopping_patience:
            state["stopped_early"] = True
            logger.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
        state["finished"] = state["stopped_early"] or epoch >= cfg.epochs
        ckpt.save_last(last_dir, _trainable_state(model), opt, sched, scaler, state)
        if mirror is not None:
            mirror.push(ckpt_dir)
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if log_fn is not None:
            log_fn(metrics, epoch)
        if state["stopped_early"]:
            break

    _load_trainable(model, load_file(str(best_file)))
    model.eval()
    best_val = state["best_val"]
    return TrainResult(
        model=model,
        stats=stats,
        history=list(state["history"]),
        best_epoch=int(state["best_epoch"]),
        best_val_loss=float("nan") if best_val is None else float(best_val),
        epochs_run=int(state["epoch"]),
        stopped_early=bool(state["stopped_early"]),
        resumed_from_epoch=resumed_from,
        device=str(device),
        precision=precision,
    )


# ----------------------------------------------------------------------------------------------- export


def export_model(
    model: Any,
    bundle: ClipBundle,
    cfg: FinetuneClipConfig,
    stats: TrainableStats,
    model_dir: Path,
    card: dict[str, Any],
) -> Path:
    """Write the Model artifact: only what a deployment needs.

    ``lora``: ``adapter_model.safetensors`` + ``adapter_config.json``; ``hybrid``: ``model.safetensors``
    with the text tower and text projection; ``full``: ``model.safetensors`` with every weight. Always
    ``card.json`` (base model reference, which also names the tokenizer and image processor, the image
    spec, pooling, strategy, metrics and whatever ``card`` adds: data window, client) and ``model_card.md``.

    Args:
        model: The trained model (a ``PeftModel`` for lora).
        bundle: The bundle it came from (base reference and image spec).
        cfg: Stage settings.
        stats: Trainable-parameter statistics.
        model_dir: The folder to write (created).
        card: Extra card fields (``window``, ``client_id``, ``metrics``, ...).

    Returns:
        ``model_dir``.
    """
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if cfg.strategy == "lora":
        model.save_pretrained(str(model_dir), safe_serialization=True)
        readme = model_dir / "README.md"
        if readme.is_file():  # peft's template card; ours is model_card.md
            readme.unlink()
        adapter_cfg = model_dir / "adapter_config.json"
        data = json.loads(adapter_cfg.read_text())
        data["base_model_name_or_path"] = bundle.base_ref
        adapter_cfg.write_text(json.dumps(data, indent=2, sort_keys=True))
    else:
        state = model.state_dict()
        if cfg.strategy == "hybrid":
            state = {k: v for k, v in state.items() if k.startswith(HYBRID_PREFIXES)}
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(model_dir / "model.safetensors")
        )
    spec: ImageSpec = bundle.image_spec
    full_card = {
        "format": "clipsync-clip/1",
        "base_model": bundle.base_ref,
        "tokenizer": bundle.base_ref,
        "image_processor": bundle.base_ref,
        "image_spec": asdict(spec),
        "strategy": cfg.strategy,
        "pooling": cfg.pooling,
        "frames_per_video": cfg.frames_per_video,
        "lora": {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": list(cfg.target_modules),
        }
        if cfg.strategy == "lora"
        else None,
        "trainable_params": stats.trainable,
        "total_params": stats.total,
        "trainable_fraction": stats.fraction,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **card,
    }
    (model_dir / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=float) + "\n")
    (model_dir / "model_card.md").write_text(_model_card_md(full_card))
    return model_dir


def _model_card_md(card: dict[str, Any]) -> str:
    metrics = card.get("metrics") or {}
    lines = [
        f"# clip-{card.get('client_id', 'client')}: CLIP search model",
        "",
        f"- Base model: `{card['base_model']}` (tokenizer and image processor from the same reference)",
        f"- Strategy: {card['strategy']}"
        + (
            f" (r={card['lora']['r']}, alpha={card['lora']['alpha']},"
            f" targets {', '.join(card['lora']['target_modules'])})"
            if card.get("lora")
            else ""
        ),
        f"- Trainable parameters: {card['trainable_params']:,} of {card['total_params']:,}"
        f" ({100 * card['trainable_fraction']:.3f}%)",
        f"- Data window: {card.get('window', 'n/a')}; training videos: {card.get('n_train', 'n/a')},"
        f" validation videos: {card.get('n_val', 'n/a')}",
        f"- Video embedding: {card['pooling']} of {card['frames_per_video']} frames at {card['image_spec']['size']} px",
        f"- Created: {card['created_at']}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "Load with `components.finetune_clip.model.load_clip_model(<this folder>)`.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- the stage


def load_frame_samples(
    frames_dir: Path, splits: Sequence[str], spec: ImageSpec, frames_per_video: int, require_labels: bool = True
) -> tuple[dict[str, list[ClipSample]], list[dict[str, str]]]:
    """Read the frames Dataset into model-ready samples per split.

    Args:
        frames_dir: The frame_extraction Dataset folder.
        splits: Splits to load (``train``, ``val``, ``test``).
        spec: Image spec of the model that will see the frames.
        frames_per_video: Frames sampled per video.
        require_labels: Skip videos without labels (recorded with a reason).

    Returns:
        Samples per split (sorted by video id) and the skipped videos (``video_id``, ``reason``).
    """
    from components.common.faults import is_infrastructure_error
    from components.frame_extraction.dataset import load_search_frames, read_frame_index

    out: dict[str, list[ClipSample]] = {s: [] for s in splits}
    skipped: list[dict[str, str]] = []
    for rec in read_frame_index(frames_dir):
        if rec.split not in out:
            continue
        if rec.status != "ok":
            skipped.append({"video_id": rec.video_id, "reason": f"frames not extracted: {rec.reason}"})
            continue
        labels = tuple(dict.fromkeys(str(x).strip() for x in rec.labels if str(x).strip()))
        if require_labels and not labels:
            skipped.append({"video_id": rec.video_id, "reason": "no_labels: video has no text label"})
            continue
        try:
            frames = load_search_frames(frames_dir, rec)
            if len(frames) == 0:
                raise ValueError("no search frames")
            out[rec.split].append(
                ClipSample(rec.video_id, prepare_frames(frames, frames_per_video, spec), labels, rec.category)
            )
        except Exception as exc:  # one unreadable video must not stop the stage
            if is_infrastructure_error(exc):  # a failing disk is not the video's problem
                raise
            skipped.append({"video_id": rec.video_id, "reason": f"bad_frames: {type(exc).__name__}: {exc}"})
            logger.warning("video %s skipped: %s", rec.video_id, exc)
    for samples in out.values():
        samples.sort(key=lambda s: s.video_id)
    return out, skipped


def run_finetune_clip(
    frames_dir: Path,
    out_dir: Path,
    config: ClientConfig,
    cfg: FinetuneClipConfig | None = None,
    window: str = "",
    parent_run_id: str = "",
    track: bool = True,
) -> FinetuneReport:
    """The finetune_clip stage: train on the window's train/val videos, export, register as challenger.

    Checkpoints live in ``{state_dir}/checkpoints/finetune_clip/{client_id}-{window}``, mirrored to the same
    keys of ``storage.artifacts_uri`` after every epoch, so that a restarted task (a preempted pod on a new
    node included) resumes; the Model artifact ``out_dir`` only receives the exported model.

    Args:
        frames_dir: The frame_extraction Dataset.
        out_dir: The Model artifact folder to write.
        config: The client's configuration (state_dir, cache_dir, tracking, client_id, window).
        cfg: Stage settings; ``None`` takes ``config.finetune_clip`` (defaults when the section is absent).
        window: The data window, e.g. ``2026-10-02..2026-11-01`` (model card, checkpoint path); ``""`` derives
            it from ``config.window``.
        parent_run_id: The DAG run's MLflow parent run ("" for a standalone top-level run).
        track: Log to MLflow and register ``clip-<client>`` with alias ``challenger`` (off for offline tests).

    Returns:
        The stage report. When the window holds too few training videos, nothing is registered: the report
        says why (``not_trained_reason``) and ``out_dir`` holds ``no_challenger.json``, so the gate keeps
        the champion.
    """
    from components.finetune_clip.model import load_base_clip, resolve_base_ref

    if cfg is None:
        cfg = config.finetune_clip
    window = window or config.window.label()
    base_ref = resolve_base_ref(cfg.base_model, config.state_dir)
    bundle = load_base_clip(base_ref, config.cache_dir)
    data, skipped = load_frame_samples(Path(frames_dir), ("train", "val"), bundle.image_spec, cfg.frames_per_video)
    train, val = data["train"], data["val"]
    logger.info("finetune_clip: %d train, %d val videos, %d skipped", len(train), len(val), len(skipped))
    prefix = ckpt.checkpoint_prefix("finetune_clip", config.client_id, window)
    work_dir = Path(config.state_dir) / prefix
    mirror = ckpt.open_mirror(config.storage.artifacts_uri, prefix, config.encryption)
    report = FinetuneReport(
        model_dir=str(out_dir),
        strategy=cfg.strategy,
        base_model=base_ref,
        n_train=len(train),
        n_val=len(val),
        skipped=skipped,
    )

    def body(log_fn: LogFn | None) -> TrainResult:
        result = train_clip(bundle, train, val, cfg, work_dir, log_fn, mirror)
        last = result.history[-1] if result.history else {}
        best = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
        metrics = {k: v for k, v in best.items() if k.startswith("val_") or k == "train_loss"}
        export_model(
            result.model,
            bundle,
            cfg,
            result.stats,
            Path(out_dir),
            {
                "client_id": config.client_id,
                "window": window,
                "n_train": len(train),
                "n_val": len(val),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "metrics": metrics,
            },
        )
        report.trainable_params = result.stats.trainable
        report.total_params = result.stats.total
        report.trainable_fraction = result.stats.fraction
        report.best_epoch, report.best_val_loss = result.best_epoch, result.best_val_loss
        report.epochs_run, report.stopped_early = result.epochs_run, result.stopped_early
        report.resumed_from_epoch = result.resumed_from_epoch
        return result

    def train_or_record(log_fn: LogFn | None) -> bool:
        try:
            body(log_fn)
        except NotTrainable as exc:
            write_no_challenger(out_dir, str(exc))
            report.not_trained_reason = str(exc)
            return False
        return True

    if not track:
        train_or_record(None)
        return report

    from components.common import tracking

    params = {
        **cfg.training_fingerprint(),
        "base_model": base_ref,
        "window": window,
        "device": cfg.device,
        "mixed_precision": cfg.mixed_precision,
    }
    with tracking.stage_run(config.tracking, parent_run_id, "finetune_clip", params) as run_id:
        report.run_id = run_id
        trained = train_or_record(tracking.log_metrics)
        tracking.log_metrics(report.as_metrics())
        tracking.log_dict_artifact({"skipped": skipped}, "finetune_clip/skipped.json")
        if not trained:
            return report
        report.registered_version = tracking.register_model_dir(
            config.tracking,
            f"clip-{config.client_id}",
            Path(out_dir),
            run_id,
            alias="challenger",
            tags={"strategy": cfg.strategy, "window": window, "base_model": base_ref},
        )
    return report

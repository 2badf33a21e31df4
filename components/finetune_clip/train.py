"""finetune_clip's training loop: LoRA, hybrid or full fine-tuning of a base CLIP with checkpoints that resume.

AdamW over the trainable parameters (:func:`make_optimizer`: linear warm-up, then cosine decay per optimizer
step), gradient accumulation, autocast in the configured precision, early stopping on the validation loss, one
checkpoint per epoch (:func:`components.common.checkpoints.resume` restores it). ``<work_dir>/checkpoints/last/``
holds the trainable weights, the AdamW state, the scheduler position, the epoch, the early-stopping state and
the history; ``best.safetensors`` the best epoch's trainable weights. Every epoch reseeds torch and the shuffle
from ``seed`` and the epoch, so a run resumed from its last checkpoint follows the same path as an uninterrupted
one (exactly on CPU). Epochs are counted from 1 (``best_epoch``, the history, MLflow's step).

The training videos' frames come through a ``DataLoader`` (:mod:`components.common.shards`): a sample whose
frames are not in memory is read from the frames Dataset's training shards by the loader's workers
(``loader_workers``), so memory does not grow with the library. Under ``torchrun`` with ``WORLD_SIZE`` > 1
(:mod:`components.common.distributed`) the model is wrapped in ``DistributedDataParallel``, each rank embeds its
contiguous part of every global batch, the video embeddings of all ranks are gathered with their gradient and
every rank computes the contrastive loss of the whole global batch (the text tower embeds the batch's label texts
on every rank: they are few and short), so the updates equal one process's on the same global batch. Every rank
validates on the whole validation set (the same figures on each, hence the same early stopping); rank 0 alone
writes the checkpoints, and every rank resumes from the same one.

Why this file is long: it is one training loop, and the pieces that make one step (the batch loss, the epoch, the
frozen-tower cache, resuming on every rank) share its seeding and its batch plan; split, they would have to be read
together anyway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common import checkpoints as ckpt
from components.common.distributed import World, barrier, gather_rows, init_distributed, wrap_ddp
from components.common.no_challenger import NotTrainable
from components.common.shards import ShardSource, make_stream, rank_slice, stream_loader
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_clip.data import ClipSample, FrameSource
from components.finetune_clip.loss import batch_texts, contrastive_loss, positive_mask
from components.finetune_clip.metrics import embed_samples, query_video_similarity, retrieval_metrics, retrieval_problem
from components.finetune_clip.model import ClipBundle, TrainableStats, apply_strategy, encode_texts, encode_videos
from components.finetune_clip.negatives import contrastive_loss_with_negatives, negative_mask, unknown_pairs

if TYPE_CHECKING:
    import torch

    from components.common.device import Runtime

logger = logging.getLogger("clipsync.finetune_clip")


LogFn = Callable[[dict[str, float], int], None]
CHECKPOINT_FORMAT = 2  # the checkpoint layout; a checkpoint of another format is not resumed


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


def _batches(n: int, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        # A one-video batch has no negative; fold it into the previous batch.
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out


def _logit_scale(model: Any) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=100.0)


def _towers(model: Any, bundle: ClipBundle, pooling: str) -> torch.nn.Module:
    """The two towers and the logit scale in one ``forward`` (the call DistributedDataParallel must see)."""
    import torch

    class Towers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, frames: torch.Tensor | None, texts: list[str]):
            video = None if frames is None else encode_videos(self.model, frames, bundle.image_spec, pooling)
            return video, encode_texts(self.model, bundle.tokenizer, texts), _logit_scale(self.model)

    return Towers()


def _batch_loss(
    model: Any,
    bundle: ClipBundle,
    samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    video_emb: torch.Tensor | None = None,
    *,
    towers: torch.nn.Module | None = None,
    frames: torch.Tensor | None = None,
    world: World | None = None,
) -> torch.Tensor:
    """The contrastive loss of one (global) batch.

    Args:
        model: The CLIP model.
        bundle: Its image spec and tokenizer.
        samples: The whole batch (every rank's part).
        cfg: Stage settings.
        video_emb: This rank's ``[b, D]`` embeddings standing in for a frozen vision tower.
        towers: :func:`_towers` of ``model``, wrapped in DDP when distributed (built here when ``None``).
        frames: This rank's frames (default: the samples' own, all of them).
        world: With several ranks, this rank's rows are its contiguous part of ``samples`` and every rank's
            embeddings are gathered (with their gradient) into the whole batch.
    """
    import torch

    labels = [s.labels for s in samples]
    known: dict[str, set[str]] = {}
    for s in samples:
        for text in s.negatives:
            known.setdefault(text, set()).add(s.video_id)
    # A text known only as a wrong answer (a search whose rated results in this batch were all wrong) joins the
    # batch's texts: its known negatives are then pushed away from it (it counts for nothing else, see below).
    texts = batch_texts([*labels, list(known)])
    towers = towers if towers is not None else _towers(model, bundle, cfg.pooling)
    if video_emb is None and frames is None:
        frames = torch.stack([s.frames for s in samples])
    video, text_emb, logit_scale = towers(None if video_emb is not None else frames, texts)
    video_emb = video if video_emb is None else video_emb
    if world is not None and world.distributed:
        sizes = [rank_slice(len(samples), r, world.size) for r in range(world.size)]
        video_emb = gather_rows(video_emb, [p.stop - p.start for p in sizes], world)
    positive = positive_mask(labels, texts)
    if not known and not any(s.feedback_labels for s in samples):
        return contrastive_loss(video_emb, text_emb, positive, logit_scale)
    negative = negative_mask([s.video_id for s in samples], texts, known) & ~positive
    return contrastive_loss_with_negatives(
        video_emb,
        text_emb,
        positive,
        negative,
        logit_scale,
        cfg.negative_weight,
        unknown_pairs(samples, texts, positive, negative),
    )


def _validate(
    model: Any,
    bundle: ClipBundle,
    val: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    autocast: Callable[[], Any],
    val_emb: torch.Tensor | None = None,
) -> dict[str, float]:
    import torch

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
        # Feedback's parts only when there are any: checkpoints of runs without feedback still fit.
        known = f"|-{'|'.join(s.negatives)}" if s.negatives else ""
        fed = f"|+{'|'.join(s.feedback_labels)}" if s.feedback_labels else ""
        h.update(f"{s.video_id}|{'|'.join(s.labels)}{known}{fed}\n".encode())
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


@dataclass
class Optim:
    """What one optimizer step needs: the trainable parameters, AdamW, its schedule and the gradient scaler."""

    params: list[Any]
    optimizer: Any
    scheduler: Any
    scaler: Any


def make_optimizer(model: Any, cfg: FinetuneClipConfig, n_train: int, runtime: Runtime) -> Optim:
    """AdamW over the trainable parameters; linear warm-up over ``warmup_ratio`` of all steps, then cosine to 0."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    micro_per_epoch = len(_batches(n_train, cfg.batch_size, np.arange(n_train)))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_ratio * total_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return Optim(params, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor), runtime.grad_scaler())


def train_one_epoch(
    model: Any,
    bundle: ClipBundle,
    samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    epoch: int,
    optim: Optim,
    runtime: Runtime,
    video_emb: torch.Tensor | None = None,
    *,
    source: FrameSource | None = None,
    towers: torch.nn.Module | None = None,
    world: World | None = None,
) -> tuple[list[float], int]:
    """One pass over ``samples`` in the order epoch ``epoch`` (0-based here) draws from ``seed``.

    The order and the batches depend only on ``seed``, the epoch and the samples, never on the number of ranks
    or loader workers. Gradients are accumulated over ``grad_accum`` micro-batches (the last group of the epoch may
    be shorter and is scaled by its real size), clipped to ``max_grad_norm``, and the schedule steps with the
    optimizer.

    Args:
        model: The CLIP model.
        bundle: Its image spec and tokenizer.
        samples: The training videos (metadata; frames from ``source``).
        cfg: Stage settings.
        epoch: 0-based epoch.
        optim: Parameters, optimizer, schedule, scaler.
        runtime: Device and precision.
        video_emb: ``hybrid``: the frozen vision tower's embeddings of ``samples`` (no frames are read).
        source: Where the frames are (default: the samples' own).
        towers: :func:`_towers` of ``model``, wrapped in DDP when distributed.
        world: The ranks (default: one process).

    Returns:
        The micro-batch losses (of the global batches) and the number of optimizer steps taken.
    """
    import torch
    from tqdm.auto import tqdm

    world = world or World()
    source = source or FrameSource.of(samples, None, cfg, bundle.image_spec)
    towers = towers if towers is not None else _towers(model, bundle, cfg.pooling)
    # Reseed per epoch: dropout and shuffling of epoch e do not depend on whether the run was resumed.
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    order = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(len(samples))
    batches = _batches(len(samples), cfg.batch_size, order)
    if video_emb is None:
        plan = [[samples[j].video_id for j in idx] for idx in batches]
        stream = make_stream(source, plan, source, world.rank, world.size)
        parts: Any = stream_loader(stream, cfg.loader_workers)
    else:
        parts = ((b, None) for b in range(len(batches)))
    model.train()
    optim.optimizer.zero_grad(set_to_none=True)
    losses, steps = [], 0
    desc = f"finetune_clip epoch {epoch + 1}/{cfg.epochs}"
    bar = tqdm(parts, total=len(batches), desc=desc, unit="batch", leave=False, disable=not world.is_main or None)
    for b, frames in bar:
        idx = batches[b]
        mine = idx[rank_slice(len(idx), world.rank, world.size)]
        emb = None if video_emb is None else video_emb[torch.from_numpy(mine).to(video_emb.device)]
        with runtime.autocast():
            loss = _batch_loss(
                model,
                bundle,
                [samples[j] for j in idx],
                cfg,
                emb,
                towers=towers,
                frames=None if frames is None else torch.from_numpy(np.stack(frames)),
                world=world,
            )
        losses.append(float(loss.detach()))
        group_start = (b // cfg.grad_accum) * cfg.grad_accum
        group_size = min(cfg.grad_accum, len(batches) - group_start)
        optim.scaler.scale(loss / group_size).backward()
        if b - group_start + 1 == group_size:
            optim.scaler.unscale_(optim.optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(optim.params, cfg.max_grad_norm)
            optim.scaler.step(optim.optimizer)
            optim.scaler.update()
            optim.scheduler.step()
            optim.optimizer.zero_grad(set_to_none=True)
            steps += 1
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses, steps


def _frozen_tower_embeddings(
    bundle: ClipBundle,
    model: Any,
    train: Sequence[ClipSample],
    val: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    runtime: Runtime,
    source: FrameSource,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``hybrid``: the vision tower is frozen, so a video's embedding is the same in every epoch: compute it once.

    The training videos' frames stream through the loader (only the ``[N, D]`` embeddings stay in memory).
    """
    import torch

    t0 = time.monotonic()
    model.eval()
    plan = [[s.video_id for s in train[i : i + cfg.batch_size]] for i in range(0, len(train), cfg.batch_size)]
    outs: list[Any] = [None] * len(plan)
    with torch.no_grad(), runtime.autocast():
        for b, frames in stream_loader(make_stream(source, plan, source), cfg.loader_workers):
            outs[b] = encode_videos(model, torch.from_numpy(np.stack(frames)), bundle.image_spec, cfg.pooling)
        val_emb = embed_samples(bundle, model, val, cfg.pooling, cfg.batch_size)
    logger.info(
        "hybrid: %d video embeddings of the frozen vision tower in %.1f s", len(train) + len(val), time.monotonic() - t0
    )
    return torch.cat(outs), val_emb


def train_clip(
    bundle: ClipBundle,
    train_samples: Sequence[ClipSample],
    val_samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    work_dir: Path,
    log_fn: LogFn | None = None,
    mirror: ckpt.CheckpointMirror | None = None,
    init_adapter: Path | None = None,
    shards: ShardSource | None = None,
    world: World | None = None,
) -> TrainResult:
    """Fine-tune ``bundle.model`` with the configured strategy; resume from a checkpoint when one fits.

    See the module docstring for the optimizer, the checkpoints and the seeding. A checkpoint written with
    another config fingerprint or other training data is discarded (logged) and training starts over. With
    ``hybrid`` the frozen vision tower embeds every video once per run (training and validation videos); an
    epoch then runs only the text tower.

    Args:
        bundle: The base model (modified in place: ``bundle.model`` becomes the trained model).
        train_samples: Labelled training videos (at least 2).
        val_samples: Labelled validation videos (may be empty: then no early stopping, the last epoch wins).
        cfg: Stage settings.
        work_dir: Checkpoint folder (``work_dir/checkpoints``); not the exported model.
        log_fn: Called after every epoch with that epoch's metrics and the epoch number (1-based).
        mirror: Where every epoch's checkpoint is copied (the artifacts store) and, when ``work_dir`` holds
            none, pulled from: a retried pod resumes instead of starting over.
        init_adapter: A LoRA adapter (``adapter_model.safetensors``, the champion's) to start from instead of
            the fresh adapter (:func:`~components.finetune_clip.history.warm_start_adapter` says when it fits).
        shards: The frames Dataset's training shards, for training videos without frames in memory.
        world: The ranks under torchrun (default: one process). Every rank gets the same samples and settings;
            only rank 0 writes checkpoints, and only rank 0's result holds the best epoch's weights.

    Returns:
        The training result; ``result.model`` holds the best epoch's weights, in eval mode.

    Raises:
        NotTrainable: With fewer than 2 training videos.
        ValueError: If a batch holds fewer videos than there are ranks.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_runtime

    if len(train_samples) < 2:
        raise NotTrainable(f"need at least 2 labelled training videos, got {len(train_samples)}")
    world = world or World()
    smallest = min(len(b) for b in _batches(len(train_samples), cfg.batch_size, np.arange(len(train_samples))))
    if smallest < world.size:
        raise ValueError(f"a batch of {smallest} videos cannot be split over {world.size} ranks (batch_size, videos)")
    set_torch_threads(cfg.num_threads)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    runtime = type(runtime)(init_distributed(world, runtime.device), runtime.amp_dtype)
    torch.manual_seed(cfg.seed)
    model, stats = apply_strategy(bundle.model, cfg)
    model.to(runtime.device)
    bundle.model = model
    towers = wrap_ddp(_towers(model, bundle, cfg.pooling), world, runtime.device)
    source = FrameSource.of(train_samples, shards, cfg, bundle.image_spec)
    logger.info(
        "strategy %s: %d of %d parameters trainable (%.3f%%), device %s, precision %s",
        stats.strategy,
        stats.trainable,
        stats.total,
        100 * stats.fraction,
        runtime.device,
        runtime.precision,
    )
    optim = make_optimizer(model, cfg, len(train_samples), runtime)
    ckpt_dir = Path(work_dir) / "checkpoints"
    fingerprint = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.training_fingerprint(),
        "train": _data_fingerprint(train_samples),
        "val": _data_fingerprint(val_samples),
    }
    if init_adapter is not None:
        import hashlib

        fingerprint["warm_start"] = hashlib.sha256(Path(init_adapter).read_bytes()).hexdigest()[:16]
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
    restored = ckpt.resume(ckpt_dir, fingerprint, optim.optimizer, optim.scheduler, optim.scaler, mirror, world)
    if restored is not None:
        weights, state = restored
        _load_trainable(model, weights)
    elif init_adapter is not None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(init_adapter)))
        if result.unexpected_keys:
            raise RuntimeError(f"warm start: the adapter does not fit (e.g. {sorted(result.unexpected_keys)[:3]})")
        logger.info("warm start from %s", init_adapter)
    resumed_from = int(state["epoch"])
    train_emb = val_emb = None
    if cfg.strategy == "hybrid" and not state["finished"]:
        train_emb, val_emb = _frozen_tower_embeddings(bundle, model, train_samples, val_samples, cfg, runtime, source)

    epoch = int(state["epoch"])
    while not state["finished"] and epoch < cfg.epochs:
        started = time.monotonic()
        losses, steps = train_one_epoch(
            model,
            bundle,
            train_samples,
            cfg,
            epoch,
            optim,
            runtime,
            train_emb,
            source=source,
            towers=towers,
            world=world,
        )
        state["step"] += steps
        epoch += 1
        metrics: dict[str, float] = {
            "train_loss": float(np.mean(losses)),
            "lr": float(optim.scheduler.get_last_lr()[0]),
        }
        if val_samples:
            metrics.update(_validate(model, bundle, val_samples, cfg, runtime.autocast, val_emb))
            val_loss = metrics["val_loss"]
            improved = state["best_val"] is None or val_loss < state["best_val"] - 1e-6
        else:
            val_loss, improved = float("nan"), True
        if improved:
            state.update(best_val=None if math.isnan(val_loss) else val_loss, best_epoch=epoch, bad_epochs=0)
            if world.is_main:
                save_file(_trainable_state(model), str(ckpt_dir / ckpt.BEST_FILE))
        else:
            state["bad_epochs"] += 1
        metrics["epoch_seconds"] = time.monotonic() - started
        state["history"].append({"epoch": epoch, **metrics})
        state["epoch"] = epoch
        if cfg.early_stopping_patience and state["bad_epochs"] >= cfg.early_stopping_patience:
            state["stopped_early"] = True
            logger.info("early stop after epoch %d (best epoch %d)", epoch, state["best_epoch"])
        state["finished"] = state["stopped_early"] or epoch >= cfg.epochs
        if world.is_main:
            last = ckpt_dir / ckpt.LAST_DIR
            ckpt.save_last(last, _trainable_state(model), optim.optimizer, optim.scheduler, optim.scaler, state)
            if mirror is not None:
                mirror.push(ckpt_dir)
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if log_fn is not None:
            log_fn(metrics, epoch)
        if state["stopped_early"]:
            break

    barrier(world)  # the other ranks' checkpoints are rank 0's: they end when it has written its last
    if world.is_main:
        _load_trainable(model, load_file(str(ckpt_dir / ckpt.BEST_FILE)))
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
        device=str(runtime.device),
        precision=runtime.precision,
    )

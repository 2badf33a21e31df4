"""finetune_lipsync's training loop: two phases, progressive unfreezing, checkpoints that resume.

Two phases (when starting from pretrained weights): phase 1 trains fusion + classifier with frozen encoders at
``lr``; phase 2 unfreezes encoder layer groups progressively, top first, at ``lr_encoder``. From scratch every
layer trains from the start at ``lr_scratch`` (unless ``freeze_from_scratch``). AdamW with ReduceLROnPlateau on
the validation loss (:func:`make_optimizer`), autocast in the configured precision, a checkpoint after every epoch
(:func:`components.common.checkpoints.resume` restores it). Every epoch reseeds the shuffling, augmentation and
dropout from ``seed`` and the epoch, so a resumed run follows the same path as an uninterrupted one (exactly on
CPU). The checkpoint with the lowest validation loss is kept and the decision threshold is chosen on the
validation videos. Epochs are counted from 1 (``best_epoch``, MLflow's step).

Besides the labelled windows, every real training window gives ``sync_negatives`` self-supervised negatives (the
same crops with the clip's own audio shifted by a few frames, labelled fake;
:func:`~components.finetune_lipsync.data.epoch_plan`), SyncNet-style: the mouth-voice timing is then learnt from
every real clip, not only from the labelled fakes, and the fake class's loss weight balances the windows of both
classes.

The training windows come through a ``DataLoader`` (:class:`~components.finetune_lipsync.data.WindowLoader` over
:mod:`components.common.shards`): a streamed video's crops and audio are read from the faces Dataset's training
shards by the loader's workers. Under ``torchrun`` (:mod:`components.common.distributed`) the model is wrapped in
``DistributedDataParallel`` (again whenever progressive unfreezing changes what trains), each rank takes its
contiguous part of every global batch, and its loss is its windows' summed loss times the world size over the
global batch size, so the averaged gradient is one process's on the whole batch. Augmentation draws per window
from the seed, the epoch and the window's position, the same on any rank. Rank 0 alone writes checkpoints and the
model; every rank resumes from the same checkpoint.

Why this file is long: it is one training loop (phases, unfreezing, the epoch over the streamed windows, resuming,
the threshold choice); its parts share the seeding and the checkpoint state and are read together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from components.common import checkpoints as ckpt
from components.common.device import Runtime
from components.common.distributed import World, barrier, init_distributed, wrap_ddp
from components.common.no_challenger import NotTrainable
from components.common.shards import ShardSource, make_stream, rank_slice, stream_loader
from components.finetune_lipsync.augment import augment_video
from components.finetune_lipsync.config import AugmentConfig, FinetuneLipsyncConfig
from components.finetune_lipsync.data import (
    LipsyncVideo,
    WindowLoader,
    WindowSet,
    epoch_plan,
    fixed_windows,
    load_streamed,
    resize_videos,
)
from components.finetune_lipsync.export import export_model
from components.finetune_lipsync.metrics import binary_metrics, choose_threshold
from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, aggregate, load_weights

logger = logging.getLogger("clipsync.finetune_lipsync")

LogFn = Callable[[dict[str, float], int], None]
#: The checkpoint layout; a checkpoint of another format is not resumed (2: ``best_epoch`` counts from 1).
CHECKPOINT_FORMAT = 2


@dataclass
class TrainResult:
    """Outcome of :func:`train_lipsync`.

    Attributes:
        model_dir: Folder with model.safetensors, config.json, README.md, training_summary.json.
        best_epoch: Epoch (1-based) of the kept checkpoint.
        best_val_loss: Its validation loss (window level).
        threshold: Decision threshold chosen on the validation videos.
        val_metrics: Video-level validation metrics of the kept checkpoint.
        history: Per-epoch metrics.
        pretrained: What the weights started from (``""`` for scratch).
        n_train_videos: Training videos.
        n_val_videos: Validation videos.
        seconds: Wall time of the training.
        resumed_from_epoch: Epochs a checkpoint had already done (0: trained from the start).
    """

    model_dir: Path
    best_epoch: int
    best_val_loss: float
    threshold: float
    val_metrics: dict[str, float]
    history: list[dict[str, float]]
    pretrained: str
    n_train_videos: int
    n_val_videos: int
    seconds: float
    resumed_from_epoch: int = 0


def unfrozen_groups(epoch: int, cfg: FinetuneLipsyncConfig, from_pretrained: bool, n_groups: int) -> int:
    """How many encoder layer groups (per encoder, top first) train in ``epoch`` (0-based)."""
    if not from_pretrained and not cfg.freeze_from_scratch:
        return n_groups
    if epoch < cfg.freeze_epochs:
        return 0
    steps = (epoch - cfg.freeze_epochs) // cfg.unfreeze_every + 1
    return min(n_groups, steps * cfg.unfreeze_groups)


def set_trainable(model: LipSyncDetector, n_unfrozen: int) -> int:
    """Fusion + classifier always train; of each encoder, only the top ``n_unfrozen`` layer groups.

    Returns:
        The number of trainable parameters.
    """
    for module in model.head_modules():
        module.requires_grad_(True)
    for groups in model.encoder_layer_groups().values():
        for i, group in enumerate(groups):
            group.requires_grad_(i < n_unfrozen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _param_groups(model: LipSyncDetector, head_lr: float, encoder_lr: float) -> list[dict]:
    head = [p for m in model.head_modules() for p in m.parameters()]
    head_ids = {id(p) for p in head}
    encoder = [p for p in model.parameters() if id(p) not in head_ids]
    return [
        {"params": head, "lr": head_lr, "name": "head"},
        {"params": encoder, "lr": encoder_lr, "name": "encoder"},
    ]


@dataclass
class Optim:
    """AdamW over head and encoder groups, ReduceLROnPlateau on the validation loss, the gradient scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler


def make_optimizer(
    model: LipSyncDetector, cfg: FinetuneLipsyncConfig, from_pretrained: bool, runtime: Runtime
) -> Optim:
    """Head at ``lr`` and encoders at ``lr_encoder`` when fine-tuning; every layer at ``lr_scratch`` from scratch."""
    head_lr = cfg.lr if from_pretrained else cfg.lr_scratch
    enc_lr = cfg.lr_encoder if from_pretrained else cfg.lr_scratch
    optimizer = torch.optim.AdamW(_param_groups(model, head_lr, enc_lr), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    return Optim(optimizer, scheduler, runtime.grad_scaler())


def _build_model(cfg: FinetuneLipsyncConfig, pretrained: Path | None) -> tuple[LipSyncDetector, str]:
    """A model from scratch, or from a safetensors file (its ``config.json`` beside it wins over ``cfg.model``)."""
    if pretrained is None:
        return LipSyncDetector(LipSyncModelConfig(**asdict(cfg.model))), ""
    pretrained = Path(pretrained)
    weights = pretrained / "model.safetensors" if pretrained.is_dir() else pretrained
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {weights}")
    config_file = weights.parent / "config.json"
    if config_file.is_file():
        saved = LipSyncModelConfig.from_dict(json.loads(config_file.read_text()))
        # Input geometry and decision policy follow this run's settings; the architecture follows the weights.
        arch = cfg.model
        mc = replace(saved, extra={}, hop_s=arch.hop_s, video_aggregation=arch.video_aggregation, dropout=arch.dropout)
    else:
        mc = LipSyncModelConfig(**asdict(cfg.model))
    model = LipSyncDetector(mc)
    load_weights(model, weights)
    logger.info("finetune_lipsync: starting from %s", weights)
    return model, str(weights)


@torch.no_grad()
def _evaluate(
    model: LipSyncDetector, ws: WindowSet, n_videos: int, cfg: FinetuneLipsyncConfig, runtime: Runtime
) -> tuple[float, np.ndarray, np.ndarray]:
    """Window-level loss, window logits, video probabilities."""
    model.eval()
    logits = []
    bs = max(cfg.batch_size, 32)
    for i in range(0, len(ws.labels), bs):
        v = torch.from_numpy(ws.video[i : i + bs]).to(runtime.device)
        a = torch.from_numpy(ws.audio[i : i + bs]).to(runtime.device)
        with runtime.autocast():
            logits.append(model(v, a).float().cpu())
    logits_t = torch.cat(logits)
    loss = float(F.binary_cross_entropy_with_logits(logits_t, torch.from_numpy(ws.labels)))
    win = logits_t.numpy()
    probs = np.array([aggregate(win[ws.video_index == k], cfg.model.video_aggregation) for k in range(n_videos)])
    return loss, win, probs


def _window_loss(
    model: LipSyncDetector,
    video: torch.Tensor,
    audio: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: torch.Tensor,
    amp_dtype: torch.dtype | None,
    scale: float | None = None,
) -> torch.Tensor:
    """The training loss of one batch of windows (the batch is moved to the model's device; float32 loss).

    ``scale``: the summed window losses times ``scale`` (a rank's share of a global batch) instead of their mean.
    """
    from components.common.device import module_device

    device = module_device(model)
    video, audio, labels = video.to(device), audio.to(device), labels.to(device)
    with Runtime(device, amp_dtype).autocast():
        logits = model(video, audio)
    if scale is None:
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight.to(device))
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight.to(device), reduction="sum")
    return loss * scale


def _data_fingerprint(videos: Sequence[LipsyncVideo]) -> str:
    h = hashlib.sha256()
    for v in videos:
        h.update(f"{v.video_id}|{v.label}|{v.frame_count}|{v.fps:g}\n".encode())
    return h.hexdigest()[:16]


def train_lipsync(
    train_videos: Sequence[LipsyncVideo],
    val_videos: Sequence[LipsyncVideo],
    cfg: FinetuneLipsyncConfig,
    out_dir: str | Path,
    log_fn: LogFn | None = None,
    pretrained: str | Path | None = None,
    work_dir: str | Path | None = None,
    mirror: ckpt.CheckpointMirror | None = None,
    shards: ShardSource | None = None,
    world: World | None = None,
) -> TrainResult:
    """Fine-tune (or train from scratch) the detector and save the best checkpoint.

    A checkpoint is written at the end of every epoch (:mod:`components.common.checkpoints`); a run finds it
    in ``work_dir`` (or, when that holds none, pulls it from ``mirror``) and resumes after the last finished
    epoch, provided it was written for the same settings, data and starting weights. Every epoch reseeds the
    shuffling, augmentation and dropout from ``seed`` and the epoch, so a resumed run follows the same path
    as an uninterrupted one (exactly on CPU).

    Args:
        train_videos: Training clips (windows are cut each epoch, augmented when enabled).
        val_videos: Validation clips (never augmented); must not share a video with ``train_videos``.
        cfg: Stage settings.
        out_dir: Where the model folder is written.
        log_fn: Called as ``log_fn(metrics, epoch)`` after each epoch (MLflow in the pipeline).
        pretrained: A ``.safetensors`` file or a model folder to start from; ``None`` for scratch.
        work_dir: The checkpoint folder's parent (``work_dir/checkpoints``); ``None``: a temporary folder,
            no resume.
        mirror: Where every epoch's checkpoint is copied (the artifacts store), for a retried pod.
        shards: The faces Dataset's training shards, for videos without crops in memory (validation videos are
            read into memory).
        world: The ranks under torchrun (default: one process); only rank 0 writes checkpoints and the model
            folder, and only its result holds the threshold and validation metrics of the kept checkpoint.

    Returns:
        The result, with the model folder.

    Raises:
        NotTrainable: Without training or validation videos, or with a single class in the training set.
        ValueError: With a video on both sides.
    """
    if not train_videos or not val_videos:
        raise NotTrainable(f"need training and validation videos, got {len(train_videos)} and {len(val_videos)}")
    overlap = {v.video_id for v in train_videos} & {v.video_id for v in val_videos}
    if overlap:
        raise ValueError(f"videos in both training and validation: {sorted(overlap)[:5]}")
    labels = {v.label for v in train_videos}
    if len(labels) < 2:
        only = "fake" if labels == {1} else "real"
        raise NotTrainable(f"all {len(train_videos)} training videos are {only}; need real and fake examples")
    args = (train_videos, load_streamed(val_videos, shards), cfg, out_dir, log_fn, pretrained)
    if work_dir is not None:
        return _train_lipsync(*args, Path(work_dir), mirror, shards, world or World())
    with tempfile.TemporaryDirectory(prefix="lipsync-checkpoints-") as tmp:
        return _train_lipsync(*args, Path(tmp), mirror, shards, world or World())


def train_one_epoch(
    model: LipSyncDetector,
    videos: Sequence[LipsyncVideo],
    cfg: FinetuneLipsyncConfig,
    epoch: int,
    optim: Optim,
    pos_weight: torch.Tensor,
    augment: AugmentConfig | None,
    runtime: Runtime,
    shards: ShardSource | None = None,
    world: World | None = None,
) -> float:
    """One pass over the epoch's windows (``epoch`` 0-based here), reseeded from ``seed`` and the epoch.

    Args:
        model: The detector (wrapped in DDP when distributed).
        videos: The training videos (streamed ones are read from ``shards`` by the loader).
        cfg: Stage settings.
        epoch: 0-based epoch.
        optim: Optimizer, schedule, scaler.
        pos_weight: The fake class's weight in the loss.
        augment: The augmentation ranges, or ``None``.
        runtime: Device and precision.
        shards: The training shards.
        world: The ranks (default: one process).

    Returns:
        The mean training loss per window (of every rank's windows).
    """
    import torch.distributed as dist
    from tqdm import tqdm

    world = world or World()
    # Reseed per epoch: what epoch e draws does not depend on whether the run was resumed.
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    rng = np.random.default_rng([cfg.seed, epoch])
    mc = _module(model).config
    plan = epoch_plan(videos, cfg, rng)
    batches = [list(range(i, min(i + cfg.batch_size, len(plan)))) for i in range(0, len(plan), cfg.batch_size)]
    if len(batches) > 1 and len(batches[-1]) < world.size:  # every rank needs a window of every batch
        batches[-2] += batches.pop()
    if batches and len(batches[-1]) < world.size:
        raise ValueError(f"{len(plan)} training windows cannot be split over {world.size} ranks")
    windows = WindowLoader(videos, plan, mc, augment, (cfg.seed, epoch), shards)
    keys = [[str(p) for p in batch] for batch in batches]
    loader = stream_loader(make_stream(windows, keys, windows, world.rank, world.size), cfg.loader_workers)
    model.train()
    totals = torch.zeros(2, dtype=torch.float64)  # summed window loss, windows
    optim.optimizer.zero_grad(set_to_none=True)
    desc = f"lipsync epoch {epoch + 1}/{cfg.epochs}"
    for step, items in tqdm(loader, total=len(batches), desc=desc, leave=False, disable=not world.is_main or None):
        positions = batches[step][rank_slice(len(batches[step]), world.rank, world.size)]
        video = torch.from_numpy(np.stack([v for v, _, _ in items])).to(runtime.device)  # augmentation runs there
        if augment is not None:  # per window, from its position: the same draws on any rank
            gens = [torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * 1_000_003 + p) for p in positions]
            video = torch.cat([augment_video(video[k : k + 1], augment, g) for k, g in enumerate(gens)])
        audio = torch.from_numpy(np.stack([a for _, a, _ in items]))
        labels = torch.tensor([y for _, _, y in items], dtype=torch.float32)
        scale = world.size / len(batches[step])
        loss = _window_loss(model, video, audio, labels, pos_weight, runtime.amp_dtype, scale)
        optim.scaler.scale(loss / cfg.grad_accum).backward()
        if (step + 1) % cfg.grad_accum == 0 or step + 1 == len(batches):
            optim.scaler.step(optim.optimizer)
            optim.scaler.update()
            optim.optimizer.zero_grad(set_to_none=True)
        totals += torch.tensor([loss.item() / scale, len(items)], dtype=torch.float64)
    if world.distributed:
        dist.all_reduce(totals)
    return float(totals[0] / max(float(totals[1]), 1.0))


def _module(model: torch.nn.Module) -> LipSyncDetector:
    """The detector inside a DDP wrapper (or the detector itself)."""
    return getattr(model, "module", model)


def _validate(
    model: LipSyncDetector, val: WindowSet, val_labels: np.ndarray, cfg: FinetuneLipsyncConfig, runtime: Runtime
) -> dict[str, float]:
    """Validation loss (window level), and AUC and accuracy at 0.5 (video level)."""
    from sklearn.metrics import roc_auc_score

    val_loss, _, val_probs = _evaluate(model, val, len(val_labels), cfg, runtime)
    val_auc = float(roc_auc_score(val_labels, val_probs)) if len(set(val_labels.tolist())) == 2 else float("nan")
    return {
        "val_loss": val_loss,
        "val_video_auc": val_auc,
        "val_video_accuracy": float(np.mean((val_probs >= 0.5) == val_labels)),
    }


def _train_lipsync(
    train_videos: Sequence[LipsyncVideo],
    val_videos: Sequence[LipsyncVideo],
    cfg: FinetuneLipsyncConfig,
    out_dir: str | Path,
    log_fn: LogFn | None,
    pretrained: str | Path | None,
    work_dir: Path,
    mirror: ckpt.CheckpointMirror | None,
    shards: ShardSource | None,
    world: World,
) -> TrainResult:
    from safetensors.torch import load_file, save_file

    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_runtime

    started = time.monotonic()
    set_torch_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    runtime = Runtime(init_distributed(world, runtime.device), runtime.amp_dtype)
    model, pretrained_src = _build_model(cfg, Path(pretrained) if pretrained else None)
    model.to(runtime.device)
    mc = model.config
    from_pretrained = bool(pretrained_src)

    train_videos = resize_videos(train_videos, mc.crop_size)
    val_videos = resize_videos(val_videos, mc.crop_size)
    val_ws = fixed_windows(val_videos, mc)
    val_labels = np.array([v.label for v in val_videos])
    n_fake = sum(v.label for v in train_videos)
    n_real = len(train_videos) - n_fake
    # The self-supervised negatives count as fakes: the fake class's weight balances real against fake windows.
    n_fake_like = n_fake + cfg.sync_negatives * n_real
    pos_weight = torch.tensor(min(5.0, max(0.2, n_real / max(n_fake_like, 1))), device=runtime.device)
    optim = make_optimizer(model, cfg, from_pretrained, runtime)
    augment = cfg.augment if cfg.augment.enabled else None
    n_groups = max(len(g) for g in model.encoder_layer_groups().values())

    ckpt_dir = work_dir / "checkpoints"
    best_file = ckpt_dir / ckpt.BEST_FILE
    skip = {"device", "num_threads", "loader_workers", "precision"}
    fingerprint = {
        "format": CHECKPOINT_FORMAT,
        "config": {k: v for k, v in asdict(cfg).items() if k not in skip},
        "train": _data_fingerprint(train_videos),
        "val": _data_fingerprint(val_videos),
        "pretrained": ckpt.file_sha256(pretrained_src) if pretrained_src else "",
    }
    state: dict = {"epoch": 0, "best_loss": None, "best_epoch": 0, "history": [], "fingerprint": fingerprint}
    restored = ckpt.resume(ckpt_dir, fingerprint, optim.optimizer, optim.scheduler, optim.scaler, mirror, world)
    if restored is not None:
        weights, state = restored
        model.load_state_dict(weights)
    resumed_from = int(state["epoch"])
    logger.info(
        "finetune_lipsync: %d train / %d val videos (%d val windows), %s, device %s, precision %s",
        len(train_videos),
        len(val_videos),
        len(val_ws.labels),
        pretrained_src or "from scratch",
        runtime.device,
        runtime.precision,
    )

    history: list[dict[str, float]] = state["history"]
    for epoch in range(resumed_from, cfg.epochs):
        n_unfrozen = unfrozen_groups(epoch, cfg, from_pretrained, n_groups)
        n_trainable = set_trainable(model, n_unfrozen)
        ddp = wrap_ddp(model, world, runtime.device)  # again each epoch: DDP syncs what trains when it is built
        train_loss = train_one_epoch(ddp, train_videos, cfg, epoch, optim, pos_weight, augment, runtime, shards, world)
        val = _validate(model, val_ws, val_labels, cfg, runtime)
        lrs = [group["lr"] for group in optim.optimizer.param_groups]  # the rates this epoch trained with
        optim.scheduler.step(val["val_loss"])
        row = {
            "train_loss": train_loss,
            **val,
            "lr_head": lrs[0],
            "lr_encoder": lrs[1],
            "unfrozen_encoder_groups": float(n_unfrozen),
            "trainable_params": float(n_trainable),
            "phase": 1.0 if (from_pretrained or cfg.freeze_from_scratch) and epoch < cfg.freeze_epochs else 2.0,
        }
        history.append(row)
        logger.info(
            "finetune_lipsync: epoch %d/%d train_loss %.4f val_loss %.4f val_auc %.3f (groups unfrozen %d)",
            epoch + 1,
            cfg.epochs,
            train_loss,
            row["val_loss"],
            row["val_video_auc"],
            n_unfrozen,
        )
        improved = state["best_loss"] is None or row["val_loss"] < state["best_loss"]
        if improved:
            state.update(best_loss=row["val_loss"], best_epoch=epoch + 1)
        state["epoch"] = epoch + 1
        if world.is_main:
            if improved:
                weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
                save_file(weights, str(best_file))
            last = ckpt_dir / ckpt.LAST_DIR
            ckpt.save_last(last, model.state_dict(), optim.optimizer, optim.scheduler, optim.scaler, state)
            if mirror is not None:
                mirror.push(ckpt_dir)
        if log_fn is not None:
            log_fn(row, epoch + 1)

    barrier(world)
    if not world.is_main:  # rank 0 keeps the best checkpoint, chooses the threshold and writes the model
        best = (int(state["best_epoch"]), float(state["best_loss"]))
        sizes = (len(train_videos), len(val_videos))
        took = time.monotonic() - started
        return TrainResult(Path(out_dir), *best, 0.5, {}, history, pretrained_src, *sizes, took, resumed_from)
    model.load_state_dict(load_file(str(best_file)))
    _, _, val_probs = _evaluate(model, val_ws, len(val_videos), cfg, runtime)
    threshold = choose_threshold(val_labels, val_probs)
    val_metrics = binary_metrics(val_labels, val_probs, threshold)
    result = TrainResult(
        model_dir=Path(out_dir),
        best_epoch=int(state["best_epoch"]),
        best_val_loss=float(state["best_loss"]),
        threshold=float(threshold),
        val_metrics={k: v for k, v in val_metrics.items() if isinstance(v, int | float)},
        history=history,
        pretrained=pretrained_src,
        n_train_videos=len(train_videos),
        n_val_videos=len(val_videos),
        seconds=time.monotonic() - started,
        resumed_from_epoch=resumed_from,
    )
    export_model(model, result, cfg, train_videos, val_videos)
    logger.info(
        "finetune_lipsync: best epoch %d val_loss %.4f, threshold %.3f, val AUC %s (%.0f s)",
        result.best_epoch,
        result.best_val_loss,
        threshold,
        val_metrics.get("roc_auc"),
        result.seconds,
    )
    return result

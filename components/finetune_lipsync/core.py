"""finetune_lipsync: train the lip-sync manipulation detector on the client's talking heads.

Two phases (when starting from pretrained weights): phase 1 trains fusion + classifier with frozen
encoders at ``lr``; phase 2 unfreezes encoder layer groups progressively, top first, at ``lr_encoder``.
From scratch every layer trains from the start at ``lr_scratch`` (unless ``freeze_from_scratch``).
A checkpoint after every epoch, mirrored to the artifacts store, lets a restarted task resume.
Validation is 20 % of the training pool, split by video; the checkpoint with the lowest validation loss
is kept, and the decision threshold is chosen on the validation videos.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from components.common import checkpoints as ckpt
from components.common.device import resolve_device
from components.common.no_challenger import NotTrainable, write_no_challenger
from components.face_tracking.evidence import EvidenceRules
from components.finetune_lipsync.augment import AugmentParams, augment_video, random_speed, speed_window
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.finetune_lipsync.model import (
    LipSyncDetector,
    LipSyncModelConfig,
    aggregate,
    extract_window,
    load_weights,
    save_model,
    window_starts,
    windows,
)

logger = logging.getLogger("clipsync.finetune_lipsync")

LABELS = {"real": 0, "fake": 1}
MODEL_CARD_FILE = "README.md"
SUMMARY_FILE = "training_summary.json"
LogFn = Callable[[dict[str, float], int], None]


@dataclass
class LipsyncVideo:
    """One labelled talking-head clip ready for training or evaluation.

    Attributes:
        video_id: The manifest's id.
        crops: uint8 ``[T, S, S, 3]`` mouth crops.
        audio: float32 16 kHz mono aligned with ``crops``.
        fps: Frame rate of ``crops``.
        label: 1 for fake (manipulated), 0 for real.
        split: The manifest split.
        fallback_used: The crops are the frame centre (no face found).
    """

    video_id: str
    crops: np.ndarray
    audio: np.ndarray
    fps: float
    label: int
    split: str = "train"
    fallback_used: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.crops) / self.fps


@dataclass
class TrainResult:
    """Outcome of :func:`train_lipsync`.

    Attributes:
        model_dir: Folder with model.safetensors, config.json, README.md, training_summary.json.
        best_epoch: Epoch (0-based) of the kept checkpoint.
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


# ------------------------------------------------------------------------------------------- split


def _hash_key(seed: int, video_id: str) -> str:
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def split_by_video(
    videos: Sequence[LipsyncVideo], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[LipsyncVideo], list[LipsyncVideo]]:
    """Hold out ``val_fraction`` of the videos (never single windows), stratified by label.

    The order inside each label is a seeded hash of the video id, so the split is reproducible and
    does not depend on the input order. Each label with at least two videos gets at least one
    validation video and keeps at least one training video.

    Args:
        videos: The training pool.
        val_fraction: Share of videos held out.
        seed: Seed of the order.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: If a video id appears twice (its windows could land on both sides).
    """
    ids = [v.video_id for v in videos]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate video ids in the training pool: {dupes[:5]}")
    train: list[LipsyncVideo] = []
    val: list[LipsyncVideo] = []
    for label in sorted({v.label for v in videos}):
        group = sorted((v for v in videos if v.label == label), key=lambda v: _hash_key(seed, v.video_id))
        n_val = round(len(group) * val_fraction)
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


# -------------------------------------------------------------------------------------- freezing


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


# ----------------------------------------------------------------------------------- device, AMP


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 / AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (``None``: fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)


# ------------------------------------------------------------------------------------------ data


@dataclass
class _WindowSet:
    video: np.ndarray  # uint8 [N, T, S, S, 3]
    audio: np.ndarray  # float32 [N, samples]
    labels: np.ndarray  # float32 [N]
    video_index: np.ndarray  # int [N] index into the video list


def _resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    if crops.shape[1] == size and crops.shape[2] == size:
        return crops
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _prepare(videos: Sequence[LipsyncVideo], size: int) -> list[LipsyncVideo]:
    """Resize crops once to the model's input size (cheaper than in every forward pass)."""
    return [
        LipsyncVideo(v.video_id, _resize_crops(v.crops, size), v.audio, v.fps, v.label, v.split, v.fallback_used)
        for v in videos
    ]


def _fixed_windows(videos: Sequence[LipsyncVideo], mc: LipSyncModelConfig) -> _WindowSet:
    vids, auds, labels, index = [], [], [], []
    for i, v in enumerate(videos):
        av = windows(v.crops, v.audio, v.fps, mc.window_s, mc.hop_s, target_fps=mc.fps, sr=mc.sample_rate)
        vids.append(av.video)
        auds.append(av.audio)
        labels.extend([v.label] * len(av))
        index.extend([i] * len(av))
    return _WindowSet(
        np.concatenate(vids), np.concatenate(auds), np.asarray(labels, np.float32), np.asarray(index, np.int64)
    )


def _epoch_plan(videos: Sequence[LipsyncVideo], cfg: FinetuneLipsyncConfig, rng: np.random.Generator) -> list:
    plan = []
    for i, v in enumerate(videos):
        starts = window_starts(v.duration_s, cfg.window_s, cfg.hop_s)
        if cfg.max_windows_per_video and len(starts) > cfg.max_windows_per_video:
            starts = rng.choice(starts, cfg.max_windows_per_video, replace=False)
        plan.extend((i, float(s)) for s in starts)
    rng.shuffle(plan)
    return plan


def _train_batch(
    videos: Sequence[LipsyncVideo],
    items: list[tuple[int, float]],
    mc: LipSyncModelConfig,
    augment: AugmentParams | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vids, auds, labels = [], [], []
    for i, start in items:
        v = videos[i]
        if augment is not None:
            speed = random_speed(rng, augment)
            clip, sound = speed_window(
                v.crops, v.audio, v.fps, start, mc.n_frames, mc.fps, mc.n_samples, speed, mc.sample_rate
            )
        else:
            clip, sound = extract_window(
                v.crops, v.audio, v.fps, start, mc.n_frames, mc.fps, mc.n_samples, mc.sample_rate
            )
        vids.append(clip)
        auds.append(sound)
        labels.append(v.label)
    return np.stack(vids), np.stack(auds), np.asarray(labels, np.float32)


# -------------------------------------------------------------------------------------- training


def _build_model(cfg: FinetuneLipsyncConfig, pretrained: Path | None) -> tuple[LipSyncDetector, str]:
    """A model from scratch, or from a safetensors file (its ``config.json`` beside it wins over ``cfg``)."""
    if pretrained is None:
        return LipSyncDetector(LipSyncModelConfig(**cfg.model_config_dict())), ""
    pretrained = Path(pretrained)
    weights = pretrained / "model.safetensors" if pretrained.is_dir() else pretrained
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {weights}")
    config_file = weights.parent / "config.json"
    if config_file.is_file():
        mc = LipSyncModelConfig.from_dict(json.loads(config_file.read_text()))
        mc.extra = {}
        # Input geometry and decision policy follow this run's settings; the architecture follows the weights.
        mc.hop_s = cfg.hop_s
        mc.video_aggregation = cfg.video_aggregation
        mc.dropout = cfg.dropout
    else:
        mc = LipSyncModelConfig(**cfg.model_config_dict())
    model = LipSyncDetector(mc)
    load_weights(model, weights)
    logger.info("finetune_lipsync: starting from %s", weights)
    return model, str(weights)


@torch.no_grad()
def _evaluate(
    model: LipSyncDetector, ws: _WindowSet, n_videos: int, labels: np.ndarray, cfg, device, amp_dtype
) -> tuple[float, np.ndarray, np.ndarray]:
    """Window-level loss, window logits, video probabilities."""
    model.eval()
    logits = []
    bs = max(cfg.batch_size, 32)
    for i in range(0, len(ws.labels), bs):
        v = torch.from_numpy(ws.video[i : i + bs]).to(device)
        a = torch.from_numpy(ws.audio[i : i + bs]).to(device)
        with _autocast(device, amp_dtype):
            logits.append(model(v, a).float().cpu())
    logits_t = torch.cat(logits)
    loss = float(F.binary_cross_entropy_with_logits(logits_t, torch.from_numpy(ws.labels)))
    win = logits_t.numpy()
    probs = np.array([aggregate(win[ws.video_index == k], cfg.video_aggregation) for k in range(n_videos)])
    return loss, win, probs


def _window_loss(
    model: LipSyncDetector,
    video: torch.Tensor,
    audio: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: torch.Tensor,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """The training loss of one batch of windows (the batch is moved to the model's device; float32 loss)."""
    from components.common.device import module_device

    device = module_device(model)
    video, audio, labels = video.to(device), audio.to(device), labels.to(device)
    with _autocast(device, amp_dtype):
        logits = model(video, audio)
    return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight.to(device))


def _data_fingerprint(videos: Sequence[LipsyncVideo]) -> str:
    h = hashlib.sha256()
    for v in videos:
        h.update(f"{v.video_id}|{v.label}|{len(v.crops)}|{v.fps:g}|{len(v.audio)}\n".encode())
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
    if work_dir is not None:
        return _train_lipsync(train_videos, val_videos, cfg, out_dir, log_fn, pretrained, Path(work_dir), mirror)
    with tempfile.TemporaryDirectory(prefix="lipsync-checkpoints-") as tmp:
        return _train_lipsync(train_videos, val_videos, cfg, out_dir, log_fn, pretrained, Path(tmp), mirror)


def _train_lipsync(
    train_videos: Sequence[LipsyncVideo],
    val_videos: Sequence[LipsyncVideo],
    cfg: FinetuneLipsyncConfig,
    out_dir: str | Path,
    log_fn: LogFn | None,
    pretrained: str | Path | None,
    work_dir: Path,
    mirror: ckpt.CheckpointMirror | None,
) -> TrainResult:
    from safetensors.torch import load_file, save_file
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    from components.evaluate.lipsync_eval import binary_metrics, choose_threshold

    started = time.monotonic()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)
    model, pretrained_src = _build_model(cfg, Path(pretrained) if pretrained else None)
    model.to(device)
    mc = model.config
    from_pretrained = bool(pretrained_src)

    train_videos = _prepare(train_videos, mc.crop_size)
    val_videos = _prepare(val_videos, mc.crop_size)
    val_ws = _fixed_windows(val_videos, mc)
    val_labels = np.array([v.label for v in val_videos])
    n_fake = sum(v.label for v in train_videos)
    pos_weight = torch.tensor(min(5.0, max(0.2, (len(train_videos) - n_fake) / max(n_fake, 1))), device=device)

    head_lr = cfg.lr if from_pretrained else cfg.lr_scratch
    enc_lr = cfg.lr_encoder if from_pretrained else cfg.lr_scratch
    optimizer = torch.optim.AdamW(_param_groups(model, head_lr, enc_lr), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and device.type == "cuda")
    augment = AugmentParams.from_config(cfg) if cfg.use_augmentation else None
    n_groups = max(len(g) for g in model.encoder_layer_groups().values())

    ckpt_dir = work_dir / "checkpoints"
    last_dir, best_file = ckpt_dir / ckpt.LAST_DIR, ckpt_dir / ckpt.BEST_FILE
    skip = {"device", "num_threads", "precision"}
    fingerprint = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in skip},
        "train": _data_fingerprint(train_videos),
        "val": _data_fingerprint(val_videos),
        "pretrained": ckpt.file_sha256(pretrained_src) if pretrained_src else "",
    }
    state: dict = {"epoch": 0, "best_loss": None, "best_epoch": -1, "history": [], "fingerprint": fingerprint}
    if mirror is not None and ckpt.read_state(last_dir) is None:
        mirror.pull(ckpt_dir)
    saved = ckpt.read_state(last_dir)
    if saved is not None and saved.get("fingerprint") == fingerprint:
        weights, state = ckpt.load_last(last_dir, optimizer, scheduler, scaler)
        model.load_state_dict(weights)
        logger.info("finetune_lipsync: resuming after epoch %d", state["epoch"])
    elif saved is not None:
        logger.warning("finetune_lipsync: checkpoint in %s is for other settings or data; starting over", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resumed_from = int(state["epoch"])
    logger.info(
        "finetune_lipsync: %d train / %d val videos (%d val windows), %s, device %s, precision %s",
        len(train_videos),
        len(val_videos),
        len(val_ws.labels),
        pretrained_src or "from scratch",
        device,
        amp_dtype or "fp32",
    )

    history: list[dict[str, float]] = state["history"]
    for epoch in range(resumed_from, cfg.epochs):
        # Reseed per epoch: what epoch e draws does not depend on whether the run was resumed.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        n_unfrozen = unfrozen_groups(epoch, cfg, from_pretrained, n_groups)
        n_trainable = set_trainable(model, n_unfrozen)
        model.train()
        plan = _epoch_plan(train_videos, cfg, rng)
        batches = [plan[i : i + cfg.batch_size] for i in range(0, len(plan), cfg.batch_size)]
        total, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(batches, desc=f"lipsync epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for step, items in enumerate(bar):
            v_np, a_np, y_np = _train_batch(train_videos, items, mc, augment, rng)
            video = torch.from_numpy(v_np).to(device)  # uint8 to the device; augmentation runs there
            if augment is not None:
                video = augment_video(video, augment, gen)
            loss = _window_loss(model, video, torch.from_numpy(a_np), torch.from_numpy(y_np), pos_weight, amp_dtype)
            scaler.scale(loss / cfg.grad_accum).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == len(batches):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(items)
            count += len(items)
        val_loss, _, val_probs = _evaluate(model, val_ws, len(val_videos), val_labels, cfg, device, amp_dtype)
        lrs = [group["lr"] for group in optimizer.param_groups]  # the rates this epoch trained with
        scheduler.step(val_loss)
        val_auc = float(roc_auc_score(val_labels, val_probs)) if len(set(val_labels.tolist())) == 2 else float("nan")
        val_acc = float(np.mean((val_probs >= 0.5) == val_labels))
        row = {
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            "val_video_auc": val_auc,
            "val_video_accuracy": val_acc,
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
            row["train_loss"],
            val_loss,
            val_auc,
            n_unfrozen,
        )
        if state["best_loss"] is None or val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_epoch=epoch)
            save_file({k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}, str(best_file))
        state["epoch"] = epoch + 1
        ckpt.save_last(last_dir, model.state_dict(), optimizer, scheduler, scaler, state)
        if mirror is not None:
            mirror.push(ckpt_dir)
        if log_fn is not None:
            log_fn(row, epoch)

    model.load_state_dict(load_file(str(best_file)))
    best = {"loss": float(state["best_loss"]), "epoch": int(state["best_epoch"])}
    _, _, val_probs = _evaluate(model, val_ws, len(val_videos), val_labels, cfg, device, amp_dtype)
    threshold = choose_threshold(val_labels, val_probs)
    val_metrics = binary_metrics(val_labels, val_probs, threshold)
    mc.threshold = float(threshold)
    mc.extra = {
        "trained_at_unix": int(time.time()),
        "pretrained": pretrained_src,
        "best_epoch": best["epoch"],
        "best_val_loss": best["loss"],
    }
    model_dir = save_model(model.to("cpu"), out_dir)
    result = TrainResult(
        model_dir=Path(model_dir),
        best_epoch=int(best["epoch"]),
        best_val_loss=float(best["loss"]),
        threshold=float(threshold),
        val_metrics={k: v for k, v in val_metrics.items() if isinstance(v, int | float)},
        history=history,
        pretrained=pretrained_src,
        n_train_videos=len(train_videos),
        n_val_videos=len(val_videos),
        seconds=time.monotonic() - started,
        resumed_from_epoch=resumed_from,
    )
    summary = {
        **{k: v for k, v in asdict(result).items() if k != "model_dir"},
        "config": asdict(cfg),
        "train_video_ids": sorted(v.video_id for v in train_videos),
        "val_video_ids": sorted(v.video_id for v in val_videos),
    }
    (Path(model_dir) / SUMMARY_FILE).write_text(json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    write_model_card(Path(model_dir), result, cfg, mc)
    logger.info(
        "finetune_lipsync: best epoch %d val_loss %.4f, threshold %.3f, val AUC %s (%.0f s)",
        result.best_epoch + 1,
        result.best_val_loss,
        threshold,
        val_metrics.get("roc_auc"),
        result.seconds,
    )
    return result


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_model_card(model_dir: Path, result: TrainResult, cfg: FinetuneLipsyncConfig, mc: LipSyncModelConfig) -> Path:
    """Write ``README.md``: what the model is, how it was trained, how well it did on validation."""
    vm = result.val_metrics

    def fmt(key):
        value = vm.get(key)
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"

    lines = [
        "# Lip-sync manipulation detector",
        "",
        "Scores a talking-head clip: the probability that the lips were re-synthesized to other audio "
        "(fake = positive class). Inputs: mouth crops (face_tracking) and the aligned 16 kHz audio, cut into "
        f"{mc.window_s:g} s windows every {mc.hop_s:g} s; the video score is the `{mc.video_aggregation}` of "
        "window scores.",
        "",
        "## Architecture",
        f"- visual: 3D-conv encoder, {mc.visual_channels}/{2 * mc.visual_channels}/{4 * mc.visual_channels} "
        f"channels on {mc.crop_size}x{mc.crop_size} crops at {mc.fps:g} fps, temporal conv to {mc.embed_dim}",
        f"- audio: 1D-conv encoder over a {mc.n_mels}-band log-mel spectrogram (10 ms hop)",
        f"- fusion: {mc.fusion}; classifier: 2-layer MLP on mean+max pooled fused sequence",
        "",
        "## Training",
        f"- started from: {result.pretrained or 'scratch'}",
        f"- videos: {result.n_train_videos} train, {result.n_val_videos} validation (split by video)",
        f"- epochs: {cfg.epochs} (freeze {cfg.freeze_epochs} when fine-tuning), lr {cfg.lr:g}, "
        f"lr_encoder {cfg.lr_encoder:g}, lr_scratch {cfg.lr_scratch:g}, "
        f"batch {cfg.batch_size} x accum {cfg.grad_accum}",
        f"- augmentation: {'on' if cfg.use_augmentation else 'off'} (speed {cfg.speed_min}-{cfg.speed_max}x, "
        f"rotation ±{cfg.rotation_deg:g}°, flip {cfg.flip_prob}, jitter {cfg.color_jitter}, noise {cfg.noise_std})",
        f"- best epoch: {result.best_epoch + 1}, validation loss {result.best_val_loss:.4f}",
        "",
        "## Validation (video level, fake = positive)",
        f"- threshold {result.threshold:.3f}; accuracy {fmt('accuracy')}, ROC AUC {fmt('roc_auc')}, "
        f"AP {fmt('average_precision')}, FPR {fmt('fpr')}, FNR {fmt('fnr')}",
        "",
        "## Limitations",
        "- Judges audio-visual timing only; a fake with well-synchronized lips is out of its reach.",
        "- Needs a visible mouth; with the centre-crop fallback (no face found) scores are unreliable.",
        "- Validated on the client's own month of data only; see the evaluate stage for test and robustness.",
        "",
    ]
    path = model_dir / MODEL_CARD_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ the stage


@dataclass
class FinetuneLipsyncReport:
    """What the stage did (logged to MLflow and returned to the DAG)."""

    model_dir: str
    registered_name: str = ""
    registered_version: str = ""
    pretrained: str = ""
    n_train_videos: int = 0
    n_val_videos: int = 0
    n_test_videos: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    threshold: float = 0.5
    val_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    not_trained_reason: str = ""

    def as_metrics(self) -> dict[str, float]:
        """Numbers for MLflow / kfp Metrics."""
        out = {
            "n_train_videos": float(self.n_train_videos),
            "n_val_videos": float(self.n_val_videos),
            "n_test_videos": float(self.n_test_videos),
            "n_skipped": float(len(self.skipped)),
            "best_epoch": float(self.best_epoch),
            "best_val_loss": self.best_val_loss,
            "threshold": self.threshold,
            "train_seconds": self.seconds,
        }
        out.update({f"val_{k}": float(v) for k, v in self.val_metrics.items()})
        return out


def load_lipsync_videos(
    faces_dir: str | Path, rules: EvidenceRules, splits: Sequence[str] = ("train", "val", "test")
) -> tuple[list[LipsyncVideo], list[dict[str, str]]]:
    """Read the labelled videos of a faces Dataset (the selected sample of each).

    Videos without an authenticity label are ignored; rejected or unreadable ones, and those without the
    evidence serving would require for a verdict (no audio, no usable face, shorter than one window), are
    returned as ``skipped`` with their reason and split, and the rest goes on.

    Args:
        faces_dir: The face_tracking Dataset.
        rules: The evidence a clip needs (:class:`components.face_tracking.evidence.EvidenceRules`).
        splits: The splits to read.

    Returns:
        ``(videos, skipped)``.
    """
    from components.common.faults import is_infrastructure_error
    from components.face_tracking.dataset import load_mouth_crops, load_sample_audio, read_face_index

    videos, skipped = [], []
    for rec in read_face_index(faces_dir):
        if rec.authenticity not in LABELS or rec.split not in splits:
            continue
        if rec.status != "ok":
            skipped.append(
                {"video_id": rec.video_id, "split": rec.split, "reason": rec.reason or f"status {rec.status}"}
            )
            continue
        problems = rules.problems(rec.evidence)
        if problems:
            why = "; ".join(f"{p.code} ({p.detail})" for p in problems)
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": f"no_evidence: {why}"})
            continue
        sample = rec.selected_sample
        if sample is None:
            reason = "no_sample: no selected mouth-crop sequence"
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": reason})
            continue
        try:
            crops = load_mouth_crops(faces_dir, sample)
            audio = load_sample_audio(faces_dir, rec)
            if rec.fps <= 0 or len(crops) == 0:
                raise ValueError(f"fps {rec.fps}, {len(crops)} frames")
        except (OSError, ValueError) as exc:
            if is_infrastructure_error(exc):  # a failing disk is not the video's problem
                raise
            skipped.append({"video_id": rec.video_id, "split": rec.split, "reason": f"unreadable: {exc}"})
            logger.warning("finetune_lipsync: skipping %s: %s", rec.video_id, exc)
            continue
        videos.append(
            LipsyncVideo(rec.video_id, crops, audio, rec.fps, LABELS[rec.authenticity], rec.split, rec.fallback_used)
        )
    return videos, skipped


def training_pool(videos: Sequence[LipsyncVideo]) -> list[LipsyncVideo]:
    """The videos training may see: the manifest's train and val splits (test stays for evaluate)."""
    return [v for v in videos if v.split in ("train", "val")]


def resolve_pretrained(config, cfg: FinetuneLipsyncConfig, work_dir: Path) -> Path | None:
    """Where the starting weights are: ``None`` (scratch), a file, or the downloaded champion folder.

    ``champion`` falls back to scratch (with a warning) when the registry has no champion yet.
    """
    if not cfg.pretrained:
        return None
    if cfg.pretrained != "champion":
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"finetune_lipsync.pretrained: {path} does not exist")
        return path
    from components.evaluate.lipsync_eval import fetch_champion

    champion = fetch_champion(config, work_dir / "champion")
    if champion is None:
        logger.warning("finetune_lipsync: lipsync-%s has no champion yet; training from scratch", config.client_id)
        return None
    logger.info("finetune_lipsync: fine-tuning lipsync-%s version %s (champion)", config.client_id, champion[1])
    return champion[0] / "model.safetensors"


def run_finetune_lipsync(
    faces_dir: Path,
    out_dir: Path,
    config,
    cfg: FinetuneLipsyncConfig | None = None,
    parent_run_id: str = "",
) -> FinetuneLipsyncReport:
    """The stage: read the faces Dataset, train, write the model artifact, register it as ``challenger``.

    Checkpoints live in ``{state_dir}/checkpoints/finetune_lipsync/{client_id}-{window}``, mirrored to the same
    keys of ``storage.artifacts_uri`` after every epoch, so that a restarted task (a preempted pod on a new
    node included) resumes after its last finished epoch.

    Args:
        faces_dir: The face_tracking Dataset.
        out_dir: The model artifact folder (model.safetensors, config.json, README.md, training_summary.json).
        config: The ClientConfig (tracking, client id); its ``finetune_lipsync`` section is the default ``cfg``.
        cfg: Stage settings (overrides the ClientConfig's section).
        parent_run_id: The DAG's parent MLflow run (``""``: standalone run).

    Returns:
        The report: the registered version, or an empty version and ``not_trained_reason`` when this
        month's videos cannot train the model (then ``out_dir`` holds ``no_challenger.json`` and the
        gate keeps the champion).
    """
    from components.common import tracking

    cfg = cfg or config.finetune_lipsync
    out_dir = Path(out_dir)
    videos, skipped = load_lipsync_videos(faces_dir, EvidenceRules.of(cfg.window_s, config.face_tracking))
    pool = training_pool(videos)
    n_test = len(videos) - len(pool)
    train, val = split_by_video(pool, cfg.val_fraction, cfg.seed)
    logger.info(
        "finetune_lipsync: %d labelled videos (%d train, %d val, %d test kept for evaluate), %d skipped",
        len(videos),
        len(train),
        len(val),
        n_test,
        len(skipped),
    )
    params = {**asdict(cfg), "n_train_videos": len(train), "n_val_videos": len(val), "n_skipped": len(skipped)}
    name = f"lipsync-{config.client_id}"
    with (
        tracking.stage_run(config.tracking, parent_run_id, "finetune_lipsync", params) as run_id,
        tempfile.TemporaryDirectory(prefix="lipsync-pretrained-") as work,
    ):
        pretrained = resolve_pretrained(config, cfg, Path(work))
        prefix = ckpt.checkpoint_prefix("finetune_lipsync", config.client_id, config.window.label())
        try:
            result = train_lipsync(
                train,
                val,
                cfg,
                out_dir,
                log_fn=lambda metrics, step: tracking.log_metrics(metrics, step=step),
                pretrained=pretrained,
                work_dir=Path(config.state_dir) / prefix,
                mirror=ckpt.open_mirror(config.storage.artifacts_uri, prefix, config.encryption),
            )
        except NotTrainable as exc:
            write_no_challenger(out_dir, str(exc))
            return FinetuneLipsyncReport(
                model_dir=str(out_dir),
                n_train_videos=len(train),
                n_val_videos=len(val),
                n_test_videos=n_test,
                skipped=skipped,
                not_trained_reason=str(exc),
            )
        report = FinetuneLipsyncReport(
            model_dir=str(result.model_dir),
            pretrained=result.pretrained,
            n_train_videos=result.n_train_videos,
            n_val_videos=result.n_val_videos,
            n_test_videos=n_test,
            skipped=skipped,
            best_epoch=result.best_epoch,
            best_val_loss=result.best_val_loss,
            threshold=result.threshold,
            val_metrics=result.val_metrics,
            seconds=result.seconds,
        )
        tracking.log_metrics(report.as_metrics())
        tracking.log_dict_artifact(_json_safe(asdict(report)), "finetune_lipsync/report.json")
        version = tracking.register_model_dir(
            config.tracking,
            name=name,
            local_dir=out_dir,
            run_id=run_id,
            alias="challenger",
            tags={"clipsync.stage": "finetune_lipsync", "clipsync.client": config.client_id},
        )
        report.registered_name = name
        report.registered_version = version
    return report

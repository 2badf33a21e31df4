"""The finetune_lipsync Model artifact: the weights and ``config.json`` (with the threshold), the training summary
and the model card."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from components.common.jsonl import json_safe
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.finetune_lipsync.data import LipsyncVideo
from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, save_model

if TYPE_CHECKING:
    from components.finetune_lipsync.train import TrainResult

MODEL_CARD_FILE = "README.md"
SUMMARY_FILE = "training_summary.json"


def export_model(
    model: LipSyncDetector,
    result: TrainResult,
    cfg: FinetuneLipsyncConfig,
    train_videos: Sequence[LipsyncVideo],
    val_videos: Sequence[LipsyncVideo],
) -> Path:
    """Write ``result.model_dir``: ``model.safetensors`` + ``config.json`` (the decision threshold and training
    facts in it), ``training_summary.json`` and the model card ``README.md``. The model ends on the CPU.

    Returns:
        The model folder.
    """
    extra = {
        "trained_at_unix": int(time.time()),
        "pretrained": result.pretrained,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
    }
    model.config = mc = replace(model.config, threshold=float(result.threshold), extra=extra)
    model_dir = save_model(model.to("cpu"), result.model_dir)
    summary = {
        **{k: v for k, v in asdict(result).items() if k != "model_dir"},
        "config": asdict(cfg),
        "train_video_ids": sorted(v.video_id for v in train_videos),
        "val_video_ids": sorted(v.video_id for v in val_videos),
    }
    (model_dir / SUMMARY_FILE).write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True))
    write_model_card(model_dir, result, cfg, mc)
    return model_dir


def write_model_card(model_dir: Path, result: TrainResult, cfg: FinetuneLipsyncConfig, mc: LipSyncModelConfig) -> Path:
    """Write ``README.md``: what the model is, how it was trained, how well it did on validation."""
    vm, aug = result.val_metrics, cfg.augment

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
        f"- fusion: {mc.fusion}; classifier: 2-layer MLP on mean+max pooled fused sequence"
        + (f" and the streams' correlation at lags within ±{mc.sync_lags} frames" if mc.sync_lags else ""),
        "",
        "## Training",
        f"- started from: {result.pretrained or 'scratch'}",
        f"- videos: {result.n_train_videos} train, {result.n_val_videos} validation (split by video)",
        f"- epochs: {cfg.epochs} (freeze {cfg.freeze_epochs} when fine-tuning), lr {cfg.lr:g}, "
        f"lr_encoder {cfg.lr_encoder:g}, lr_scratch {cfg.lr_scratch:g}, "
        f"batch {cfg.batch_size} x accum {cfg.grad_accum}",
        f"- augmentation: {'on' if aug.enabled else 'off'} (speed {aug.speed_min}-{aug.speed_max}x, "
        f"rotation ±{aug.rotation_deg:g}°, flip {aug.flip_prob}, jitter {aug.color_jitter}, noise {aug.noise_std})",
        f"- best epoch: {result.best_epoch}, validation loss {result.best_val_loss:.4f}",
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

"""finetune_clip: adapt a base CLIP to a client's labelled videos (LoRA, hybrid or full fine-tuning).

Training is symmetric contrastive (InfoNCE) between video embeddings (pooled frame embeddings) and the
embeddings of the label texts of the videos in the batch (:mod:`~components.finetune_clip.loss`), run by
:mod:`~components.finetune_clip.train` with checkpoints the stage mirrors to the artifacts store after every
epoch, so a retried (preempted) pod resumes. The exported Model artifact is :mod:`~components.finetune_clip.export`'s.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from components.common import checkpoints as ckpt
from components.common import retrain
from components.common.catalog import remember_categories
from components.common.champions import fetch_champion
from components.common.device import resolve_device
from components.common.distributed import init_distributed, main_first, world_from_env
from components.common.names import registered_name
from components.common.no_challenger import NotTrainable, write_no_challenger
from components.common.shards import open_shards
from components.common.stage import StageContext
from components.finetune_clip import history
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_clip.data import ClipSample, FrameSource, load_frame_samples
from components.finetune_clip.export import export_model
from components.finetune_clip.negatives import apply_feedback, read_feedback_records
from components.finetune_clip.train import LogFn, TrainResult, train_clip

logger = logging.getLogger("clipsync.finetune_clip")


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
    feedback_labels: int = 0
    feedback_negatives: int = 0
    n_remembered: int = 0
    warm_start_version: str = ""

    def as_metrics(self) -> dict[str, float]:
        return {
            "feedback_labels": self.feedback_labels,
            "feedback_negatives": self.feedback_negatives,
            "n_remembered": self.n_remembered,
            "warm_started": float(bool(self.warm_start_version)),
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


def run_finetune_clip(
    frames_dir: Path,
    out_dir: Path,
    cfg: FinetuneClipConfig,
    ctx: StageContext,
    feedback_dir: Path | None = None,
    config_json: str = "",
) -> FinetuneReport:
    """The finetune_clip stage: train on the window's train/val videos, export, register as challenger.

    With the feedback stage's records (``feedback_dir``), a search the client marked relevant adds its text to
    that training video's labels and one marked not relevant makes the video a known negative of the text,
    weighted ``negative_weight`` in the loss. Validation and test videos are left as labelled, so the months'
    figures stay comparable.

    Checkpoints live in ``{state_dir}/checkpoints/finetune_clip/{client_id}-{window}``, mirrored to the same
    keys of ``storage.artifacts_uri`` after every epoch, so that a restarted task (a preempted pod on a new
    node included) resumes; the Model artifact ``out_dir`` only receives the exported model. Opens the stage run
    ``finetune_clip``, logs every epoch's metrics there and registers ``clip-<client>`` with alias
    ``challenger`` (nothing is logged or registered when ``ctx.track`` is off).

    Args:
        frames_dir: The frame_extraction Dataset.
        out_dir: The Model artifact folder to write.
        cfg: Stage settings.
        ctx: The client, its state folder, model cache and artifacts store, the data window (model card,
            checkpoint path), the MLflow run.
        feedback_dir: The feedback stage's Dataset (``feedback_records.jsonl``); ``None``: no feedback.
        config_json: The client's whole configuration as the task received it. With it, and
            ``cfg.distributed`` asking for more than one process, the stage runs as a TrainJob
            (:func:`components.common.trainjob.run_as_trainjob`) whose rank 0 does all of the above.

    Returns:
        The stage report. When the window holds too few training videos, or the same training already produced
        a registered version (:mod:`components.common.retrain`: ``identical to v<N>``), nothing is trained or
        registered: the report says why (``not_trained_reason``) and ``out_dir`` holds ``no_challenger.json``,
        so the gate keeps the champion.
    """
    if config_json and cfg.distributed.requested:
        from components.common.trainjob import run_as_trainjob

        inputs = {"frames": Path(frames_dir), **({"feedback": Path(feedback_dir)} if feedback_dir else {})}
        return FinetuneReport(**run_as_trainjob("finetune_clip", config_json, inputs, out_dir, cfg.distributed, ctx))
    from components.common.storage import open_store
    from components.finetune_clip.model import load_base_clip, resolve_base_ref

    world = world_from_env()
    init_distributed(world, resolve_device(cfg.device))
    if not world.is_main:  # rank 0 alone logs, registers and writes the outputs
        ctx = dataclasses.replace(ctx, track=False)
    window = ctx.window.label()
    base_ref = resolve_base_ref(cfg.base_model, ctx.state_dir)
    bundle = load_base_clip(base_ref, ctx.cache_dir)
    shards = open_shards(frames_dir, ctx.state_dir, ctx.encryption)
    streamed = list(shards.listing.shard_of()) if shards else []
    data, skipped = load_frame_samples(
        Path(frames_dir), ("train", "val"), bundle.image_spec, cfg.frames_per_video, streamed=streamed
    )
    store = open_store(ctx.storage.artifacts_uri, ctx.encryption)
    end = ctx.window.end()
    shape = (cfg.frames_per_video, 3, bundle.image_spec.size, bundle.image_spec.size)
    window_ids = {s.video_id for split in data.values() for s in split}
    window_ids |= {r["video_id"] for r in skipped}
    earlier = history.recall(store, window_ids, end, cfg.history_days, cfg.history_max_videos, shape)
    # Feedback may name any video the model answered with, a remembered one as much as this window's.
    before = [*data["train"], *(s for split, s, _ in earlier if split == "train")]
    train = sorted(apply_feedback(before, read_feedback_records(feedback_dir)), key=lambda s: s.video_id)
    val = sorted([*data["val"], *(s for split, s, _ in earlier if split == "val")], key=lambda s: s.video_id)
    first_seen = {s.video_id: seen for _, s, seen in earlier}
    if world.is_main:
        from components.frame_extraction.dataset import read_frame_index

        remember_categories(store, {r.video_id: r.category for r in read_frame_index(Path(frames_dir))})
        # One video's frames at a time: a streamed video's are read back from its shard to be remembered.
        frames = FrameSource.of([], shards, cfg, bundle.image_spec)
        history.remember(
            store,
            (
                (split, frames.filled(s), seen)
                for split, group in (("train", train), ("val", val))
                for s in group
                for seen in [first_seen.get(s.video_id, end.isoformat())]
            ),
        )
    logger.info("finetune_clip: %d train, %d val videos, %d skipped", len(train), len(val), len(skipped))
    prefix = ckpt.checkpoint_prefix("finetune_clip", ctx.client_id, window)
    work_dir = Path(ctx.state_dir) / prefix
    mirror = ckpt.open_mirror(ctx.storage.artifacts_uri, prefix, ctx.encryption)
    report = FinetuneReport(
        model_dir=str(out_dir),
        strategy=cfg.strategy,
        base_model=base_ref,
        n_train=len(train),
        n_val=len(val),
        skipped=skipped,
        feedback_labels=sum(len(s.labels) for s in train) - sum(len(s.labels) for s in before),
        feedback_negatives=sum(len(s.negatives) for s in train),
        n_remembered=len(earlier),
    )
    champion_dir = work_dir / ("champion" if world.is_main else f"champion-rank{world.rank}")
    with main_first(world):
        champion = fetch_champion(ctx.tracking, "clip", ctx.client_id, champion_dir) if cfg.warm_start else None
    init_adapter = history.warm_start_adapter(champion[0], base_ref, cfg, window) if champion else None
    report.warm_start_version = champion[1] if init_adapter else ""
    name = registered_name("clip", ctx.client_id)
    inputs = _fingerprint(train, val, cfg, base_ref, shards.listing.digest_of() if shards else {})
    same = retrain.identical_version(ctx.tracking, name, inputs, report.warm_start_version)

    def body(log_fn: LogFn) -> TrainResult:
        if cfg.federated.enabled:
            from components.finetune_clip.federated import site_samples, train_federated

            # Each simulated site holds its own videos' frames (streamed ones are read back from the shards).
            source = FrameSource.of([], shards, cfg, bundle.image_spec)
            sites = site_samples(
                [source.filled(s) for s in train], Path(frames_dir), ctx.storage.videos_prefix, cfg.federated.sites
            )
            result = train_federated(bundle, ctx.cache_dir, sites, val, cfg, log_fn, init_adapter)
        else:
            result = train_clip(bundle, train, val, cfg, work_dir, log_fn, mirror, init_adapter, shards, world)
        if not world.is_main:
            return result
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
                "client_id": ctx.client_id,
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

    params = {
        **cfg.training_fingerprint(),
        "base_model": base_ref,
        "window": window,
        "device": cfg.device,
        "precision": cfg.precision,
    }
    with ctx.stage_run("finetune_clip", params) as run:
        report.run_id = run.run_id or None
        try:
            if same is not None:
                raise NotTrainable(retrain.identical_reason(same))
            body(run.log_metrics)
        except NotTrainable as exc:
            write_no_challenger(out_dir, str(exc))
            report.not_trained_reason = str(exc)
        run.log_metrics(report.as_metrics())
        run.log_dict({"skipped": skipped}, "finetune_clip/skipped.json")
        if ctx.track and not report.not_trained_reason:
            from components.common import tracking

            report.registered_version = tracking.register_model_dir(
                ctx.tracking,
                name,
                Path(out_dir),
                run.run_id,
                alias="challenger",
                tags={
                    "strategy": cfg.strategy,
                    "window": window,
                    "base_model": base_ref,
                    **retrain.version_tags(inputs, report.warm_start_version),
                },
            )
    return report


def _fingerprint(
    train: list[ClipSample], val: list[ClipSample], cfg: FinetuneClipConfig, base_ref: str, streamed: dict[str, str]
) -> str:
    """What decides the trained model apart from its start (:mod:`components.common.retrain`); a streamed video's
    frames are named by their digest in the shard listing (``streamed``), without reading them."""

    def content(samples: list[ClipSample]) -> list[list]:
        def frames(s: ClipSample) -> str:
            return retrain.array_hash(s.frames) if s.frames is not None else streamed[s.video_id]

        return [[s.video_id, frames(s), s.labels, s.negatives, s.category] for s in samples]

    settings = {**cfg.training_fingerprint(), "early_stopping_patience": cfg.early_stopping_patience}
    return retrain.fingerprint(train=content(train), val=content(val), settings=settings, base_model=base_ref)

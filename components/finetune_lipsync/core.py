"""finetune_lipsync: train the lip-sync manipulation detector on the client's talking heads.

The stage reads the faces Dataset (:mod:`~components.finetune_lipsync.data`), holds out 20 % of the training pool
by video for validation, trains (:mod:`~components.finetune_lipsync.train`: two phases from the champion's
weights, checkpoints mirrored to the artifacts store so that a restarted task resumes), writes the Model artifact
(:mod:`~components.finetune_lipsync.export`) and registers it as the challenger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.common import checkpoints as ckpt
from components.common import retrain
from components.common.champions import champion_version
from components.common.device import resolve_device
from components.common.distributed import init_distributed, main_first, world_from_env
from components.common.jsonl import json_safe
from components.common.names import registered_name
from components.common.no_challenger import NotTrainable, write_no_challenger
from components.common.shards import open_shards
from components.common.stage import StageContext
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import read_face_index
from components.face_tracking.evidence import EvidenceRules
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.finetune_lipsync.data import LipsyncVideo, load_lipsync_videos, split_by_video, training_pool

logger = logging.getLogger("clipsync.finetune_lipsync")


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


def resolve_pretrained(ctx: StageContext, cfg: FinetuneLipsyncConfig, work_dir: Path) -> Path | None:
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
    from components.common.champions import fetch_champion

    champion = fetch_champion(ctx.tracking, "lipsync", ctx.client_id, work_dir / "champion")
    if champion is None:
        logger.warning("finetune_lipsync: lipsync-%s has no champion yet; training from scratch", ctx.client_id)
        return None
    logger.info("finetune_lipsync: fine-tuning lipsync-%s version %s (champion)", ctx.client_id, champion[1])
    return champion[0] / "model.safetensors"


def run_finetune_lipsync(
    faces_dir: Path,
    out_dir: Path,
    cfg: FinetuneLipsyncConfig,
    ctx: StageContext,
    *,
    face_config: FaceTrackingConfig | None = None,
    config_json: str = "",
) -> FinetuneLipsyncReport:
    """The finetune_lipsync stage: read the faces Dataset, train, write the model artifact, register it.

    Checkpoints live in ``{state_dir}/checkpoints/finetune_lipsync/{client_id}-{window}``, mirrored to the same
    keys of ``storage.artifacts_uri`` after every epoch, so that a restarted task (a preempted pod on a new
    node included) resumes after its last finished epoch. Opens the stage run ``finetune_lipsync``, logs every
    epoch's metrics there and registers ``lipsync-<client>`` with alias ``challenger`` (nothing is logged or
    registered when ``ctx.track`` is off).

    Args:
        faces_dir: The face_tracking Dataset.
        out_dir: The model artifact folder (model.safetensors, config.json, README.md, training_summary.json).
        cfg: Stage settings.
        ctx: The client (the champion to start from), its state folder and artifacts store, the window, MLflow.
        face_config: The client's ``face_tracking`` settings: the evidence a clip needs to be trained on
            (:mod:`components.face_tracking.evidence`); default settings when ``None``.
        config_json: The client's whole configuration as the task received it. With it, and
            ``cfg.distributed`` asking for more than one process, the stage runs as a TrainJob
            (:func:`components.common.trainjob.run_as_trainjob`) whose rank 0 does all of the above.

    Returns:
        The report: the registered version, or an empty version and ``not_trained_reason`` when this
        month's videos cannot train the model or the same training already produced a registered version
        (:mod:`components.common.retrain`: ``identical to v<N>``); then ``out_dir`` holds ``no_challenger.json``
        and the gate keeps the champion.
    """
    out_dir = Path(out_dir)
    if config_json and cfg.distributed.requested:
        from components.common.trainjob import run_as_trainjob

        report = run_as_trainjob("finetune_lipsync", config_json, {"faces": faces_dir}, out_dir, cfg.distributed, ctx)
        return FinetuneLipsyncReport(**report)
    world = world_from_env()
    init_distributed(world, resolve_device(cfg.device))
    if not world.is_main:  # rank 0 alone logs, registers and writes the outputs
        ctx = dataclasses.replace(ctx, track=False)
    rules = EvidenceRules.of(cfg.model.window_s, face_config or FaceTrackingConfig())
    shards = open_shards(faces_dir, ctx.state_dir, ctx.encryption)
    # Streamed videos' arrays stay in the shards; the test videos' are not needed here (only their count).
    lazy: list[str] = []
    if shards is not None:
        lazy = [*shards.listing.shard_of(), *(r.video_id for r in read_face_index(faces_dir) if r.split == "test")]
    videos, skipped = load_lipsync_videos(faces_dir, rules, streamed=lazy)
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
    name = registered_name("lipsync", ctx.client_id)
    with (
        ctx.stage_run("finetune_lipsync", params) as run,
        tempfile.TemporaryDirectory(prefix="lipsync-pretrained-") as work,
    ):
        inputs = _fingerprint(train, val, cfg, shards.listing.digest_of() if shards else {})
        with main_first(world):  # rank 0 creates the tracking database if it is new; the others then read it
            started_from = (
                champion_version(ctx.tracking, "lipsync", ctx.client_id) if cfg.pretrained == "champion" else ""
            )
            same = retrain.identical_version(ctx.tracking, name, inputs, started_from or "")
        prefix = ckpt.checkpoint_prefix("finetune_lipsync", ctx.client_id, ctx.window.label())
        try:
            if same is not None:
                raise NotTrainable(retrain.identical_reason(same))
            # torch comes in with training only: a month that cannot train (no_challenger) never loads it.
            from components.finetune_lipsync.train import train_lipsync

            with main_first(world):
                pretrained = resolve_pretrained(ctx, cfg, Path(work))
            result = train_lipsync(
                train,
                val,
                cfg,
                out_dir,
                log_fn=run.log_metrics,
                pretrained=pretrained,
                work_dir=Path(ctx.state_dir) / prefix,
                mirror=ckpt.open_mirror(ctx.storage.artifacts_uri, prefix, ctx.encryption),
                shards=shards,
                world=world,
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
        run.log_metrics(report.as_metrics())
        run.log_dict(json_safe(asdict(report)), "finetune_lipsync/report.json")
        if ctx.track:
            from components.common import tracking

            report.registered_name = name
            report.registered_version = tracking.register_model_dir(
                ctx.tracking,
                name=name,
                local_dir=out_dir,
                run_id=run.run_id,
                alias="challenger",
                tags={
                    "clipsync.stage": "finetune_lipsync",
                    "clipsync.client": ctx.client_id,
                    **retrain.version_tags(inputs, started_from or ""),
                },
            )
    return report


def _fingerprint(
    train: list[LipsyncVideo], val: list[LipsyncVideo], cfg: FinetuneLipsyncConfig, streamed: dict[str, str]
) -> str:
    """What decides the trained model apart from its start (:mod:`components.common.retrain`); a ``pretrained``
    file is named by its content, a streamed video's crops and audio by their digest in the shard listing
    (``streamed``), without reading them."""

    def arrays(v: LipsyncVideo) -> list[str]:
        return [streamed[v.video_id]] if v.crops is None else [retrain.array_hash(v.crops), retrain.array_hash(v.audio)]

    def content(videos: list[LipsyncVideo]) -> list[list]:
        return [[v.video_id, *arrays(v), v.fps, v.label, v.fallback_used] for v in videos]

    knobs = ("device", "precision", "num_threads", "loader_workers", "distributed")
    settings = {k: v for k, v in asdict(cfg).items() if k not in knobs}
    if cfg.pretrained and cfg.pretrained != "champion":
        settings["pretrained"] = hashlib.sha256(Path(cfg.pretrained).read_bytes()).hexdigest()
    return retrain.fingerprint(train=content(train), val=content(val), settings=settings)

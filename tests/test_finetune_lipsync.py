"""finetune_lipsync: config, split by video, phase switch, augmentation alignment, training, the stage."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from components.common.config import ConfigError
from components.common.no_challenger import no_challenger_reason
from components.config import from_dict
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.evidence import EvidenceRules
from components.finetune_lipsync.augment import augment_video, speed_window
from components.finetune_lipsync.config import AugmentConfig, FinetuneLipsyncConfig, LipSyncArchitecture
from components.finetune_lipsync.core import run_finetune_lipsync
from components.finetune_lipsync.data import LipsyncVideo, load_lipsync_videos, split_by_video
from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, load_model, save_model
from components.finetune_lipsync.synthetic import synthetic_video, write_synthetic_faces
from components.finetune_lipsync.train import set_trainable, train_lipsync, unfrozen_groups

torch.set_num_threads(1)

TINY = FinetuneLipsyncConfig(
    model=LipSyncArchitecture(crop_size=32, visual_channels=4, audio_channels=8, embed_dim=16, attention_heads=2),
    batch_size=8,
    epochs=2,
    freeze_epochs=1,
    pretrained="",
    num_threads=1,
    device="cpu",
    precision="fp32",
)


def _videos(n: int, duration_s: float = 1.5, seed: int = 0) -> list[LipsyncVideo]:
    out = []
    for i in range(n):
        crops, audio = synthetic_video(i % 2 == 1, seed + i, duration_s=duration_s, size=32)
        out.append(LipsyncVideo(f"vid{i:02d}", crops, audio, 25.0, i % 2))
    return out


def test_config_defaults_and_validation():
    cfg = FinetuneLipsyncConfig()
    assert (cfg.lr, cfg.lr_encoder, cfg.val_fraction, cfg.batch_size) == (1e-4, 1e-5, 0.2, 8)
    assert (cfg.sync_negatives, cfg.sync_shift_min_frames, cfg.sync_shift_max_frames) == (1, 3, 25)
    assert cfg.model.sync_lags == 0
    augment = cfg.augment
    assert augment.enabled and (augment.speed_min, augment.speed_max, augment.rotation_deg) == (0.9, 1.1, 15.0)
    for bad in (
        {"model": {"fusion": "sum"}},
        {"freeze_epochs": 20, "epochs": 5},
        {"val_fraction": 0.0},
        {"precision": "int8"},
        {"model": {"video_aggregation": "mode"}},
        {"pretrained": "weights.pth"},
        {"model": {"hop_s": 2.0}},
        {"model": {"embed_dim": 30}},
        {"augment": {"speed_min": 1.2}},
        {"model": {"crop_size": 50}},
        {"sync_negatives": -1},
        {"sync_shift_min_frames": 0},
        {"sync_shift_min_frames": 7, "sync_shift_max_frames": 6},
        {"model": {"sync_lags": 13}},  # 1 s windows at 25 fps: 12 frames at most
        {"model": {"sync_lags": -1}},
    ):
        with pytest.raises(ConfigError):
            FinetuneLipsyncConfig(**bad)
    assert LipSyncModelConfig(**asdict(cfg.model)).n_frames == 25


def test_split_by_video_never_leaks_and_is_stratified_and_stable():
    videos = _videos(20, duration_s=0.4)
    train, val = split_by_video(videos, 0.2, seed=3)
    assert {v.video_id for v in train}.isdisjoint({v.video_id for v in val})
    assert len(train) + len(val) == 20 and len(val) == 4
    assert sorted(v.label for v in val) == [0, 0, 1, 1]
    _, again_val = split_by_video(list(reversed(videos)), 0.2, seed=3)
    assert {v.video_id for v in again_val} == {v.video_id for v in val}  # input order does not matter
    assert {v.video_id for v in split_by_video(videos, 0.2, seed=4)[1]} != {v.video_id for v in val}
    with pytest.raises(ValueError, match="duplicate"):
        split_by_video([*videos, videos[0]], 0.2)
    # Windows follow their video: training refuses a video present on both sides.
    with pytest.raises(ValueError, match="both training and validation"):
        train_lipsync(train, [*val, train[0]], TINY, "/nonexistent")


def test_freeze_schedule_and_which_parameters_get_gradients():
    cfg = replace(TINY, epochs=6, freeze_epochs=2, unfreeze_every=1, unfreeze_groups=1)
    assert [unfrozen_groups(e, cfg, True, 4) for e in range(6)] == [0, 0, 1, 2, 3, 4]
    assert [unfrozen_groups(e, cfg, False, 4) for e in range(6)] == [4] * 6  # scratch: all train
    assert unfrozen_groups(0, replace(cfg, freeze_from_scratch=True), False, 4) == 0

    torch.manual_seed(0)
    model = LipSyncDetector(LipSyncModelConfig(**asdict(TINY.model)))
    crops, audio = synthetic_video(True, 0, duration_s=1.0)
    video, sound = torch.from_numpy(crops[None]), torch.from_numpy(audio[None])

    def grads_after_backward(n_unfrozen):
        model.zero_grad(set_to_none=True)
        set_trainable(model, n_unfrozen)
        model(video, sound).sum().backward()
        return {name for name, p in model.named_parameters() if p.grad is not None}

    phase1 = grads_after_backward(0)
    assert phase1 and all(n.startswith(("fusion.", "classifier.")) for n in phase1)
    top = grads_after_backward(1)
    assert any(n.startswith("visual.temporal.") for n in top) and any(n.startswith("audio.blocks.2.") for n in top)
    assert not any(n.startswith(("visual.blocks.", "audio.blocks.0.", "audio.blocks.1.")) for n in top)
    everything = grads_after_backward(4)
    assert everything == {n for n, _ in model.named_parameters()}


def test_phase_switch_inside_training_freezes_then_unfreezes(tmp_path):
    torch.manual_seed(0)
    start = LipSyncDetector(LipSyncModelConfig(**asdict(TINY.model)))
    save_model(start, tmp_path / "start")
    before = load_file(str(tmp_path / "start" / "model.safetensors"))
    train, val = split_by_video(_videos(10), 0.2, seed=0)
    cfg = replace(TINY, epochs=2, freeze_epochs=1, augment=AugmentConfig(enabled=False), plateau_patience=5)
    seen = []
    result = train_lipsync(
        train,
        val,
        cfg,
        tmp_path / "m1",
        lambda m, s: seen.append((s, m)),
        pretrained=tmp_path / "start" / "model.safetensors",
    )
    assert [row["phase"] for row in result.history] == [1.0, 2.0]
    assert [s for s, _ in seen] == [1, 2]  # MLflow's step is the 1-based epoch
    assert result.history[0]["trainable_params"] < result.history[1]["trainable_params"]
    assert result.history[0]["lr_head"] == cfg.lr and result.history[1]["lr_encoder"] == cfg.lr_encoder
    # Phase 1 only: encoders keep the pretrained weights exactly, the head moved.
    r1 = train_lipsync(
        train, val, replace(cfg, epochs=1), tmp_path / "p1", pretrained=tmp_path / "start" / "model.safetensors"
    )
    after = load_file(str(r1.model_dir / "model.safetensors"))
    enc = [k for k in before if k.startswith(("visual.", "audio."))]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("classifier."))
    # One phase-2 epoch: the top visual group moved, the bottom block did not (progressive).
    assert result.best_epoch == 2  # val loss fell in epoch 2 (seeded), so the phase-2 weights were kept
    after2 = load_file(str(result.model_dir / "model.safetensors"))
    assert not torch.equal(before["visual.temporal.0.weight"], after2["visual.temporal.0.weight"])
    assert torch.equal(before["visual.blocks.0.0.weight"], after2["visual.blocks.0.0.weight"])


def test_speed_augmentation_keeps_audio_and_video_aligned():
    fps, sr = 25.0, 16000
    crops = np.zeros((100, 4, 4, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(100)  # pixel = frame index
    audio = (np.arange(4 * sr) / sr).astype(np.float32)  # sample = its time in seconds
    for speed in (0.9, 1.0, 1.1):
        video, sound = speed_window(crops, audio, fps, 1.0, 25, 25.0, sr, speed, sr)
        assert video.shape == (25, 4, 4, 3) and sound.shape == (sr,)
        for j in range(25):
            t_audio = sound[round(j / 25.0 * sr)]
            t_video_frame = video[j, 0, 0, 0] / fps  # start time of the frame shown
            assert t_video_frame <= t_audio + 1e-4 < t_video_frame + 1 / fps  # audio inside the frame
        assert sound[-1] - sound[0] == pytest.approx(speed * (sr - 1) / sr, abs=1e-3)  # span scales with speed
    # Near the end, the sped-up window is moved back inside the clip instead of running past it.
    video, sound = speed_window(crops, audio, fps, 3.0, 25, 25.0, sr, 1.1, sr)
    assert sound[-1] > 3.8 and sound.min() > 0


def test_sync_negatives_are_real_windows_with_shifted_audio_labelled_fake():
    """SyncNet-style self-supervised negatives: a real window's crops with its own audio shifted, inside the clip."""
    from components.finetune_lipsync.data import WindowLoader, epoch_plan
    from components.finetune_lipsync.model import LipSyncModelConfig

    fps, sr = 25.0, 16000
    crops = np.zeros((75, 16, 16, 3), np.uint8)
    crops[..., 0] = np.arange(75)[:, None, None]  # pixel = frame index
    audio = (np.arange(3 * sr) / sr).astype(np.float32)  # sample = its time in seconds
    videos = [LipsyncVideo("real", crops, audio, fps, 0), LipsyncVideo("fake", crops, audio, fps, 1)]
    cfg = replace(TINY, sync_negatives=2, sync_shift_min_frames=2, sync_shift_max_frames=6)
    plan = epoch_plan(videos, cfg, np.random.default_rng(0))
    plain = [p for p in plan if p[2] == 0.0]
    shifted = [p for p in plan if p[2] != 0.0]
    assert len(plain) == 10 and len(shifted) == 2 * 5 and {p[0] for p in shifted} == {0}  # reals only, 2 per window
    assert all(2 <= round(abs(p[2]) * fps) <= 6 for p in shifted) and {p[2] > 0 for p in shifted} == {True, False}
    span = cfg.augment.speed_max  # one-second windows at the fastest speed
    assert all(0 <= p[1] <= 3.0 - span and 0 <= p[1] + p[2] <= 3.0 - span for p in shifted)
    mc = LipSyncModelConfig(**{**asdict(cfg.model), "crop_size": 16})
    loader = WindowLoader(videos, plan, mc, None, (0, 0))
    for key, (i, start, shift) in enumerate(plan):
        video, sound, label = loader(str(key), loader.read(str(key)))
        assert label == (1 if shift else videos[i].label)
        assert sound[0] == pytest.approx(start + shift, abs=1e-4)  # the audio starts `shift` later (or earlier)
        assert video[0, 0, 0, 0] == int(np.floor(start * fps + 1e-6))  # the crops are the window's own
    assert not [p for p in epoch_plan(videos, replace(cfg, sync_negatives=0), np.random.default_rng(0)) if p[2]]


def test_spatial_augmentation_changes_pixels_but_not_shape():
    crops, _ = synthetic_video(False, 0, duration_s=0.4, size=32)
    batch = torch.from_numpy(np.stack([crops, crops]))
    gen = torch.Generator().manual_seed(0)
    out = augment_video(batch, AugmentConfig(), gen)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.allclose(out, batch.float() / 255, atol=0.02)
    off = AugmentConfig(rotation_deg=0, flip_prob=0, color_jitter=0, noise_std=0)
    torch.testing.assert_close(augment_video(batch, off, gen), batch.float() / 255)


def test_clips_without_evidence_are_not_trained_on(tmp_path):
    """The clips serving would refuse to judge (no audio, no usable face, shorter than a window) are skipped."""
    from components.face_tracking.dataset import read_face_index, write_face_index

    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 6}, duration_s=1.5, size=32, fallback_ids=("train001",))
    records = {r.video_id: r for r in read_face_index(faces)}
    changes = {
        "train002": {"has_audio": False},
        "train003": {"face_px": 20.0},  # smaller than min_face_px (32)
        "train004": {"face_score": 0.55},  # a noise-like detection
        "train005": {"n_frames": 10},  # 0.4 s at 25 fps: shorter than the 1 s window
    }
    write_face_index(faces, [replace(r, **changes.get(r.video_id, {})) for r in records.values()])
    videos, skipped = load_lipsync_videos(faces, EvidenceRules.of(1.0, FaceTrackingConfig()))
    assert [v.video_id for v in videos] == ["train000"]
    codes = {s["video_id"]: s["reason"] for s in skipped}
    for video_id, code in (
        ("train001", "no_face"),
        ("train002", "no_audio"),
        ("train003", "face_too_small"),
        ("train004", "face_low_confidence"),
        ("train005", "too_short"),
    ):
        assert codes[video_id].startswith("no_evidence: ") and code in codes[video_id], codes[video_id]


def test_stage_trains_registers_and_fine_tunes_from_champion(tmp_path):
    from components.common import tracking

    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 8, "val": 2, "test": 2}, duration_s=1.5, size=32)
    videos, skipped = load_lipsync_videos(faces, EvidenceRules.of(TINY.model.window_s, FaceTrackingConfig()))
    assert len(videos) == 12 and not skipped
    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    cfg = replace(TINY, epochs=1, freeze_epochs=0, pretrained="champion")
    report = run_finetune_lipsync(faces, tmp_path / "model", cfg, config.context())
    # No champion yet: scratch. The 10-video pool splits 8/2 by video; test videos are left alone.
    assert report.pretrained == "" and (report.n_train_videos, report.n_val_videos, report.n_test_videos) == (8, 2, 2)
    assert report.registered_name == "lipsync-acme" and report.registered_version == "1"
    assert tracking.get_version_by_alias(config.tracking, "lipsync-acme", "challenger") == "1"
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "training_summary.json"]
    summary = json.loads((tmp_path / "model" / "training_summary.json").read_text())
    assert set(summary["train_video_ids"]).isdisjoint(summary["val_video_ids"])
    assert not any(v.startswith("test") for v in summary["train_video_ids"] + summary["val_video_ids"])
    assert "Lip-sync manipulation detector" in (tmp_path / "model" / "README.md").read_text()
    assert load_model(tmp_path / "model").config.threshold == pytest.approx(report.threshold)
    # Every epoch's checkpoint is mirrored to the artifacts store (a retried pod resumes from it).
    pointer = Path(config.storage.artifacts_uri) / "checkpoints/finetune_lipsync/acme-last-30-days/latest.json"
    assert json.loads(pointer.read_text())["epoch"] == 1

    import mlflow

    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    run_id = client.get_model_version("lipsync-acme", "1").run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]  # epochs count from 1

    # Promote it; the next month fine-tunes from the champion (phase 1 at epoch 0).
    client.set_registered_model_alias("lipsync-acme", "champion", "1")
    report2 = run_finetune_lipsync(faces, tmp_path / "model2", replace(cfg, freeze_epochs=1), config.context())
    assert report2.pretrained.endswith("model.safetensors") and report2.registered_version == "2"
    assert tracking.get_version_by_alias(config.tracking, "lipsync-acme", "challenger") == "2"

    # Identical retrains register nothing: v2's inputs again from the same champion, or v1's inputs from v1 itself.
    tags = client.get_model_version("lipsync-acme", "2").tags
    assert tags["clipsync.started_from"] == "1" and len(tags["clipsync.fingerprint"]) == 64
    for settings, same in ((replace(cfg, freeze_epochs=1), "2"), (cfg, "1")):
        again = run_finetune_lipsync(faces, tmp_path / f"again{same}", settings, config.context())
        assert again.registered_version == ""
        assert again.not_trained_reason == f"identical to v{same}: nothing new to train"
        assert no_challenger_reason(tmp_path / f"again{same}") == again.not_trained_reason
    assert tracking.version_tags(config.tracking, "lipsync-acme").keys() == {"1", "2"}
    assert tracking.get_version_by_alias(config.tracking, "lipsync-acme", "challenger") == "2"
    # One more training video is new work.
    write_synthetic_faces(tmp_path / "more", {"train": 9, "val": 2, "test": 2}, duration_s=1.5, size=32)
    assert run_finetune_lipsync(tmp_path / "more", tmp_path / "m3", cfg, config.context()).registered_version == "3"


def test_single_class_training_videos_leave_no_challenger(tmp_path):
    """A month of only real videos is not a failure: no model is registered and the artifact says why."""
    import mlflow

    from components.common import tracking
    from components.common.no_challenger import no_challenger_reason
    from components.face_tracking.dataset import read_face_index, write_face_index

    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 6, "val": 2, "test": 2}, duration_s=1.0, size=32)
    write_face_index(faces, [replace(r, authenticity="real") for r in read_face_index(faces)])
    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    report = run_finetune_lipsync(faces, tmp_path / "model", TINY, config.context())

    assert report.registered_version == "" and report.n_train_videos + report.n_val_videos == 8
    assert report.not_trained_reason.endswith("training videos are real; need real and fake examples")
    assert no_challenger_reason(tmp_path / "model") == report.not_trained_reason
    assert not (tmp_path / "model" / "model.safetensors").exists()
    assert tracking.get_version_by_alias(config.tracking, "lipsync-acme", "challenger") is None
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["clipsync.no_challenger"] == report.not_trained_reason

"""The lip-sync detector module shared by training and serving: shapes, learning, windows, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.finetune_lipsync.model import (
    LipSyncDetector,
    LipSyncModelConfig,
    ModelConfigError,
    aggregate,
    lag_correlations,
    load_model,
    log_mel,
    mel_filterbank,
    predict_video,
    save_model,
    windows,
)
from components.finetune_lipsync.synthetic import synthetic_video

torch.set_num_threads(1)

TINY = {"crop_size": 32, "visual_channels": 4, "audio_channels": 8, "embed_dim": 16, "attention_heads": 2}


def _batch(n: int = 4, seed: int = 0):
    vids, auds, labels = [], [], []
    for i in range(n):
        crops, audio = synthetic_video(i % 2 == 1, seed + i, duration_s=1.0)
        vids.append(crops)
        auds.append(audio)
        labels.append(i % 2)
    return torch.from_numpy(np.stack(vids)), torch.from_numpy(np.stack(auds)), torch.tensor(labels, dtype=torch.float32)


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_forward_shapes_for_uint8_and_float_inputs(fusion):
    torch.manual_seed(0)
    model = LipSyncDetector(LipSyncModelConfig(fusion=fusion, **TINY)).eval()
    video, audio, _ = _batch(3)
    assert video.shape == (3, 25, 96, 96, 3) and video.dtype == torch.uint8
    logits = model(video, audio)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()
    same = model(video.float() / 255.0, audio)  # float in [0, 1] is the same input
    torch.testing.assert_close(logits, same, atol=1e-4, rtol=1e-4)
    v = model.visual(model.prepare_video(video))
    a = model.audio(model.prepare_audio(audio))
    assert v.shape == (3, 16, 25)  # one embedding per video frame
    assert a.shape[:2] == (3, 16) and 24 <= a.shape[2] <= 27  # 101 mel frames / 4
    with pytest.raises(ValueError, match="B, T, H, W, 3"):
        model(video[..., 0], audio)


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = LipSyncDetector(LipSyncModelConfig(dropout=0.0, **TINY))
    video, audio, y = _batch(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(video, audio), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_log_mel_shape_normalization_and_band_of_a_tone():
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    mel = log_mel(tone, sr, n_mels=40)
    assert mel.shape == (40, 101)  # 10 ms hop, centred frames
    assert abs(float(mel.mean())) < 1e-4 and abs(float(mel.std()) - 1) < 1e-2
    peak_band = int(mel[:, 50].argmax())
    fb = mel_filterbank(sr, 512, 40)
    assert np.allclose(fb.sum(axis=1), 1.0, atol=1e-5)
    assert fb[peak_band, round(1000 / (sr / 512))] > 0  # the loudest band covers 1 kHz
    louder = log_mel(tone * 10, sr, n_mels=40)
    torch.testing.assert_close(mel, louder, atol=1e-3, rtol=1e-3)  # loudness-invariant
    assert log_mel(np.zeros(sr, np.float32)).abs().max() < 0.01  # silence -> ~zeros, no NaN
    assert log_mel(np.ones((2, 8000), np.float32)).shape == (2, 40, 51)


def test_windows_are_aligned_in_time():
    fps, sr = 25.0, 16000
    t_frames = 75
    crops = np.zeros((t_frames, 8, 8, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(t_frames)  # frame index in a pixel
    audio = (np.arange(3 * sr) / sr).astype(np.float32)  # audio value = its own time
    av = windows(crops, audio, fps, window_s=1.0, hop_s=0.5)
    assert av.video.shape == (5, 25, 8, 8, 3) and av.audio.shape == (5, sr)
    np.testing.assert_allclose(av.starts_s, [0, 0.5, 1.0, 1.5, 2.0])
    for k, start in enumerate(av.starts_s):
        assert av.video[k, 0, 0, 0, 0] == int(start * fps)  # the frame shown at that instant
        assert av.audio[k, 0] == pytest.approx(start, abs=1 / sr)
    # 30 fps input resampled to 25 fps windows still covers exactly one second.
    crops30 = np.zeros((90, 8, 8, 3), np.uint8)
    crops30[:, 0, 0, 0] = np.arange(90)
    av30 = windows(crops30, audio, 30.0, 1.0, 0.5, target_fps=25.0)
    assert av30.video.shape[1] == 25
    assert av30.video[1, -1, 0, 0, 0] == 43  # t = 0.5 + 24/25 = 1.46 s -> frame 43.8 at 30 fps
    short = windows(crops[:10], audio[:6400], fps)  # 0.4 s clip -> one padded window
    assert len(short) == 1 and short.audio[0, 6400:].sum() == 0
    with pytest.raises(ValueError):
        windows(np.zeros((0, 8, 8, 3), np.uint8), audio, fps)


def test_save_load_round_trip_gives_same_outputs(tmp_path):
    torch.manual_seed(1)
    config = LipSyncModelConfig(fusion="cross_attention", threshold=0.37, **TINY)
    model = LipSyncDetector(config).eval()
    video, audio, _ = _batch(2, seed=5)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert loaded.config.threshold == 0.37 and loaded.config.fusion == "cross_attention"
    with torch.no_grad():
        torch.testing.assert_close(model(video, audio), loaded(video, audio))
    # Weights that do not fit the config are refused with a clear error.
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["embed_dim"] = 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="do not match"):
        load_model(tmp_path / "m")
    cfg["bogus"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="bogus"):
        load_model(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")


def test_predict_video_and_aggregation():
    torch.manual_seed(0)
    model = LipSyncDetector(LipSyncModelConfig(**TINY))
    crops, audio = synthetic_video(False, 3)
    score = predict_video(model, crops, audio, 25.0)
    assert len(score.window_probabilities) == 5 and score.window_starts_s == [0.0, 0.5, 1.0, 1.5, 2.0]
    probs = np.array(score.window_probabilities)
    assert ((probs > 0) & (probs < 1)).all()
    logits = np.log(probs / (1 - probs))
    assert score.probability == pytest.approx(1 / (1 + np.exp(-logits.mean())), abs=1e-6)
    assert score.is_fake == (score.probability >= model.config.threshold)
    assert not model.training
    assert predict_video(model, crops, audio, 25.0, aggregation="max").probability == pytest.approx(
        probs.max(), abs=1e-6
    )
    assert aggregate(np.array([0.0, 2.0]), "mean_logit") == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert aggregate(np.array([-10.0, 0.0, 10.0]), "median") == pytest.approx(0.5)
    # A fake second in a clean clip: the mean of the two highest logits, not of all five.
    assert aggregate(np.array([-3.0, 2.0, -3.0, 0.0, -3.0]), "top2_logit") == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert aggregate(np.array([0.0]), "top2_logit") == pytest.approx(0.5)  # a one-window clip
    assert aggregate(np.array([0.0, 0.0]), "noisy_or") == pytest.approx(0.75)
    with pytest.raises(ValueError):
        aggregate(np.array([]), "mean_logit")
    with pytest.raises(ModelConfigError):
        LipSyncModelConfig(fusion="sum")


def test_lag_correlations_peak_where_the_sound_lags_and_the_model_reads_them(tmp_path):
    torch.manual_seed(0)
    lips = torch.randn(2, 4, 40)
    for lag in (-3, 0, 2):  # sound[t + lag] = lips[t]: the lips lead by ``lag`` frames
        sound = torch.roll(lips, lag, dims=-1)
        corr = lag_correlations(lips[..., 5:-5], sound[..., 5:-5], 4)
        assert corr.shape == (2, 4, 9)
        assert (corr.argmax(dim=-1) == lag + 4).all()
        assert corr[..., lag + 4].min() > 0.8  # (standardized over the whole window, averaged over the overlap)
    config = LipSyncModelConfig(sync_lags=3, **TINY)
    model = LipSyncDetector(config).eval()
    assert model.fusion.out_dim == 3 * TINY["embed_dim"]
    video = torch.randint(0, 256, (1, 25, 32, 32, 3), dtype=torch.uint8)
    audio = 0.1 * torch.randn(1, 16000)
    save_model(model, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(model(video, audio), load_model(tmp_path / "m")(video, audio))
    # A model folder from before the setting existed loads as the model without it.
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["sync_lags"]
    assert LipSyncModelConfig.from_dict(cfg).sync_lags == 0

"""benchmarks/lipsync_gpu.py: the export's codecs lose little, and both modes run (train where only the GPU
machine's packages are installed, on the CPU, on a tiny synthetic export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lipsync_gpu  # noqa: E402
from test_gpu_check import ABSENT, _site_packages_without  # noqa: E402


def test_crops_and_audio_codecs_round_trip_closely():
    from components.finetune_lipsync.model import log_mel
    from components.finetune_lipsync.synthetic import synthetic_video

    crops, audio = synthetic_video(False, 3, duration_s=1.0, size=48)
    back = lipsync_gpu.decode_crops(lipsync_gpu.encode_crops(crops), len(crops), 48)
    assert back.shape == crops.shape and back.dtype == np.uint8
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs((back.astype(float) - crops) @ luma).mean() < 1.0  # luma is kept at full resolution
    assert np.abs(back.astype(int) - crops).mean() < 6  # chroma at half (this clip has per-pixel colour noise)
    # Frame differences are exact: the decoded frames move as the original ones do.
    np.testing.assert_allclose(np.diff(back.mean(axis=(1, 2, 3))), np.diff(crops.mean(axis=(1, 2, 3))), atol=1.0)
    sound = lipsync_gpu.decode_audio(lipsync_gpu.encode_audio(audio))
    assert sound.shape == audio.shape and sound.dtype == np.float32
    a, b = log_mel(audio).numpy().ravel(), log_mel(sound).numpy().ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.95  # what the model sees of the mu-law audio


@pytest.mark.slow
def test_export_then_train_without_the_project_only_packages(tmp_path):
    from components.finetune_lipsync.config import AGGREGATIONS
    from components.finetune_lipsync.synthetic import write_synthetic_faces

    faces = tmp_path / "faces"
    ids = write_synthetic_faces(faces, {"train": 8, "val": 4, "test": 6}, duration_s=1.5, size=96)
    truth = {vid: {"scene": "single" if k % 3 else "two_face"} for k, vid in enumerate(ids)}
    data = tmp_path / "export.npz"
    header = lipsync_gpu.export_faces(faces, data, truth)
    assert len(header["videos"]) == 18 and not header["skipped"]
    loaded, videos = lipsync_gpu.load_export(data)
    assert loaded == json.loads(json.dumps(header))
    assert [v.video_id for v in videos] == sorted(ids) and videos[0].crops.shape == (38, 48, 48, 3)

    site = _site_packages_without(ABSENT, tmp_path / "site-packages")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONHOME", None)
    tiny = {
        "model": {"crop_size": 32, "visual_channels": 4, "audio_channels": 8, "embed_dim": 16},
        "epochs": 2,
        "freeze_epochs": 0,
    }
    recipe = "tiny:" + json.dumps({**tiny, "num_threads": 1, "precision": "fp32"})
    cmd = [sys.executable, "-S", str(ROOT / "benchmarks" / "lipsync_gpu.py"), "train", "--data", str(data)]
    cmd += ["--device", "cpu", "--recipe", recipe, "--perturbations", "compression:40,blur:2", "--loader-workers", "0"]
    cmd += ["--work", str(tmp_path / "work"), "--json", str(tmp_path / "figures.json")]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    (run,) = figures["recipes"]
    assert run["epochs_done"] == 2 and not run["stopped_by_time_budget"]
    assert run["videos"]["test"] == 6 and run["test"]["roc_auc"]["n"] == 6
    assert [(r["perturbation"], r["level"]) for r in run["perturbations"]] == [("compression", 40), ("blur", 2)]
    assert {"scene=single", "scene=two_face"} <= set(run["per_condition"])
    assert set(run["aggregations"]) == set(AGGREGATIONS)
    for row in run["aggregations"].values():  # every aggregation on validation and on test, overall and per type
        assert {"all", "untyped"} <= set(row["val_roc_auc"]) and row["test_roc_auc"]["all"]["n"] == 6

    # The saved model evaluated again (the same split, the same test figures).
    again = tmp_path / "again.json"
    model = tmp_path / "work" / "tiny" / "model"
    args = ["evaluate", "--data", str(data), "--model", str(model), "--perturbations", "", "--json", str(again)]
    assert lipsync_gpu.main(args) == 0
    figures = json.loads(again.read_text())
    assert figures["test"] == run["test"] and figures["aggregations"] == run["aggregations"]

    # The same model on the same export twice, paired: no difference, the same faces.
    same = tmp_path / "paired.json"
    args = ["paired", "--data", str(data), "--data-b", str(data), "--model", str(model), "--json", str(same)]
    assert lipsync_gpu.main(args) == 0
    figures = json.loads(same.read_text())
    assert figures["test_videos"] == {"shared": 6, "only_in_data": 0, "only_in_data_b": 0}
    assert figures["roc_auc"]["all"]["b_minus_a"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert figures["roc_auc"]["all"]["a"]["value"] == round(run["test"]["roc_auc"]["value"], 4)
    assert figures["probability_abs_diff"]["max"] == 0 and figures["crops_mean_abs_diff"]["max"] == 0


def test_paired_auc_difference_is_the_same_resamples_for_both_scorings():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = np.array([0] * 30 + [1] * 30)
    a = y + rng.normal(0, 0.8, len(y))
    same = lipsync_gpu.paired_auc(y, a, a.copy())
    assert same["b_minus_a"] == {"value": 0.0, "low": 0.0, "high": 0.0} and same["a"] == same["b"]
    # b a little noisier: the difference is exact on all items and its interval is far narrower than each AUC's.
    b = a + rng.normal(0, 0.3, len(y))
    out = lipsync_gpu.paired_auc(y, a, b)
    auc = {k: roc_auc_score(y, s) for k, s in (("a", a), ("b", b))}
    assert out["a"]["value"] == round(auc["a"], 4) and out["b"]["value"] == round(auc["b"], 4)
    assert out["b_minus_a"]["value"] == round(auc["b"] - auc["a"], 4)
    diff = out["b_minus_a"]
    assert diff["low"] <= diff["value"] <= diff["high"]
    assert diff["high"] - diff["low"] < 0.5 * (out["a"]["high"] - out["a"]["low"])
    # b ranks the reverse way: a loss the interval tells from chance.
    reverse = lipsync_gpu.paired_auc(y, a, -a)
    assert reverse["b_minus_a"]["high"] < 0 and reverse["n"] == 60 and reverse["n_fake"] == 30


def test_box_agreement_of_two_faces_datasets_on_their_interpolated_frames(tmp_path):
    from components.face_tracking.dataset import FaceRecord, FaceSample, write_face_index

    def dataset(name: str, shift: float) -> Path:
        boxes = [[10.0, 10.0, 30.0, 30.0]] * 5  # 20 px boxes; b moves its frames 1 and 3 (between detections)
        boxes = [[b[0] + shift * (f % 2), b[1], b[2] + shift * (f % 2), b[3]] for f, b in enumerate(boxes)]
        sample = FaceSample("v-t0", 0, True, "crops/v-t0.npy", 5, tuple([*boxes[:4], None]))
        other = FaceRecord("w", selected_track=-1)  # a fallback: no track
        write_face_index(tmp_path / name, [FaceRecord("v", n_frames=5, selected_track=0, samples=(sample,)), other])
        return tmp_path / name

    out = lipsync_gpu.box_agreement(dataset("a", 0.0), dataset("b", 4.0), {"v", "w"}, detect_every_b=2)
    assert out["videos_with_a_track_in_both"] == 1 and out["same_subject"] == 1
    assert out["all_frames"]["frames"] == 4 and out["frames_interpolated_in_b"]["frames"] == 2
    moved = out["frames_interpolated_in_b"]  # 4 px of a 20 px box: centre shift 0.2 sides, IoU 16 * 20 / (24 * 20)
    assert moved["centre_shift_sides_median"] == 0.2 and moved["iou_median"] == round(16 / 24, 4)
    assert out["all_frames"]["iou_median"] == round((1 + 16 / 24) / 2, 4)

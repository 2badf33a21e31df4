"""evaluate (lip-sync part): metrics with fake as positive, threshold from validation, perturbations, report."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from components.evaluate.config import EvaluateConfig
from components.evaluate.crossval import cross_validate_lipsync
from components.evaluate.lipsync_eval import PERTURBATIONS, evaluate_lipsync, perturb_crops, robustness_table
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.evidence import EvidenceRules
from components.finetune_lipsync.config import FinetuneLipsyncConfig
from components.finetune_lipsync.data import load_lipsync_videos, split_by_video, training_pool
from components.finetune_lipsync.metrics import binary_metrics, choose_threshold
from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, save_model
from components.finetune_lipsync.synthetic import synthetic_video, write_synthetic_faces
from components.finetune_lipsync.train import train_lipsync

torch.set_num_threads(1)


def test_metrics_use_fake_as_positive_class():
    # 3 fakes, 5 reals. At 0.5: one fake missed (score 0.4), two reals flagged (0.6, 0.7).
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.6, 0.3, 0.2, 0.1])
    m = binary_metrics(y, s, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 2, 3)
    assert m["fpr"] == pytest.approx(2 / 5)  # reals called fake / all reals
    assert m["fnr"] == pytest.approx(1 / 3)  # fakes called real / all fakes
    assert m["accuracy"] == pytest.approx(5 / 8)
    # With real as positive (LipFD's mistake) these would swap to FPR 1/3 and FNR 2/5.
    assert (m["fpr"], m["fnr"]) != pytest.approx((1 / 3, 2 / 5))
    # AUC from the scores: 15 fake-real pairs, the fake ranks higher in 13 (0.4 loses to 0.7 and 0.6).
    assert m["roc_auc"] == pytest.approx(13 / 15)
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 5) / 3)


def test_auc_and_ap_come_from_scores_not_thresholded_labels():
    y = np.array([1, 1, 0, 0])
    s = np.array([0.45, 0.40, 0.30, 0.10])  # perfectly ranked, but all below 0.5
    m = binary_metrics(y, s, 0.5)
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    assert m["accuracy"] == 0.5 and m["fnr"] == 1.0 and m["fpr"] == 0.0
    single = binary_metrics(np.array([0, 0]), np.array([0.2, 0.9]), 0.5)
    assert single["roc_auc"] is None and single["fnr"] is None and single["fpr"] == 0.5
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1]), np.array([0.1]))


def test_threshold_is_chosen_on_validation_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9])
    t = choose_threshold(y, s)
    assert 0.2 < t <= 0.3 and binary_metrics(y, s, t)["accuracy"] == 1.0
    assert choose_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5  # one class: default
    overlap = choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.6, 0.9]))
    assert binary_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.6, 0.9]), overlap)["balanced_accuracy"] == 0.75


def test_perturbations_degrade_crops_and_keep_shape():
    crops, _ = synthetic_video(False, 0, duration_s=0.2)
    for kind, levels in PERTURBATIONS.items():
        for level in levels:
            out = perturb_crops(crops, kind, level, seed=1)
            assert out.shape == crops.shape and out.dtype == np.uint8, kind
            assert np.abs(out.astype(int) - crops).mean() > 0.3, (kind, level)
        mild, strong = (perturb_crops(crops, kind, lv, seed=1) for lv in (levels[0], levels[-1]))
        assert np.abs(strong.astype(int) - crops).mean() > np.abs(mild.astype(int) - crops).mean(), kind
    gray = perturb_crops(crops, "saturation", 0.0)
    assert np.abs(gray[..., 0].astype(int) - gray[..., 1]).max() <= 1
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_crops(crops, "rain", 1)


def test_evaluate_challenger_and_champion_on_same_test_videos(tmp_path):
    faces = tmp_path / "faces"
    write_synthetic_faces(
        faces, {"train": 8, "val": 4, "test": 8}, duration_s=1.5, size=32, fallback_ids=("test006", "test007")
    )
    cfg = FinetuneLipsyncConfig(
        model={"crop_size": 32, "visual_channels": 4, "audio_channels": 8, "embed_dim": 16, "attention_heads": 2},
        augment={"enabled": False},
        epochs=3,
        pretrained="",
        num_threads=1,
        device="cpu",
        precision="fp32",
    )
    videos, skipped = load_lipsync_videos(faces, EvidenceRules.of(cfg.model.window_s, FaceTrackingConfig()))
    # The two centre-crop fallbacks carry no face: not trained on, not scored (serving would refuse them).
    assert [(s["video_id"], s["reason"].split(":")[0]) for s in skipped] == [
        ("test006", "no_evidence"),
        ("test007", "no_evidence"),
    ]
    assert "no_face" in skipped[0]["reason"]
    train, val = split_by_video(training_pool(videos), cfg.val_fraction, cfg.seed)
    challenger = train_lipsync(train, val, cfg, tmp_path / "challenger").model_dir
    torch.manual_seed(0)
    save_model(LipSyncDetector(LipSyncModelConfig(**asdict(cfg.model))), tmp_path / "champion")

    perturbations = {"blur": (2.0,), "compression": (20,)}
    report = evaluate_lipsync(
        challenger, tmp_path / "champion", faces, tmp_path / "out", cfg, perturbations=perturbations
    )
    assert (report.n_test_videos, report.n_test_inconclusive, report.n_val_videos) == (6, 2, len(val))
    for ev in (report.challenger, report.champion):
        assert ev.threshold_source == "validation"
        assert ev.test["n"] == 6
        assert ev.val["n"] == len(val)
    # Paired outcomes: the same 6 videos with evidence, both models scored on each.
    assert [r["video_id"] for r in report.paired] == [f"test{i:03d}" for i in range(6)]
    for row in report.paired:
        for role in ("challenger", "champion"):
            pred = row[f"{role}_score"] >= getattr(report, role).threshold
            assert row[f"{role}_pred_fake"] == pred
            assert row[f"{role}_correct"] == (pred == (row["label"] == "fake"))
    # Robustness: clean + 2 perturbations, per model.
    assert len(report.robustness) == 2 * 3
    assert {(r["model"], r["perturbation"]) for r in report.robustness} >= {
        ("champion", "blur"),
        ("challenger", "compression"),
    }
    out = tmp_path / "out"
    assert (out / "lipsync_robustness.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "lipsync_robustness.md").read_text()
    assert "| blur | 2 |" in table and "challenger AUC" in table and "champion FNR" in table
    saved = json.loads((out / "lipsync_eval.json").read_text())
    assert saved["challenger"]["test"]["n"] == 6
    assert len((out / "lipsync_paired.jsonl").read_text().splitlines()) == 6
    metrics = report.as_metrics()
    assert "lipsync_challenger_test_roc_auc" in metrics and metrics["lipsync_n_test_inconclusive"] == 2
    assert metrics["lipsync_challenger_robust_blur_2_accuracy"] >= 0

    # Every test figure carries its interval and the videos it rests on (FPR: the real ones, FNR: the fake ones).
    ci = report.challenger.test_ci
    assert ci["roc_auc"]["n"] == 6 and ci["fpr"]["n"] == report.challenger.test["n_real"]
    assert ci["fnr"]["n"] == report.challenger.test["n_fake"] and ci["fpr"]["method"] == "wilson"
    for key in ("roc_auc", "average_precision", "accuracy", "fpr", "fnr"):
        est = ci[key]
        assert est["value"] == pytest.approx(report.challenger.test[key])
        assert est["low"] is None or est["low"] <= est["value"] <= est["high"]
    assert metrics["lipsync_challenger_test_accuracy_ci_low"] <= metrics["lipsync_challenger_test_accuracy"]
    assert "[" in table.split("| blur | 2 |")[1].split("\n")[0]  # the AUC's interval in the robustness table

    # First month: no champion; the report still holds the challenger alone.
    alone = evaluate_lipsync(challenger, None, faces, tmp_path / "out2", replace(cfg), robustness=False)
    assert alone.champion is None and "champion_score" not in alone.paired[0]
    assert alone.challenger.test == report.challenger.test

    # Asked for, a 2-fold CV estimate (one detector trained per fold, 1 epoch) over all 18 labelled videos with
    # evidence, reported beside the held-out test figures.
    cv = cross_validate_lipsync(faces, cfg, EvaluateConfig(cv_folds=2, cv_epochs=1, n_bootstrap=200), tmp_path)
    assert (cv["k"], cv["epochs"], cv["n_videos"], len(cv["folds"])) == (2, 1, 18, 2)
    assert sum(f["n_test"] for f in cv["folds"]) == 18 and all(f["n_test_fake"] >= 3 for f in cv["folds"])
    auc = cv["metrics"]["roc_auc"]
    assert auc["folds"] == 2 and auc["min"] <= auc["mean"] <= auc["max"]
    alone.cross_validation = cv
    assert alone.as_metrics()["lipsync_cv_roc_auc_mean"] == auc["mean"]
    too_few = cross_validate_lipsync(faces, cfg, EvaluateConfig(cv_folds=20), tmp_path)
    assert too_few == {"k": 20, "note": "needs at least 20 videos of each class, has 9: no CV estimate"}


def test_robustness_table_marks_missing_values():
    rows = [
        {
            "model": "challenger",
            "perturbation": "none",
            "level": 0.0,
            "roc_auc": 0.9,
            "accuracy": 0.8,
            "fpr": 0.1,
            "fnr": None,
        },
    ]
    table = robustness_table(rows)
    assert "| none | 0 | 0.900 | 0.800 | 0.100 | n/a |" in table
    rows[0] |= {"roc_auc_ci_low": 0.7, "roc_auc_ci_high": 1.0, "n": 12}
    table = robustness_table(rows)
    assert "| none | 0 | 0.900 [0.700, 1.000] | 0.800 |" in table and "over the 12 test videos" in table


def test_stage_fetches_champion_from_registry_and_logs_to_mlflow(tmp_path):
    import mlflow

    from components.common import tracking
    from components.config import from_dict
    from components.evaluate.core import run_evaluate_lipsync
    from components.face_tracking.dataset import read_face_index, write_face_index

    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 4, "val": 2, "test": 4}, duration_s=1.0, size=32)
    # Its 2 test fakes are of one type: too few for that type's figures, which the stage run says.
    write_face_index(
        faces, [replace(r, fake_type="offset" if r.authenticity == "fake" else "") for r in read_face_index(faces)]
    )
    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    tiny = {"crop_size": 32, "visual_channels": 4, "audio_channels": 8, "embed_dim": 16, "attention_heads": 2}
    for name in ("champion", "challenger"):
        save_model(LipSyncDetector(LipSyncModelConfig(**tiny)), tmp_path / name)
    cfg = FinetuneLipsyncConfig(model=tiny, pretrained="")  # the cross-validation folds train this size too
    first = run_evaluate_lipsync(faces, tmp_path / "challenger", tmp_path / "out1", cfg, config.context())
    assert first.champion is None  # nothing registered yet
    with tracking.stage_run(config.tracking, "", "finetune_lipsync") as trained:
        tracking.register_model_dir(config.tracking, "lipsync-acme", tmp_path / "champion", trained, alias="champion")
    evaluation = EvaluateConfig(cv_folds=2, cv_epochs=1, n_bootstrap=200)
    report = run_evaluate_lipsync(
        faces, tmp_path / "challenger", tmp_path / "out2", cfg, config.context(), evaluation=evaluation
    )
    assert report.champion is not None and report.champion.test["n"] == 4
    assert report.champion_version == "1"
    saved = json.loads((tmp_path / "out2" / "lipsync_eval.json").read_text())
    assert saved["champion_version"] == "1" and saved["cross_validation"]["n_videos"] == 10
    assert all("champion_correct" in row for row in report.paired)
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    runs = client.search_runs(
        [client.get_run(trained).info.experiment_id], "tags.`clipsync.stage` = 'evaluate_lipsync'"
    )
    run_id = runs[0].info.run_id  # the latest: the one that found the champion
    logged = {f.path for f in client.list_artifacts(run_id, "evaluate_lipsync")}
    assert "evaluate_lipsync/lipsync_robustness.png" in logged and "evaluate_lipsync/lipsync_paired.jsonl" in logged
    logged_metrics = client.get_run(run_id).data.metrics
    assert "lipsync_champion_test_accuracy" in logged_metrics and "lipsync_cv_roc_auc_std" in logged_metrics
    assert logged_metrics["lipsync_challenger_test_fake_type_offset_n_fake"] == 2
    assert client.get_run(run_id).data.tags[tracking.NOT_EVALUATED_TAG] == (
        "fake type offset: 2 test fake(s) of this type, fewer than evaluate.min_fake_type_videos (5)"
    )
    assert "evaluate_lipsync/lipsync_fake_types.md" in logged


def test_fake_type_estimates_against_known_values():
    from components.evaluate.lipsync_figures import UNTYPED, fake_type_estimates

    # 4 reals (0.1, 0.2, 0.3, 0.6); offsets 0.7, 0.5, 0.15; other_speaker 0.9, 0.8, 0.65; one untyped fake 0.05.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.5, 0.15, 0.9, 0.8, 0.65, 0.05])
    types = ["", "", "", "", "offset", "offset", "offset", "other_speaker", "other_speaker", "other_speaker", ""]
    evaluation = EvaluateConfig(min_fake_type_videos=3, n_bootstrap=200)
    out = fake_type_estimates(y, s, types, 0.55, evaluation)
    assert list(out) == ["offset", "other_speaker", UNTYPED]
    offset = out["offset"]
    assert (offset["n_fake"], offset["n_real"]) == (3, 4)
    # 12 offset-real pairs: 0.7 beats 4, 0.5 beats 3, 0.15 beats 1 -> 8/12.
    assert offset["roc_auc"]["value"] == pytest.approx(8 / 12) and offset["roc_auc"]["n"] == 7
    assert offset["roc_auc"]["low"] <= offset["roc_auc"]["value"] <= offset["roc_auc"]["high"]
    assert offset["fnr"]["value"] == pytest.approx(2 / 3) and offset["fnr"]["n"] == 3  # 0.5 and 0.15 missed
    assert offset["fpr"]["value"] == pytest.approx(1 / 4) and offset["fpr"]["n"] == 4  # 0.6 flagged
    assert offset["average_precision"]["value"] == pytest.approx(
        binary_metrics(np.r_[y[:4], y[4:7]], np.r_[s[:4], s[4:7]])["average_precision"]
    )
    assert out["other_speaker"]["roc_auc"]["value"] == 1.0 and out["other_speaker"]["fnr"]["value"] == 0.0
    assert out[UNTYPED] == {
        "n_fake": 1,
        "n_real": 4,
        "not_evaluated": "1 test fake(s) of this type, fewer than evaluate.min_fake_type_videos (3)",
    }
    assert fake_type_estimates(y, s, [""] * len(y), 0.5, evaluation) == {}  # no type given: no breakdown
    # A type on a real video is not a fake type.
    assert "offset" not in fake_type_estimates(y[:4], s[:4], ["offset"] * 4, 0.5, evaluation)


def test_fake_type_through_manifest_frames_and_faces_to_the_evaluate_report(tmp_path):
    from components.common.manifest import VideoRecord, read_manifest, write_manifest
    from components.face_tracking.core import process_video
    from components.face_tracking.dataset import read_face_index, write_face_index
    from components.frame_extraction.core import ExtractedVideo, _frame_record

    # The manifest's fake type reaches the frames and faces Datasets (here through videos that fail to decode).
    record = VideoRecord("v1", "videos/a.mp4", "", "", 0, "", "accepted", authenticity="fake", fake_type="offset")
    write_manifest(tmp_path / "manifest.jsonl", [record])
    record = read_manifest(tmp_path / "manifest.jsonl")[0]
    frame = _frame_record(record, ExtractedVideo("v1", status="rejected", reason="undecodable: test"))
    face = process_video(tmp_path / "frames", tmp_path / "faces", frame, FaceTrackingConfig(), None)
    assert (frame.fake_type, face.fake_type, face.status) == ("offset", "offset", "rejected")

    # Then on to evaluate: a faces Dataset whose test fakes are of two types.
    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 4, "val": 2, "test": 10}, duration_s=1.0, size=32)
    typed = [
        replace(r, fake_type=("offset" if int(r.video_id[-3:]) % 4 == 1 else "partial"))
        if r.authenticity == "fake"
        else r
        for r in read_face_index(faces)
    ]
    write_face_index(faces, typed)
    cfg = FinetuneLipsyncConfig(model={"crop_size": 32}, pretrained="", device="cpu")
    videos, _ = load_lipsync_videos(faces, EvidenceRules.of(cfg.model.window_s, FaceTrackingConfig()), ("test",))
    assert [v.fake_type for v in videos] == ["", "offset", "", "partial"] * 2 + ["", "offset"]
    mc = LipSyncModelConfig(crop_size=32, visual_channels=4, audio_channels=8, embed_dim=16, attention_heads=2)
    torch.manual_seed(0)
    save_model(LipSyncDetector(mc), tmp_path / "model")
    evaluation = EvaluateConfig(min_fake_type_videos=3, n_bootstrap=200)
    report = evaluate_lipsync(
        tmp_path / "model", None, faces, tmp_path / "out", cfg, robustness=False, evaluation=evaluation
    )
    by_type = report.challenger.test_by_fake_type
    assert {t: row["n_fake"] for t, row in by_type.items()} == {"offset": 3, "partial": 2}
    assert by_type["offset"]["roc_auc"]["n"] == 8 and "not_evaluated" in by_type["partial"]
    assert [r["fake_type"] for r in report.paired] == [v.fake_type for v in videos]
    metrics = report.as_metrics()
    assert metrics["lipsync_challenger_test_fake_type_offset_roc_auc"] == by_type["offset"]["roc_auc"]["value"]
    assert "lipsync_challenger_test_fake_type_offset_roc_auc_ci_low" in metrics
    assert metrics["lipsync_challenger_test_fake_type_partial_n_fake"] == 2
    assert "lipsync_challenger_test_fake_type_partial_roc_auc" not in metrics
    table = (tmp_path / "out" / "lipsync_fake_types.md").read_text()
    assert "| challenger | offset | 3 | 5 |" in table and "[" in table.split("| offset |")[1].split("\n")[0]
    assert "| challenger | partial | 2 | 5 | not evaluated: 2 test fake(s)" in table
    saved = json.loads((tmp_path / "out" / "lipsync_eval.json").read_text())
    assert saved["challenger"]["test_by_fake_type"]["offset"]["n_fake"] == 3

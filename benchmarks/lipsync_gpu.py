"""The lip-sync detector on the whole hard benchmark (version 2), trained where a GPU is: one file in, figures out.

Two modes (and ``oracle``, a model-free rule on an export's crops: :func:`crop_oracle`), because the GPU machine
has torch, numpy, scikit-learn and OpenCV but none of av, mediapipe, mlflow or kfp, and no copy of the project's
venv:

``export`` (here): the benchmark through the project's own stages up to face tracking (``benchmarks/quality.py``:
generation, ``run_ingest``, ``run_frame_extraction``, ``run_face_tracking``; every stage output is reused when
present), then what ``finetune_lipsync`` and ``evaluate_lipsync`` read from the faces Dataset (the selected mouth
crops, the audio, label, fake type, split and the generator's conditions of every talking head with evidence for a
verdict) into ONE ``.npz`` (no pickles: arrays and a JSON header as bytes):

- mouth crops resized once to the model's ``crop_size`` (48, what training does first), stored as YUV 4:2:0 (the
  H.264 source is 4:2:0 already; mean absolute error 0.8 of 255 levels), frame-differenced and lzma-compressed
  (lossless beyond the colour conversion), about 80 KB a clip;
- 16 kHz audio as 8-bit mu-law (G.711's curve; the log-mel features the model computes from it differ from the
  float audio's by little, see ``tests/test_lipsync_gpu.py``), lzma-compressed, about 40 KB a clip.

The test set's perturbations are not stored: ``train`` applies the evaluate stage's own ``perturb_crops`` at its
levels to the test crops upsampled to face tracking's 96 px (where evaluate applies them), and the model resizes them
back, as it does in evaluate.

``train`` (on the GPU machine): ``train_lipsync`` (the project's training loop, config and model) on the exported
training videos, split into training and validation as the stage splits them (``split_by_video``), on
``--device``; then ``evaluate_model`` (evaluate_lipsync's threshold choice on validation and test figures with
their bootstrap intervals, overall and per fake type, ``components/common/stats.py``), AUC per generator condition,
and AUC under each perturbation, printed as one JSON (and written with ``--json``). Several recipes can run in one
call (``--recipe NAME:JSON`` repeated; each JSON overrides ``finetune_lipsync`` settings), each bounded by its share
of ``--max-minutes``: a recipe whose time runs out stops after its current epoch and is evaluated on its best
checkpoint so far (said so in its figures).

Run:
    # here (the full benchmark: 400 talking heads, 120 test videos; about 30 min on 2 shared cores)
    PYTHONPATH=. .venv/bin/python benchmarks/lipsync_gpu.py export --home .clipsync/bench -o .gpu/lipsync_v2.npz
    # there
    PYTHONPATH=. python benchmarks/lipsync_gpu.py train --data .gpu/lipsync_v2.npz --device cuda --max-minutes 6
    # anywhere: the model-free crop oracle of an export (seconds)
    PYTHONPATH=. .venv/bin/python benchmarks/lipsync_gpu.py oracle --data .gpu/lipsync_v2.npz
    # a CPU smoke run of both modes (synthetic faces, a few seconds): tests/test_lipsync_gpu.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import lzma
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("clipsync.benchmarks.lipsync_gpu")

FORMAT = "clipsync-lipsync-export/1"
#: The face_tracking crop side at which evaluate applies its perturbations.
EVAL_CROP_PX = 96
#: The perturbations the issue's targets name, at evaluate's levels (each recipe is scored under all of them).
TARGET_PERTURBATIONS = ("compression", "blur", "gaussian_noise", "pixelation")
#: Generator conditions of the truth rows kept in the export (for per-condition figures).
CONDITIONS = ("scene", "pose", "face_size", "crf", "occluded", "low_res", "offset_frames")


# ----------------------------------------------------------------------------------------------- codecs


def encode_crops(crops: np.ndarray) -> bytes:
    """uint8 RGB ``[T, S, S, 3]`` (S even) -> YUV 4:2:0, differenced over time, lzma."""
    import cv2

    yuv = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2YUV_I420) for f in crops])
    delta = np.diff(yuv.astype(np.int16), axis=0, prepend=0).astype(np.uint8)  # modulo 256: exact inverse below
    return lzma.compress(delta.tobytes(), preset=6)


def decode_crops(blob: bytes, n_frames: int, side: int) -> np.ndarray:
    """Inverse of :func:`encode_crops`: uint8 RGB ``[T, side, side, 3]``."""
    import cv2

    delta = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(n_frames, side * 3 // 2, side)
    yuv = np.cumsum(delta, axis=0, dtype=np.uint8)  # uint8 sums wrap modulo 256, undoing the differences
    return np.stack([cv2.cvtColor(f, cv2.COLOR_YUV2RGB_I420) for f in yuv])


def encode_audio(audio: np.ndarray) -> bytes:
    """float audio in [-1, 1] -> 8-bit mu-law (mu = 255), lzma."""
    a = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    mu = np.sign(a) * np.log1p(255.0 * np.abs(a)) / np.log(256.0)
    return lzma.compress(np.round((mu + 1.0) * 127.5).astype(np.uint8).tobytes(), preset=6)


def decode_audio(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_audio`: float32 audio."""
    mu = np.frombuffer(lzma.decompress(blob), np.uint8).astype(np.float64) / 127.5 - 1.0
    return (np.sign(mu) * np.expm1(np.abs(mu) * np.log(256.0)) / 255.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- export


def export_faces(faces_dir: Path, out_file: Path, truth: dict[str, dict] | None = None, crop_size: int = 48) -> dict:
    """Write the labelled talking heads of a faces Dataset (every split) into one ``.npz``.

    Args:
        faces_dir: The face_tracking Dataset.
        out_file: The ``.npz`` to write.
        truth: Video id -> the generator's truth row (its :data:`CONDITIONS` are kept), or ``None``.
        crop_size: The side crops are stored at (the model's ``crop_size``).

    Returns:
        The header written (videos, the skipped ones with their reasons, sizes).
    """
    from components.face_tracking.config import FaceTrackingConfig
    from components.face_tracking.evidence import EvidenceRules
    from components.finetune_lipsync.config import LipSyncArchitecture
    from components.finetune_lipsync.data import load_lipsync_videos, resize_videos

    rules = EvidenceRules.of(LipSyncArchitecture().window_s, FaceTrackingConfig())
    videos, skipped = load_lipsync_videos(faces_dir, rules)
    crops_blobs, audio_blobs, rows = [], [], []
    for v in resize_videos(videos, crop_size):
        crops_blobs.append(encode_crops(v.crops))
        audio_blobs.append(encode_audio(v.audio))
        row = (truth or {}).get(v.video_id, {})
        conditions = {k: row.get(k) for k in CONDITIONS}
        fake_type = (v.fake_type or row.get("fake_type") or "") if v.label else ""  # faces Datasets before types
        rows.append(
            {
                "video_id": v.video_id, "split": v.split, "label": v.label, "fake_type": fake_type, "fps": v.fps,
                "fallback_used": v.fallback_used, "n_frames": len(v.crops), "n_samples": len(v.audio),
                "conditions": conditions,
            }
        )  # fmt: skip
    header = {
        "format": FORMAT,
        "crop_size": crop_size,
        "crops": "YUV 4:2:0 (OpenCV I420), frame differences modulo 256, lzma",
        "audio": "16 kHz, 8-bit mu-law (mu 255), lzma",
        "videos": rows,
        "skipped": skipped,
    }

    def packed(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        return np.frombuffer(b"".join(blobs), np.uint8), offsets

    crops, crops_offsets = packed(crops_blobs)
    audio, audio_offsets = packed(audio_blobs)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "wb") as f:  # np.savez: the blobs are compressed already
        np.savez(
            f,
            header=np.frombuffer(json.dumps(header).encode(), np.uint8),
            crops=crops,
            crops_offsets=crops_offsets,
            audio=audio,
            audio_offsets=audio_offsets,
        )
    logger.info(
        "exported %d videos (%d skipped) to %s: %.1f MiB",
        len(rows),
        len(skipped),
        out_file,
        out_file.stat().st_size / 2**20,
    )
    return header


def load_export(path: Path) -> tuple[dict, list]:
    """The header and the videos (:class:`~components.finetune_lipsync.data.LipsyncVideo`) of an export."""
    from components.finetune_lipsync.data import LipsyncVideo

    with np.load(path, allow_pickle=False) as data:
        header = json.loads(data["header"].tobytes())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format {header.get('format')!r})")
        crops, co, audio, ao = (data[k] for k in ("crops", "crops_offsets", "audio", "audio_offsets"))
    videos = []
    for k, row in enumerate(header["videos"]):
        clip = decode_crops(crops[co[k] : co[k + 1]].tobytes(), row["n_frames"], header["crop_size"])
        sound = decode_audio(audio[ao[k] : ao[k + 1]].tobytes())
        videos.append(
            LipsyncVideo(
                row["video_id"], clip, sound, row["fps"], row["label"], row["split"], row["fallback_used"],
                fake_type=row["fake_type"],
            )
        )  # fmt: skip
    return header, videos


def export(args) -> int:
    """Generate (or reuse) the benchmark through face tracking with quality.py's code, then write the export."""
    import quality  # benchmarks/quality.py, beside this file

    home = args.home.resolve()
    argv = ["--home", str(home), "--lipsync-only", "--skip-selection", "--faces-only"]
    argv += ["--talking-heads", str(args.talking_heads), "--test-fraction", str(args.test_fraction)]
    argv += ["--seed", str(args.seed), "--workers", str(args.workers), "--face-tracking", args.face_tracking]
    out = (args.stages or home / "quality").resolve()
    argv += ["--out", str(out)]
    if quality.main(argv) != 0:
        return 1
    truth = quality._truth_by_id(out / "ingest" / "manifest.jsonl", home / "demo" / "bench" / "truth.jsonl")
    header = export_faces(out / "faces", args.out, truth)
    print(json.dumps({"file": str(args.out), "mib": round(args.out.stat().st_size / 2**20, 2), **_counts(header)}))
    return 0


def _counts(header: dict) -> dict:
    rows = header["videos"]
    return {
        "videos": len(rows),
        "skipped": len(header["skipped"]),
        **{f"{s}_videos": sum(r["split"] == s for r in rows) for s in ("train", "val", "test")},
        "fakes": sum(r["label"] for r in rows),
    }


# ----------------------------------------------------------------------------------------------- oracle


def crop_oracle(videos: list) -> dict:
    """Is the evidence in what the detector sees? A model-free rule on the same crops and audio, no training.

    Per clip: the mouth's darkness (minus the mean luminance of the crop's central band, where face tracking puts
    the lips) and the audio's log energy per video frame, correlated at lags -5..5 frames. Rules (higher = more
    likely fake), as ``oracle_figures`` in ``quality.py`` on the generator's true mouth opening: ``sync`` = 1 - the
    best correlation within +-3 frames, ``lag0`` = minus the correlation at lag 0. AUC of each fake type against all
    reals, over every exported clip.
    """
    from sklearn.metrics import roc_auc_score

    def correlations(v) -> np.ndarray:
        h, w = v.crops.shape[1:3]
        band = v.crops[:, int(0.35 * h) : int(0.7 * h), int(0.25 * w) : int(0.75 * w)].astype(np.float32)
        dark = -band.mean(axis=(1, 2, 3))
        n = len(dark)
        hop = len(v.audio) // n
        energy = np.log(np.sqrt(np.square(v.audio[: n * hop].reshape(n, hop)).mean(axis=1)) + 1e-3)
        return np.array(
            [
                np.corrcoef(energy[max(0, k) : n + min(0, k)], dark[max(0, -k) : n - max(0, k)])[0, 1]
                for k in range(-5, 6)
            ]
        )

    corr = {v.video_id: np.nan_to_num(correlations(v)) for v in videos}
    reals = [v.video_id for v in videos if v.label == 0]
    rules = {"sync": lambda c: 1 - c[2:9].max(), "lag0": lambda c: -c[5]}
    out: dict = {"n_real": len(reals), "real_corr_lag0_median": float(np.median([corr[v][5] for v in reals]))}
    for fake_type in sorted({v.fake_type for v in videos if v.label == 1}):
        fakes = [v.video_id for v in videos if v.label == 1 and v.fake_type == fake_type]
        y = [0] * len(reals) + [1] * len(fakes)
        out[fake_type or "untyped"] = {"n_fake": len(fakes)} | {
            name: round(float(roc_auc_score(y, [rule(corr[v]) for v in reals + fakes])), 3)
            for name, rule in rules.items()
        }
    return out


# ----------------------------------------------------------------------------------------------- paired


def paired_auc(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_resamples: int = 2000) -> dict:
    """ROC AUC of two scorings of the same items and ``b - a``, with a paired percentile bootstrap (95 %).

    Every resample draws the same items for both, so what the two share (the items' difficulty) cancels out of the
    difference; resamples that draw a single class are dropped.
    """
    from components.common.stats import auc_rows

    y = np.asarray(labels, dtype=np.int64)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, len(y), size=(n_resamples, len(y)))
    auc_a, auc_b = auc_rows(y[idx], a[idx]), auc_rows(y[idx], b[idx])
    diff = (auc_b - auc_a)[np.isfinite(auc_a)]
    whole_a, whole_b = (float(auc_rows(y[None], s[None])[0]) for s in (a, b))

    def rounded(value: float, interval: np.ndarray) -> dict:
        low, high = np.quantile(interval, [0.025, 0.975])
        return {"value": round(value, 4), "low": round(float(low), 4), "high": round(float(high), 4)}

    return {
        "n": len(y),
        "n_fake": int(y.sum()),
        "a": rounded(whole_a, auc_a[np.isfinite(auc_a)]),
        "b": rounded(whole_b, auc_b[np.isfinite(auc_b)]),
        "b_minus_a": rounded(whole_b - whole_a, diff),
    }


def box_agreement(faces_a: Path, faces_b: Path, video_ids: set[str], detect_every_b: int = 1) -> dict:
    """How far the subject's face boxes of two faces Datasets lie apart on the same frames of ``video_ids``.

    Per frame where both saw the subject: IoU and centre shift in box sides (of ``a``); medians and worst (the
    5th percentile of IoU, the 95th of the shift) over all such frames and over those ``b`` did not detect (its
    ``detect_every``: boxes interpolated there), and how many videos have the same subject (median IoU > 0.5).
    """
    from components.face_tracking.dataset import read_face_index
    from components.face_tracking.detect import iou
    from components.face_tracking.tracks import detection_frames

    def boxes(directory: Path) -> dict[str, tuple]:
        return {
            r.video_id: r.selected_sample.boxes for r in read_face_index(directory)
            if r.video_id in video_ids and r.selected_sample is not None and r.selected_track >= 0
        }  # fmt: skip

    along_a, along_b = boxes(faces_a), boxes(faces_b)
    rows, same = [], []  # (interpolated in b, IoU, centre shift)
    for vid in sorted(along_a.keys() & along_b.keys()):
        detected = set(detection_frames(len(along_b[vid]), detect_every_b))
        pairs = [(f, p, q) for f, (p, q) in enumerate(zip(along_a[vid], along_b[vid], strict=True)) if p and q]
        clip = [
            (
                f not in detected,
                iou(p, q),
                math.hypot(p[0] + p[2] - q[0] - q[2], p[1] + p[3] - q[1] - q[3]) / 2 / (p[2] - p[0]),
            )
            for f, p, q in pairs
        ]
        same.append(bool(clip) and float(np.median([r[1] for r in clip])) > 0.5)
        rows += clip if same[-1] else []
    table = np.array(rows, dtype=np.float64).reshape(-1, 3)

    def figures(part: np.ndarray) -> dict:
        if not len(part):
            return {"frames": 0}
        return {
            "frames": len(part),
            "iou_median": round(float(np.median(part[:, 1])), 4),
            "iou_p5": round(float(np.quantile(part[:, 1], 0.05)), 4),
            "centre_shift_sides_median": round(float(np.median(part[:, 2])), 4),
            "centre_shift_sides_p95": round(float(np.quantile(part[:, 2], 0.95)), 4),
        }

    return {
        "videos_with_a_track_in_both": len(same),
        "same_subject": int(sum(same)),
        "all_frames": figures(table),
        "frames_interpolated_in_b": figures(table[table[:, 0] == 1]),
    }


def paired(args) -> int:
    """One saved model on the test videos of two exports of the same benchmark (e.g. two face_tracking settings).

    ROC AUC of each and the paired difference (``--data-b`` minus ``--data``) overall and per fake type (its fakes
    against all reals), the per-video probability and crop differences, and with ``--faces`` the face boxes'
    agreement of the two faces Datasets on those videos.
    """
    from components.finetune_lipsync.model import load_model, predict_video

    _, videos_a = load_export(args.data)
    _, videos_b = load_export(args.data_b)
    test_a = {v.video_id: v for v in videos_a if v.split == "test"}
    test_b = {v.video_id: v for v in videos_b if v.split == "test"}
    ids = sorted(test_a.keys() & test_b.keys())
    if any(test_a[i].label != test_b[i].label or test_a[i].fake_type != test_b[i].fake_type for i in ids):
        raise ValueError("the two exports disagree on the labels of shared test videos")
    model = load_model(args.model, args.device)
    scores = {
        name: np.array([predict_video(model, t[i].crops, t[i].audio, t[i].fps).probability for i in ids])
        for name, t in (("a", test_a), ("b", test_b))
    }
    y = np.array([test_a[i].label for i in ids])
    types = np.array([test_a[i].fake_type for i in ids])
    out: dict = {
        "data": str(args.data),
        "data_b": str(args.data_b),
        "model": str(args.model),
        "test_videos": {
            "shared": len(ids),
            "only_in_data": len(test_a) - len(ids),
            "only_in_data_b": len(test_b) - len(ids),
        },
        "roc_auc": {"all": paired_auc(y, scores["a"], scores["b"])},
    }
    for fake_type in sorted(set(types[y == 1].tolist())):
        keep = (y == 0) | (types == fake_type)
        out["roc_auc"][fake_type or "untyped"] = paired_auc(y[keep], scores["a"][keep], scores["b"][keep])
    p_diff = np.abs(scores["b"] - scores["a"])
    mad = [
        float(np.abs(test_a[i].crops.astype(np.int16) - test_b[i].crops).mean())
        for i in ids if test_a[i].crops.shape == test_b[i].crops.shape
    ]  # fmt: skip
    out["probability_abs_diff"] = {"median": round(float(np.median(p_diff)), 4), "max": round(float(p_diff.max()), 4)}
    out["crops_mean_abs_diff"] = {"median": round(float(np.median(mad)), 2), "max": round(float(max(mad)), 2)}
    if args.faces:
        out["face_boxes"] = box_agreement(args.faces[0], args.faces[1], set(ids), args.detect_every_b)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------------------------------------------ train


class TimeUp(Exception):
    """A recipe's share of the time budget is spent (raised between epochs)."""


def _auc_with_interval(y: np.ndarray, s: np.ndarray) -> dict:
    from components.common.stats import bootstrap_two_class

    return bootstrap_two_class("roc_auc", y, s).to_dict()


def aggregation_figures(model, val: list, test: list) -> dict:
    """ROC AUC of every ``video_aggregation`` on the validation (which chooses) and test videos, overall and per type.

    The window logits are computed once per video; only the video score's aggregation differs between the rows.
    """
    from sklearn.metrics import roc_auc_score

    from components.finetune_lipsync.config import AGGREGATIONS
    from components.finetune_lipsync.model import aggregate, window_logits, windows

    c = model.config

    def logits(videos: list) -> list[np.ndarray]:
        return [
            window_logits(model, windows(v.crops, v.audio, v.fps, c.window_s, c.hop_s, target_fps=c.fps))
            for v in videos
        ]

    def aucs(videos: list, per_video: list[np.ndarray], method: str, interval: bool) -> dict:
        y = np.array([v.label for v in videos])
        s = np.array([aggregate(w, method) for w in per_video])
        auc = _auc_with_interval if interval else lambda yy, ss: round(float(roc_auc_score(yy, ss)), 4)
        out = {"all": auc(y, s)}
        for fake_type in sorted({v.fake_type for v in videos if v.label == 1}):
            keep = (y == 0) | np.array([v.label == 1 and v.fake_type == fake_type for v in videos])
            out[fake_type or "untyped"] = auc(y[keep], s[keep])
        return out

    val_logits, test_logits = logits(val), logits(test)
    return {
        method: {
            "val_roc_auc": aucs(val, val_logits, method, False),
            "test_roc_auc": aucs(test, test_logits, method, True),
        }
        for method in AGGREGATIONS
    }


def evaluate_recipe(model_dir: Path, val: list, test: list, header: dict, device: str, levels: dict) -> dict:
    """The evaluate stage's figures of one trained model on the exported test set, plus conditions and perturbations."""
    import torch
    import torch.nn.functional as F

    from components.evaluate.lipsync_eval import evaluate_model, perturb_crops
    from components.finetune_lipsync.model import predict_video

    ev, scores, model = evaluate_model(model_dir, val, test, device, None)
    y = np.array([v.label for v in test])
    figures: dict = {
        "threshold": ev.threshold,
        "test": {k: ev.test_ci[k] for k in ("roc_auc", "average_precision", "accuracy", "fpr", "fnr")},
        "per_fake_type": {
            t: {k: row.get(k) for k in ("n_fake", "n_real", "roc_auc", "not_evaluated") if k in row}
            for t, row in ev.test_by_fake_type.items()
        },
    }
    conditions = {r["video_id"]: r["conditions"] for r in header["videos"]}
    per_condition = {}
    for name in CONDITIONS:
        for value in sorted({conditions[v.video_id][name] for v in test} - {None}, key=str):
            keep = np.array([conditions[v.video_id][name] == value for v in test])
            if name == "offset_frames":  # offset fakes by their shift, against all reals
                keep = (keep & np.array([v.fake_type == "offset" for v in test])) | (y == 0)
            if len(set(y[keep].tolist())) == 2:
                per_condition[f"{name}={value}"] = {
                    "n": int(keep.sum()),
                    "roc_auc": _auc_with_interval(y[keep], scores[keep]),
                }
    figures["per_condition"] = per_condition
    figures["aggregations"] = aggregation_figures(model, val, test)
    rows = []
    for kind, kind_levels in levels.items():
        for level in kind_levels:
            perturbed = []
            for i, v in enumerate(test):  # evaluate's perturbation at face tracking's crop size, seeded as there
                big = F.interpolate(
                    torch.from_numpy(v.crops).permute(0, 3, 1, 2).float(), size=(EVAL_CROP_PX, EVAL_CROP_PX),
                    mode="bilinear", align_corners=False,
                ).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # fmt: skip
                crops = perturb_crops(big, kind, level, seed=i)
                perturbed.append(predict_video(model, crops, v.audio, v.fps).probability)
            rows.append({"perturbation": kind, "level": level, "roc_auc": _auc_with_interval(y, np.array(perturbed))})
    figures["perturbations"] = rows
    return figures


def train_recipe(name: str, overrides: dict, videos: list, header: dict, args, deadline: float, work: Path) -> dict:
    """Train one recipe with ``train_lipsync`` until its epochs or its deadline, then evaluate it."""
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.data import split_by_video, training_pool
    from components.finetune_lipsync.train import train_lipsync

    settings = {"device": args.device, "pretrained": "", "loader_workers": args.loader_workers, **overrides}
    cfg = FinetuneLipsyncConfig(**settings)
    train, val = split_by_video(training_pool(videos), cfg.val_fraction, cfg.seed)
    test = [v for v in videos if v.split == "test"]
    history: list[dict] = []

    def log_fn(metrics: dict, epoch: int) -> None:
        history.append(
            {"epoch": epoch, **{k: round(float(metrics[k]), 4) for k in ("train_loss", "val_loss", "val_video_auc")}}
        )
        logger.info("%s epoch %d: %s", name, epoch, history[-1])
        if time.monotonic() > deadline and epoch < cfg.epochs:
            raise TimeUp

    started = time.monotonic()
    model_dir, stopped = work / name / "model", False
    try:
        train_lipsync(train, val, cfg, model_dir, log_fn=log_fn, work_dir=work / name)
    except TimeUp:  # the best checkpoint so far, with this run's architecture
        from safetensors.torch import load_file

        from components.common.checkpoints import BEST_FILE
        from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, save_model

        stopped = True
        model = LipSyncDetector(LipSyncModelConfig(**dataclasses.asdict(cfg.model)))
        model.load_state_dict(load_file(str(work / name / "checkpoints" / BEST_FILE)))
        save_model(model, model_dir)
    seconds = time.monotonic() - started
    figures = evaluate_recipe(model_dir, val, test, header, args.device, args.levels)
    return {
        "recipe": name,
        "overrides": overrides,
        "videos": {"train": len(train), "val": len(val), "test": len(test)},
        "epochs_done": len(history),
        "stopped_by_time_budget": stopped,
        "train_seconds": round(seconds, 1),
        "history": history,
        **figures,
    }


def _levels(text: str) -> dict[str, tuple]:
    """``--perturbations``: comma-separated KIND (evaluate's levels) or KIND:LEVEL -> kind -> levels."""
    from components.evaluate.lipsync_eval import PERTURBATIONS

    levels: dict[str, tuple] = {}
    for item in filter(None, text.split(",")):
        kind, _, level = item.partition(":")
        levels[kind] = levels.get(kind, ()) + ((float(level),) if level else PERTURBATIONS[kind])
    return levels


def evaluate_saved(args) -> int:
    """The figures of a model folder a ``train`` call saved (``--work``), on the export it was trained on."""
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.data import split_by_video, training_pool

    header, videos = load_export(args.data)
    cfg = FinetuneLipsyncConfig()  # the split train_recipe made (every recipe keeps the default split settings)
    _, val = split_by_video(training_pool(videos), cfg.val_fraction, cfg.seed)
    test = [v for v in videos if v.split == "test"]
    figures = evaluate_recipe(args.model, val, test, header, args.device, _levels(args.perturbations))
    text = json.dumps({"data": str(args.data), "model": str(args.model), **figures}, indent=1, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def train(args) -> int:
    """Train and evaluate every recipe; print the figures as JSON."""
    started = time.monotonic()
    header, videos = load_export(args.data)
    logger.info("loaded %s in %.0f s: %s", args.data, time.monotonic() - started, _counts(header))
    args.levels = _levels(args.perturbations)
    recipes = [r.partition(":") for r in args.recipe] or [("default", ":", "{}")]
    out = {"data": str(args.data), "device": args.device, "budget_s": round(args.max_minutes * 60), **_counts(header)}
    out |= {"crop_oracle": crop_oracle(videos), "recipes": []}
    work = Path(args.work or tempfile.mkdtemp(prefix="lipsync_gpu-"))
    for k, (name, _, overrides) in enumerate(recipes):
        # Each recipe's share of what is left; a fifth of it is kept for its evaluation.
        share = (args.max_minutes * 60 - (time.monotonic() - started)) / (len(recipes) - k)
        deadline = time.monotonic() + 0.8 * share
        out["recipes"].append(train_recipe(name, json.loads(overrides or "{}"), videos, header, args, deadline, work))
        out["seconds"] = round(time.monotonic() - started, 1)
        text = json.dumps(out, indent=1, default=float)
        if args.json:  # after every recipe: a call cut short keeps what it finished
            args.json.write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("export", help="the benchmark through face tracking, then one .npz (run here)")
    ex.add_argument("--home", type=Path, required=True, help="the benchmark's state folder (quality.py's --home)")
    ex.add_argument("-o", "--out", type=Path, required=True, help="the .npz to write")
    ex.add_argument("--talking-heads", type=int, default=400)
    ex.add_argument("--test-fraction", type=float, default=0.3)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--workers", type=int, default=2)
    ex.add_argument(
        "--face-tracking",
        default="{}",
        help="face_tracking settings over the defaults as JSON, e.g. '{\"detect_every\": 2}' (with its own --stages)",
    )
    ex.add_argument("--stages", type=Path, default=None, help="the stage outputs (quality.py's --out; HOME/quality)")
    tr = sub.add_parser("train", help="train and evaluate on an export (run on the GPU machine)")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--device", default="cuda")
    tr.add_argument("--max-minutes", type=float, default=6.0, help="the whole call's budget, loading included")
    tr.add_argument(
        "--recipe",
        action="append",
        default=[],
        help='NAME:JSON of finetune_lipsync overrides, repeatable (default: one recipe, "default", the config\'s)',
    )
    perturbations = {
        "default": ",".join(TARGET_PERTURBATIONS),
        "help": "comma-separated KIND (evaluate's three levels) or KIND:LEVEL; empty: none",
    }
    tr.add_argument("--perturbations", **perturbations)
    tr.add_argument("--loader-workers", type=int, default=4)
    tr.add_argument("--work", default=None, help="checkpoints and models (default: a new temporary folder)")
    tr.add_argument("--json", type=Path, help="also write the figures here")
    ev = sub.add_parser("evaluate", help="the figures of a model folder a train call saved under --work")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--model", type=Path, required=True, help="WORK/RECIPE/model")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--perturbations", **perturbations)
    ev.add_argument("--json", type=Path, help="also write the figures here")
    pa = sub.add_parser("paired", help="one saved model on the same test videos of two exports, paired (any machine)")
    pa.add_argument("--data", type=Path, required=True, help="the reference export (a)")
    pa.add_argument("--data-b", type=Path, required=True, help="the other export (b) of the same benchmark")
    pa.add_argument("--model", type=Path, required=True)
    pa.add_argument("--device", default="cpu")
    pa.add_argument("--faces", type=Path, nargs=2, metavar=("FACES_A", "FACES_B"), help="the two faces Datasets")
    pa.add_argument("--detect-every-b", type=int, default=1, help="face_tracking.detect_every of FACES_B")
    pa.add_argument("--json", type=Path, help="also write the figures here")
    orc = sub.add_parser("oracle", help="the model-free crop oracle of an export, per split (seconds, any machine)")
    orc.add_argument("--data", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.mode == "oracle":
        _, videos = load_export(args.data)
        test = [v for v in videos if v.split == "test"]
        print(json.dumps({"all": crop_oracle(videos), "test": crop_oracle(test)}, indent=1))
        return 0
    return {"export": export, "train": train, "evaluate": evaluate_saved, "paired": paired}[args.mode](args)


if __name__ == "__main__":
    raise SystemExit(main())

"""face_tracking speed and agreement on generated clips with known face boxes.

Measures, as medians of ``--repeats`` runs over the same clips:

* the raw MediaPipe short-range FaceDetector on every frame (frames/s), against ``track_video`` with
  ``detect_every=1`` (detection + face mesh + tracking + aligned crops): the tracking overhead;
* the face mesh (``use_landmarks``, on by default) against the keypoints alone: frames/s with and without
  it, and on the demo clips (whose true mouth centres are known) the crop-centre error of both, in face widths;
* with ``--lipsync``, a demo-sized lip-sync run: the demo's 40 talking heads tracked with and without the
  mesh, the detector trained on 30 of them (``finetune_lipsync`` defaults, from scratch, three seeds) and
  scored on the other 10: test ROC AUC with and without the mesh;
* on the demo clips (they have audio): ``select_strategy`` ``speaking`` against ``longest``, how often each
  picks the speaker of a two-face clip, and the time ratio;
* ``detect_every`` = 2, 3, 5: speed-up over every-frame detection and agreement (mean IoU of the selected
  track's boxes with the every-frame run), next to two other ways to fill the frames between detections
  (hold the last box; constant-velocity extrapolation) and an OpenCV KCF tracker started on each detection.

Clips: four synthetic 320x240 clips (``components.face_tracking.synthetic``) and the demo generator's
talking-head, two-face and no-face clips (encoded with H.264 and decoded again), each with known face boxes.

Run: ``.venv/bin/python benchmarks/face_tracking.py [--source both|synthetic|demo] [--frames 120] [--repeats 3]
[--lipsync]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.face_tracking import core, crops, detect, tracks
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.synthetic import FaceSpec, render_clip


def make_clips(n_frames: int) -> dict[str, tuple[np.ndarray, list]]:
    """Four 320x240 talking-head-like clips (the dense frames' default size)."""
    t = n_frames
    return {
        "moving": render_clip([FaceSpec(0, t, 20, 30, size=140, vx=1.2, vy=0.3)], t, seed=1),
        "rotated": render_clip([FaceSpec(0, t, 90, 40, size=140, angle=25, vx=-0.5)], t, seed=2),
        "two_faces": render_clip(
            [FaceSpec(0, t, 5, 50, size=120, vx=0.4), FaceSpec(t // 4, t, 190, 60, size=120, vx=-0.3)], t, seed=3
        ),
        "occluded": render_clip(
            [FaceSpec(0, t, 40, 40, size=150, vx=0.8, occluded=frozenset(range(t // 2, t // 2 + 4)))], t, seed=4
        ),
    }


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _fill(track: tracks.Track, n_frames: int, mode: str) -> list:
    """Boxes between detection frames by holding the last box or extrapolating its velocity."""
    frames = track.frames
    boxes: list = [None] * n_frames
    velocity = np.zeros(4)
    for i, a in enumerate(frames):
        box = np.asarray(track.detections[a].box)
        if i > 0:
            prev = frames[i - 1]
            velocity = (box - np.asarray(track.detections[prev].box)) / (a - prev)
        stop = frames[i + 1] if i + 1 < len(frames) else a + 1
        for f in range(a, min(stop, n_frames)):
            boxes[f] = tuple(box + (velocity * (f - a) if mode == "velocity" else 0))
    return boxes


def _kcf_boxes(frames: np.ndarray, track: tracks.Track, k: int) -> tuple[list, float]:
    """KCF started on the track's box at each detection frame, updated on the frames in between."""
    import cv2

    boxes: list = [None] * len(frames)
    start = time.perf_counter()
    det_frames = track.frames
    for a, b in zip(det_frames, [*det_frames[1:], len(frames)], strict=True):
        x0, y0, x1, y1 = track.detections[a].box
        boxes[a] = (x0, y0, x1, y1)
        if b - a > k:
            continue
        tracker = cv2.TrackerKCF_create()
        tracker.init(np.ascontiguousarray(frames[a][..., ::-1]), (int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
        for f in range(a + 1, min(b, len(frames))):
            ok, (x, y, w, h) = tracker.update(np.ascontiguousarray(frames[f][..., ::-1]))
            if ok:
                boxes[f] = (x, y, x + w, y + h)
    return boxes, time.perf_counter() - start


def _recall(boxes: list, truth: list) -> float:
    """Share of the frames where the face is visible whose box has IoU > 0.5 with the truth."""
    pairs = [(b, t) for b, t in zip(boxes, truth, strict=True) if t is not None]
    return float(np.mean([b is not None and detect.iou(b, t) > 0.5 for b, t in pairs]))


def _agreement(reference: list, other: list) -> float:
    values = [detect.iou(a, b) for a, b in zip(reference, other, strict=True) if a is not None and b is not None]
    return float(np.mean(values)) if values else float("nan")


def demo_clips(seed: int = 0) -> dict[str, tuple]:
    """The demo generator's talking-head, two-face and no-face clips (H.264, 256x256), decoded, with truth.

    Returns:
        name -> (frames, per-face truth boxes, speaker index or None, 16 kHz mono audio, per-face true mouth
        centres, authenticity).
    """
    from components.demo_data.config import DemoConfig

    demo = DemoConfig(
        seed=seed, as_of="2026-11-01", clips_per_category=1, talking_real=6, talking_fake=4, two_face=4, no_face=2
    )
    return _decoded_demo(demo, ("talking_head", "two_face", "no_face"))


def _decoded_demo(demo, kinds: tuple[str, ...]) -> dict[str, tuple]:
    import tempfile

    import av

    from components.demo_data.core import generate_demo_data

    clips = {}
    with tempfile.TemporaryDirectory(prefix="clipsync-ft-bench-") as tmp:
        summary = generate_demo_data(Path(tmp) / "bucket", Path(tmp) / "truth", demo)
        for line in summary.truth_path.read_text().splitlines():
            row = json.loads(line)
            if row["kind"] not in kinds:
                continue
            path = str(summary.bucket_dir / row["video_path"])
            with av.open(path) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            with av.open(path) as container:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=core.AUDIO_RATE)
                audio = np.concatenate(
                    [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
                )
            truths = [face["boxes"] for face in row["faces"]]
            mouths = [face["mouth_centers"] for face in row["faces"]]
            speaker = next((i for i, face in enumerate(row["faces"]) if face["speaking"]), None)
            name = f"{row['kind']}:{Path(row['video_path']).stem}"
            clips[name] = (frames, truths, speaker, audio, mouths, row.get("authenticity", ""))
    return clips


def measure(clips: dict, cache_dir: Path, repeats: int) -> dict:
    """Speeds and agreements over ``clips`` (name -> (frames, truths[, speaker index, audio]))."""
    total = sum(len(c[0]) for c in clips.values())
    base = FaceTrackingConfig(detect_every=1)  # the defaults (face mesh on) on every frame: the reference
    no_mesh = replace(base, use_landmarks=False)
    out: dict = {"frames_total": total, "clips": len(clips), "load_avg": os.getloadavg()}
    first = next(iter(clips.values()))[0]
    with detect.load_face_models(cache_dir, base) as models:
        core.track_video(first[:5], 25.0, base, models)  # warm-up (first inference allocates)

        def raw() -> None:
            for clip in clips.values():
                for frame in clip[0]:
                    detect.detect_faces(frame, models.short)

        t_raw, _ = _median_time(raw, repeats)
        t_no_mesh, _ = _median_time(
            lambda: [core.track_video(c[0], 25.0, no_mesh, models) for c in clips.values()], repeats
        )
        results: dict[int, dict[str, core.VideoFaces]] = {}
        timings: dict[int, float] = {}
        for k in (1, 2, 3, 5):
            config = FaceTrackingConfig(detect_every=k)
            timings[k], results[k] = _median_time(
                lambda config=config: {n: core.track_video(c[0], 25.0, config, models) for n, c in clips.items()},
                repeats,
            )
        voiced = {n: c for n, c in clips.items() if len(c) > 3}
        if voiced:
            speaking = replace(base, select_strategy="speaking")
            t_longest, _ = _median_time(
                lambda: [core.track_video(c[0], 25.0, base, models) for c in voiced.values()], repeats
            )
            t_speaking, by_speech = _median_time(
                lambda: {n: core.track_video(c[0], 25.0, speaking, models, c[3]) for n, c in voiced.items()}, repeats
            )
            out["speaking_time_ratio_vs_longest"] = t_speaking / t_longest

    out["raw_detector_fps"] = total / t_raw
    out["track_video_k1_fps"] = total / timings[1]
    out["tracking_overhead_ratio"] = timings[1] / t_raw
    out["track_video_no_mesh_fps"] = total / t_no_mesh
    out["mesh_time_ratio"] = timings[1] / t_no_mesh
    out.update(crop_centre_errors(clips, results[1], base.mouth_scale))
    recalls, speaker_hits, speech_hits, fallbacks, faceless = [], [], [], 0, 0
    for name, clip in clips.items():
        truths = clip[1]
        res = results[1][name]
        if not any(any(b is not None for b in t) for t in truths):
            faceless += 1
            fallbacks += res.fallback_used
            continue
        if res.selected is None:
            recalls.append(0.0)
            continue
        per_face = [_recall(res.boxes[res.selected.track_id], t) for t in truths]
        recalls.append(max(per_face))
        if len(clip) > 2 and clip[2] is not None and len(truths) > 1:
            speaker_hits.append(int(np.argmax(per_face)) == clip[2])
            chosen = by_speech[name]
            speech_faces = [_recall(chosen.boxes[chosen.selected.track_id], t) for t in truths]
            speech_hits.append(int(np.argmax(speech_faces)) == clip[2])
    out["selected_recall_vs_truth_mean"] = float(np.mean(recalls))
    out["selected_recall_vs_truth_min"] = float(np.min(recalls))
    out["faceless_clips_flagged"] = f"{fallbacks}/{faceless}"
    out["selected_is_speaker"] = f"{sum(speaker_hits)}/{len(speaker_hits)}" if speaker_hits else "n/a"
    out["speaking_selects_speaker"] = f"{sum(speech_hits)}/{len(speech_hits)}" if speech_hits else "n/a"
    out["detect_every"] = {}
    for k in (2, 3, 5):
        row = {"fps": total / timings[k], "speedup": timings[1] / timings[k]}
        agree: dict[str, list] = {"interpolate": [], "hold": [], "velocity": [], "kcf": []}
        kcf_seconds = 0.0
        for name, clip in clips.items():
            ref, res = results[1][name], results[k][name]
            if ref.selected is None or res.selected is None:
                continue
            ref_boxes = ref.boxes[ref.selected.track_id]
            agree["interpolate"].append(core.selected_box_agreement(ref, res))
            agree["hold"].append(_agreement(ref_boxes, _fill(res.selected, len(clip[0]), "hold")))
            agree["velocity"].append(_agreement(ref_boxes, _fill(res.selected, len(clip[0]), "velocity")))
            kcf, seconds = _kcf_boxes(clip[0], res.selected, k)
            agree["kcf"].append(_agreement(ref_boxes, kcf))
            kcf_seconds += seconds
        for key, values in agree.items():
            row[f"agreement_{key}"] = float(np.mean(values))
        row["agreement_interpolate_min"] = float(np.min(agree["interpolate"]))
        row["kcf_fps"] = total / (timings[k] + kcf_seconds)
        out["detect_every"][k] = row
    return out


def crop_centre_errors(clips: dict, results: dict[str, core.VideoFaces], mouth_scale: float) -> dict:
    """Crop centre vs the true mouth centre, in true face widths, on every detection of the selected tracks.

    The same detections are placed twice: from the lip landmarks where a plausible mesh was attached (what
    ``use_landmarks`` does), and from the detector's mouth keypoint alone (what it does when off).
    """
    mesh_err, kp_err, meshed, detections = [], [], 0, 0
    for name, clip in clips.items():
        if len(clip) < 5 or not clip[1] or results[name].selected is None:
            continue
        track = results[name].selected
        boxes = results[name].boxes[track.track_id]
        face = int(np.argmax([_agreement(boxes, t) if any(b is not None for b in t) else 0.0 for t in clip[1]]))
        for f, det in track.detections.items():
            mouth, box = clip[4][face][f], clip[1][face][f]
            if mouth is None or box is None:
                continue
            width = box[2] - box[0]
            detections += 1
            meshed += det.lips is not None
            for use_landmarks, errors in ((True, mesh_err), (False, kp_err)):
                g = crops.mouth_geometry(det, mouth_scale, use_landmarks)
                errors.append(np.hypot(g.cx - mouth[0], g.cy - mouth[1]) / width)
    if not detections:
        return {}
    return {
        "mesh_attached": f"{meshed}/{detections}",
        "crop_error_mesh_median": float(np.median(mesh_err)),
        "crop_error_mesh_p90": float(np.percentile(mesh_err, 90)),
        "crop_error_keypoints_median": float(np.median(kp_err)),
        "crop_error_keypoints_p90": float(np.percentile(kp_err, 90)),
    }


def lipsync_auc(cache_dir: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Test ROC AUC of the lip-sync detector trained on crops placed with and without the face mesh.

    The demo's default 20 real and 20 fake talking heads (3 s each), decoded; every 4th one (by name) is a
    test video, the others the training pool (``finetune_lipsync`` splits off 20 % for validation). Each
    setting trains from scratch with the stage's defaults, once per seed.
    """
    import tempfile

    from sklearn.metrics import roc_auc_score

    from components.demo_data.config import DemoConfig
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.data import LipsyncVideo, split_by_video
    from components.finetune_lipsync.model import load_model, predict_video
    from components.finetune_lipsync.train import train_lipsync

    demo = DemoConfig(seed=0, as_of="2026-11-01", clips_per_category=0, two_face=0, no_face=0, broken=False)
    clips = _decoded_demo(demo, ("talking_head",))
    names = sorted(clips)
    out: dict = {"videos": len(names), "seeds": list(seeds)}
    for use_landmarks in (False, True):
        config = FaceTrackingConfig(use_landmarks=use_landmarks)
        videos = []
        with detect.load_face_models(cache_dir, config) as models:
            for i, name in enumerate(names):
                frames, _, _, audio, _, authenticity = clips[name]
                result = core.track_video(frames, 25.0, config, models, audio)
                track = -1 if result.selected is None else result.selected.track_id
                split = "test" if i % 4 == 3 else "train"
                label = int(authenticity == "fake")
                videos.append(LipsyncVideo(name, result.crops[track], audio, 25.0, label, split))
        test = [v for v in videos if v.split == "test"]
        aucs = []
        for seed in seeds:
            cfg = FinetuneLipsyncConfig(pretrained="", seed=seed, num_threads=1)
            train, val = split_by_video([v for v in videos if v.split == "train"], cfg.val_fraction, seed)
            with tempfile.TemporaryDirectory(prefix="clipsync-lipsync-bench-") as tmp:
                train_lipsync(train, val, cfg, tmp)
                model = load_model(tmp)
            scores = [predict_video(model, v.crops, v.audio, v.fps).probability for v in test]
            aucs.append(float(roc_auc_score([v.label for v in test], scores)))
        key = "mesh" if use_landmarks else "keypoints"
        out[f"test_auc_{key}"] = aucs
        out[f"test_auc_{key}_median"] = float(np.median(aucs))
    return out


def print_report(title: str, out: dict, repeats: int) -> None:
    print(f"== {title}: {out['frames_total']} frames in {out['clips']} clips, medians of {repeats}")
    print(f"raw FaceDetector every frame:  {out['raw_detector_fps']:8.1f} frames/s")
    print(
        f"track_video detect_every=1:    {out['track_video_k1_fps']:8.1f} frames/s "
        f"(time ratio to raw {out['tracking_overhead_ratio']:.2f}x)"
    )
    print(
        f"  without the face mesh:       {out['track_video_no_mesh_fps']:8.1f} frames/s "
        f"(time ratio mesh on / off {out['mesh_time_ratio']:.2f}x)"
    )
    if "mesh_attached" in out:
        print(
            f"  crop centre error vs true mouth (face widths), median / p90: mesh "
            f"{out['crop_error_mesh_median']:.3f} / {out['crop_error_mesh_p90']:.3f}, keypoints (baseline) "
            f"{out['crop_error_keypoints_median']:.3f} / {out['crop_error_keypoints_p90']:.3f}; "
            f"plausible mesh on {out['mesh_attached']} detections"
        )
    print(
        f"  selected track recall vs truth (IoU>0.5): mean {out['selected_recall_vs_truth_mean']:.3f}, "
        f"min {out['selected_recall_vs_truth_min']:.3f}; face-less clips flagged {out['faceless_clips_flagged']}; "
        f"selected = speaker on two-face clips {out['selected_is_speaker']}"
    )
    if "speaking_time_ratio_vs_longest" in out:
        print(
            f"select_strategy speaking vs longest (baseline): speaker chosen on two-face clips "
            f"{out['speaking_selects_speaker']} vs {out['selected_is_speaker']}; "
            f"time ratio {out['speaking_time_ratio_vs_longest']:.2f}x"
        )
    print("k  frames/s speed-up | mean IoU of selected boxes vs k=1: interpolate (min)  hold  velocity  KCF (KCF fps)")
    for k, row in out["detect_every"].items():
        print(
            f"{k}  {row['fps']:8.1f} {row['speedup']:7.2f}x | {row['agreement_interpolate']:38.3f} "
            f"({row['agreement_interpolate_min']:.3f}) {row['agreement_hold']:5.3f} {row['agreement_velocity']:9.3f} "
            f"{row['agreement_kcf']:5.3f} ({row['kcf_fps']:.0f})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames per synthetic clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", choices=("synthetic", "demo", "both"), default="both")
    parser.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".clipsync" / "cache")
    parser.add_argument("--lipsync", action="store_true", help="also train and score the lip-sync detector")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (medians)")
    print(f"cpu_count {os.cpu_count()}, load average {os.getloadavg()}")
    figures = {}
    if args.source in ("synthetic", "both"):
        figures["synthetic"] = measure(make_clips(args.frames), args.cache_dir, args.repeats)
        print_report(f"synthetic 320x240 clips ({', '.join(make_clips(2))})", figures["synthetic"], args.repeats)
    if args.source in ("demo", "both"):
        figures["demo"] = measure(demo_clips(), args.cache_dir, args.repeats)
        print_report(
            "demo generator clips (talking heads, two faces, no face; H.264 256x256)", figures["demo"], args.repeats
        )
    if args.lipsync:
        figures["lipsync"] = auc = lipsync_auc(args.cache_dir)
        print(
            f"== lip-sync on the demo's {auc['videos']} talking heads (30 train pool / 10 test), seeds {auc['seeds']}: "
            f"test ROC AUC with the mesh {auc['test_auc_mesh']} (median {auc['test_auc_mesh_median']:.3f}), "
            f"keypoints only (baseline) {auc['test_auc_keypoints']} (median {auc['test_auc_keypoints_median']:.3f})"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

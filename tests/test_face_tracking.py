"""face_tracking on generated clips with known face boxes (the astronaut's face pasted at known places)."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from offline import offline_context

from components.common.config import ConfigError
from components.face_tracking import core, crops, detect, tracks
from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import load_mouth_crops, load_sample_audio, read_face_index
from components.face_tracking.evidence import EvidenceRules
from components.face_tracking.models import (
    WHEEL_MEMBERS,
    FaceModelError,
    face_model_paths,
    fetch_face_models,
)
from components.face_tracking.synthetic import FaceSpec, render_clip

# Every frame detected: the tests check boxes and geometry against each frame's truth (the default, 2, interpolates
# every other frame; a track then has no box on its first or last frame when that one is skipped).
CFG = FaceTrackingConfig(detect_every=1)


@pytest.fixture(scope="module")
def models(model_cache: Path):
    with detect.load_face_models(model_cache, CFG) as opened:
        yield opened


def _recall(result_boxes, truth, threshold=0.5) -> float:
    pairs = [(b, t) for b, t in zip(result_boxes, truth, strict=True) if t is not None]
    hits = sum(b is not None and detect.iou(b, t) > threshold for b, t in pairs)
    return hits / len(pairs)


def _truth_index(track_boxes, truths) -> int:
    """Which true face a track follows (highest mean IoU over the frames both have)."""
    scores = []
    for truth in truths:
        ious = [detect.iou(b, t) for b, t in zip(track_boxes, truth, strict=True) if b is not None and t is not None]
        scores.append(np.mean(ious) if ious else 0.0)
    return int(np.argmax(scores))


def test_iou_and_config_validation():
    assert detect.iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert detect.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert detect.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    for bad in ({"select_strategy": "biggest"}, {"iou_threshold": 0.0}, {"detect_every": 0}, {"crop_size": 8}):
        with pytest.raises(ConfigError, match="face_tracking"):
            FaceTrackingConfig(**bad)


@pytest.mark.parametrize(
    "spec",
    [FaceSpec(0, 1, 100, 50, size=130, angle=angle) for angle in (-30, -15, 0, 15, 30)]
    + [
        FaceSpec(0, 1, 100, 50, size=130, squeeze=0.5),  # profile-leaning (yaw-like foreshortening)
        FaceSpec(0, 1, 100, 50, size=130, squeeze=0.5, flip=True),
        FaceSpec(0, 1, 100, 50, size=130, squeeze=0.6, angle=30),
        FaceSpec(0, 1, 40, 20, size=200),
    ],
    ids=["rot-30", "rot-15", "rot0", "rot15", "rot30", "yaw-left", "yaw-right", "yaw+rot30", "large"],
)
def test_detection_recall_multi_angle(models, spec):
    frames, truth = render_clip([spec], 1)
    faces, _ = detect.detect_frame(frames[0], models, CFG)
    assert len(faces) == 1
    assert detect.iou(faces[0].box, truth[0][0]) > 0.5
    assert len(faces[0].keypoints) == 6


def test_small_face_needs_full_range_fallback(model_cache, models):
    frames, truth = render_clip([FaceSpec(0, 1, 60, 20, size=70)], 1)
    faces, tried_full = detect.detect_frame(frames[0], models, CFG)
    assert tried_full and len(faces) == 1 and faces[0].source == "full"
    assert detect.iou(faces[0].box, truth[0][0]) > 0.5
    no_fallback = FaceTrackingConfig(full_range_fallback=False)
    with detect.load_face_models(model_cache, no_fallback) as short_only:
        assert detect.detect_frame(frames[0], short_only, no_fallback)[0] == []


def test_track_survives_occlusion_with_same_id(models):
    occluded = frozenset(range(8, 12))  # 4 frames covered by a grey box
    frames, truth = render_clip([FaceSpec(0, 20, 60, 40, size=130, vx=2.0, occluded=occluded)], 20)
    result = core.track_video(frames, 25.0, CFG, models)
    assert not result.fallback_used
    assert len(result.tracks) == 1
    track = result.selected
    assert min(track.frames) == 0 and max(track.frames) == 19
    boxes = result.boxes[track.track_id]
    assert all(boxes[f] is None for f in occluded)  # not seen, never invented
    assert _recall(boxes, truth[0]) == 1.0
    assert result.crops[track.track_id].shape == (20, 96, 96, 3)
    # A tracker that forgets after 2 missed frames starts a new id after the occlusion.
    short_memory = replace(CFG, max_misses=2)
    split = core.track_video(frames, 25.0, short_memory, models)
    assert len(split.tracks) == 2
    assert {min(t.frames) for t in split.tracks} == {0, 12}


def _three_face_clip():
    """Never more than two faces at once; first, longest and largest are three different faces."""
    faces = [
        FaceSpec(0, 6, 10, 20, size=120),  # first: frames 0-5
        FaceSpec(3, 24, 195, 60, size=115, vx=-0.5),  # longest: frames 3-23
        FaceSpec(9, 18, 5, 40, size=175),  # largest: frames 9-17
    ]
    return render_clip(faces, 24)


@pytest.mark.parametrize(("strategy", "expected"), [("first", 0), ("longest", 1), ("largest", 2)])
def test_select_strategy_on_multi_face_clip(models, strategy, expected):
    frames, truths = _three_face_clip()
    config = replace(CFG, select_strategy=strategy)
    result = core.track_video(frames, 25.0, config, models)
    assert result.faces_seen == 2
    assert len(result.tracks) == 3
    chosen = result.boxes[result.selected.track_id]
    assert _truth_index(chosen, truths) == expected
    assert _recall(chosen, truths[expected]) >= 0.9
    assert list(result.crops) == [result.selected.track_id]


def test_emit_all_tracks_gives_every_speaker(models):
    frames, truths = _three_face_clip()
    result = core.track_video(frames, 25.0, FaceTrackingConfig(emit_all_tracks=True), models)
    assert sorted(result.crops) == sorted(t.track_id for t in result.tracks)
    assert sorted(_truth_index(result.boxes[t.track_id], truths) for t in result.tracks) == [0, 1, 2]
    assert all(c.shape == (24, 96, 96, 3) and c.dtype == np.uint8 for c in result.crops.values())


def test_several_model_sets_split_the_frames_and_give_the_same_answer(models, model_cache):
    frames, _ = _three_face_clip()
    config = FaceTrackingConfig(emit_all_tracks=True)  # the default detect_every (2), as the server runs it
    with detect.load_face_models(model_cache, config) as second:
        split = core.track_video(frames, 25.0, config, [models, second])
        odd = detect.detect_frames(frames, [5, 0, 17], [models, second, models], config)
    alone = core.track_video(frames, 25.0, config, models)
    assert [t.frames for t in split.tracks] == [t.frames for t in alone.tracks]
    assert split.boxes == alone.boxes and split.faces_seen == alone.faces_seen == 2
    assert split.crops.keys() == alone.crops.keys()
    # The second share's face mesh starts from a detection instead of following the first share's last frame:
    # the crops are the same up to the first share's last detected frame.
    detected = tracks.detection_frames(len(frames), config.detect_every)
    first_share_end = detected[round(len(detected) / 2) - 1] + 1
    for k in alone.crops:
        assert np.abs(split.crops[k].astype(int) - alone.crops[k]).mean() < 2.0
        assert np.array_equal(split.crops[k][:first_share_end], alone.crops[k][:first_share_end])
    assert odd == [detect.detect_frames(frames, [f], models, config)[0] for f in (5, 0, 17)]  # in the order asked
    with pytest.raises(ValueError, match="at least one set"):
        detect.detect_frames(frames, [0], [], config)


def test_faceless_clip_falls_back_to_flagged_centre_crop(models):
    import cv2

    frames, _ = render_clip([], 6, seed=3)
    config = FaceTrackingConfig(crop_size=64)
    result = core.track_video(frames, 25.0, config, models)
    assert result.fallback_used and result.selected is None and result.tracks == []
    assert list(result.crops) == [-1]
    crops = result.crops[-1]
    assert crops.shape == (6, 64, 64, 3)
    # Centre crop: half the shorter side (120 px) around the frame centre of a 320x240 frame.
    expected = cv2.resize(frames[0, 60:180, 100:220], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(crops[0].astype(int) - expected.astype(int)).mean() < 4


def test_detect_every_k_and_landmark_tracking_agree_with_every_frame(models):
    frames, truth = render_clip([FaceSpec(0, 30, 30, 30, size=130, vx=3.0, vy=1.0)], 30)
    reference = core.track_video(frames, 25.0, CFG, models)
    sparse = core.track_video(frames, 25.0, FaceTrackingConfig(detect_every=3), models)
    assert sparse.detect_frames == 11 and reference.detect_frames == 30
    assert core.selected_box_agreement(reference, sparse) > 0.8
    boxes = sparse.boxes[sparse.selected.track_id]
    assert all(b is not None for b in boxes)  # interpolated between detection frames
    assert _recall(boxes, truth[0]) == 1.0
    # The face mesh followed from frame to frame (VIDEO running mode) lands where the mesh of each frame alone
    # does: on every frame (with zeros as the bundle's padding points it lost the face every third frame).
    per_frame = core.track_video(frames, 25.0, replace(CFG, landmark_tracking=False), models)
    assert reference.boxes == per_frame.boxes
    followed, alone = reference.selected.detections, per_frame.selected.detections
    assert all(d.lips is not None for d in (*followed.values(), *alone.values()))
    lips = [np.mean(followed[f].lips, axis=0) - np.mean(alone[f].lips, axis=0) for f in alone]
    assert np.max(np.hypot(*np.transpose(lips))) < 2.0  # px; the eyes are 38 px apart


@pytest.mark.parametrize("angle", [-30.0, -10.0, 0.0, 25.0])
def test_crop_aligned_levels_the_eye_line(angle):
    import cv2

    # A bar through (100, 100) at `angle` (image y down) stands for the eye line; the crop must show it level.
    image = np.zeros((200, 200, 3), np.uint8)
    rad = np.radians(angle)
    p0 = (round(100 - 80 * np.cos(rad)), round(100 - 80 * np.sin(rad)))
    p1 = (round(100 + 80 * np.cos(rad)), round(100 + 80 * np.sin(rad)))
    cv2.line(image, p0, p1, (255, 255, 255), 5)
    crop = crops.crop_aligned(image, crops.CropGeometry(100.0, 100.0, angle, 100.0), 64)[..., 0].astype(float)
    assert crop[30:34].mean() > 200  # the middle rows are the bar
    assert crop[:20].mean() < 10 and crop[44:].mean() < 10


def test_eye_line_angle_follows_face_rotation(models):
    def angle_of(rotation: float) -> float:
        frames, _ = render_clip([FaceSpec(0, 1, 90, 40, size=150, angle=rotation)], 1)
        face = detect.detect_frame(frames[0], models, CFG)[0][0]
        return crops.mouth_geometry(face, CFG.mouth_scale, use_landmarks=False).angle

    # cv2 rotates counter-clockwise on screen, which lowers the eye-line angle (y down) by the same amount.
    up, ccw, cw = angle_of(0), angle_of(30), angle_of(-30)
    assert cw - ccw == pytest.approx(60, abs=10)
    assert ccw < up < cw


def test_track_faces_on_plain_detections():
    def det(x: float) -> detect.FaceDetection:
        return detect.FaceDetection(box=(x, 10.0, x + 40.0, 50.0), score=0.9)

    # Two faces; the right one disappears for 3 frames; a third appears at the end.
    frames = [[det(0 + f), det(100 + f)] if f not in (4, 5, 6) else [det(0 + f)] for f in range(10)]
    frames[9].append(det(200))
    found = tracks.track_faces(frames, FaceTrackingConfig(max_misses=3))
    assert [t.track_id for t in found] == [0, 1, 2]
    assert found[1].frames == [0, 1, 2, 3, 7, 8, 9]
    assert tracks.select_track(found, "longest", 10).track_id == 0
    assert tracks.select_track(found, "first", 10).track_id == 0
    found[2].detections[9] = detect.FaceDetection(box=(200.0, 0.0, 300.0, 100.0), score=0.9)
    assert tracks.select_track(found, "largest", 10).track_id == 2
    assert tracks.select_track([], "longest") is None


def test_mouth_geometry_prefers_plausible_lip_landmarks():
    kps = ((40.0, 40.0), (60.0, 40.0), (50.0, 50.0), (50.0, 65.0), (30.0, 45.0), (70.0, 45.0))
    face = detect.FaceDetection(box=(25.0, 25.0, 75.0, 75.0), score=0.9, keypoints=kps)
    plain = crops.mouth_geometry(face, 1.6, use_landmarks=True)
    assert (plain.cx, plain.cy, plain.angle) == (50.0, 65.0, 0.0)
    assert plain.side == pytest.approx(max(1.6 * 20, 0.45 * 50))
    lips = ((46.0, 66.0), (54.0, 66.0), (50.0, 70.0))
    eyes = ((40.0, 41.0), (60.0, 43.0))
    assert detect._landmarks_plausible(face, lips, eyes)
    assert not detect._landmarks_plausible(face, ((10.0, 10.0), (12.0, 10.0)), eyes)  # mouth far off
    with_mesh = detect.FaceDetection(face.box, face.score, kps, "short", lips, eyes)
    meshed = crops.mouth_geometry(with_mesh, 1.6, use_landmarks=True)
    assert (meshed.cx, meshed.cy) == pytest.approx((50.0, 202 / 3))
    assert meshed.angle == pytest.approx(np.degrees(np.arctan2(2, 20)))
    assert crops.mouth_geometry(with_mesh, 1.6, use_landmarks=False) == plain


# ------------------------------------------------------------------------------------------- the face mesh


def _astronaut_mouth_error(models: detect.FaceModels, landmarker) -> float:
    """Distance (in face-box widths) from a landmarker's lip centre to the detector's mouth keypoint."""
    from skimage import data

    image = data.astronaut()
    (face,), _ = detect.detect_frame(image, models, FaceTrackingConfig(use_landmarks=False))
    mesh = landmarker.detect(detect._mp_image(image)).face_landmarks[0]
    pts = np.array([(p.x * image.shape[1], p.y * image.shape[0]) for p in mesh])
    assert len(pts) == 478
    lips = pts[[13, 14, 61, 291]].mean(axis=0)  # inner lip top and bottom, mouth corners
    return float(np.hypot(*(lips - np.asarray(face.keypoints[detect.KP_MOUTH]))) / (face.box[2] - face.box[0]))


def test_face_mesh_lands_on_the_astronauts_lips(models, model_cache, tmp_path):
    """skimage's astronaut: the padded bundle's lips sit on the detector's mouth; the unpadded one's do not."""
    from mediapipe.tasks.python import BaseOptions, vision

    paths = face_model_paths(model_cache)

    def landmarker(task: Path):
        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task)))
        return vision.FaceLandmarker.create_from_options(options)

    with landmarker(paths.landmarker_task) as fixed:
        assert _astronaut_mouth_error(models, fixed) < 0.1  # measured 0.067
    # The wheel's model as is (bundle version 1): the mesh is scrambled and its "lips" are elsewhere.
    with zipfile.ZipFile(paths.landmarker_task) as bundle:
        detector = bundle.read("face_detector.tflite")
    with zipfile.ZipFile(tmp_path / "v1.task", "w") as bundle:
        bundle.writestr("face_detector.tflite", detector)
        bundle.writestr("face_landmarks_detector.tflite", paths.face_landmark.read_bytes())
    with landmarker(tmp_path / "v1.task") as scrambled:
        assert _astronaut_mouth_error(models, scrambled) > 0.3  # measured 0.64


def test_detect_frame_crops_the_astronaut_from_her_lips(models):
    from skimage import data

    image = data.astronaut()
    assert CFG.use_landmarks  # on by default
    (face,), _ = detect.detect_frame(image, models, CFG)
    assert face.lips is not None and face.eyes is not None  # a plausible mesh was attached
    width = face.box[2] - face.box[0]
    lips = np.mean(face.lips, axis=0)
    assert np.hypot(*(lips - np.asarray(face.keypoints[detect.KP_MOUTH]))) < 0.1 * width
    for eye, kp in zip(face.eyes, face.keypoints[:2], strict=True):
        assert np.hypot(eye[0] - kp[0], eye[1] - kp[1]) < 0.1 * width
    geometry = crops.mouth_geometry(face, CFG.mouth_scale)
    assert (geometry.cx, geometry.cy) == pytest.approx(tuple(lips))
    # The mesh's box (points 0-467 only) is the face's, not stretched to the padding points.
    ((mesh_box, _, _),) = detect._landmark_faces(image, models.landmarker)
    assert detect.iou(mesh_box, face.box) > 0.5


def test_padded_landmark_model_outputs_478_points(model_cache):
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    from components.face_tracking.models import pad_landmark_model

    raw = face_model_paths(model_cache).face_landmark.read_bytes()

    def graph(model: bytes):
        return tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model, 0)).subgraphs[0]

    before, after = graph(raw), graph(pad_landmark_model(raw))
    shapes = [list(after.tensors[i].shape) for i in after.outputs]
    assert [list(before.tensors[i].shape) for i in before.outputs] == [[1, 1, 1, 1404], [1, 1, 1, 1]]
    assert shapes == [[1, 1, 1, 1434], [1, 1, 1, 1]]
    assert len(after.operators) == len(before.operators) + 1
    repeated = graph(pad_landmark_model(raw, fill="mesh"))  # VIDEO mode's: points 0-9 repeated (SLICE + CONCATENATION)
    assert [list(repeated.tensors[i].shape) for i in repeated.outputs] == shapes
    assert len(repeated.operators) == len(before.operators) + 2
    with pytest.raises(FaceModelError, match="1404-value output"):
        pad_landmark_model(pad_landmark_model(raw))
    with pytest.raises(ValueError, match="fill must be"):
        pad_landmark_model(raw, fill="edge")


def test_a_cache_with_the_old_bundle_is_refused_then_rebuilt_offline(model_cache, tmp_path):
    from components.face_tracking.models import BUNDLE_VERSION, RECORD_FILE

    cache = tmp_path / "cache"
    shutil.copytree(model_cache / "mediapipe", cache / "mediapipe")
    record_path = cache / "mediapipe" / RECORD_FILE
    record = json.loads(record_path.read_text())
    del record["bundle_version"]  # what clipsync wrote before the fix
    record_path.write_text(json.dumps(record))
    with pytest.raises(FaceModelError, match=r"bundle version 1 .*run `clipsync fetch-models`"):
        face_model_paths(cache)
    # No download: a wheel path that does not exist would fail if it were used.
    rebuilt = fetch_face_models(cache, wheel=tmp_path / "absent.whl")
    assert json.loads(record_path.read_text())["bundle_version"] == BUNDLE_VERSION
    assert rebuilt.landmarker_task.read_bytes() == face_model_paths(model_cache).landmarker_task.read_bytes()


# ------------------------------------------------------------------------------------------------ models


def test_model_paths_error_and_idempotent_fetch(model_cache, tmp_path):
    with pytest.raises(FaceModelError, match="clipsync fetch-models"):
        face_model_paths(tmp_path / "empty")
    # Present and verified: no download is attempted (a missing wheel path would fail if it were used).
    paths = fetch_face_models(model_cache, wheel=tmp_path / "absent.whl")
    assert paths == face_model_paths(model_cache)
    with zipfile.ZipFile(paths.landmarker_task) as bundle:
        assert sorted(bundle.namelist()) == ["face_detector.tflite", "face_landmarks_detector.tflite"]
    # A damaged file is detected and restored from a wheel (built here from the cached files).
    cache = tmp_path / "cache"
    shutil.copytree(model_cache / "mediapipe", cache / "mediapipe")
    wheel = tmp_path / "mediapipe-0.10.21-fake.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        for name, member in WHEEL_MEMBERS.items():
            whl.write(cache / "mediapipe" / name, member)
    (cache / "mediapipe" / "face_landmark.tflite").write_bytes(b"truncated")
    restored = fetch_face_models(cache, wheel=wheel)
    assert restored.face_landmark.read_bytes() == paths.face_landmark.read_bytes()
    assert restored.landmarker_task.read_bytes() == paths.landmarker_task.read_bytes()


# ------------------------------------------------------------------------------------------- end to end


def _frame_row(video_id: str, **overrides) -> dict:
    row = {
        "video_id": video_id,
        "key": f"videos/{video_id}.mp4",
        "split": "train",
        "labels": ["talk"],
        "category": "talk",
        "authenticity": "real",
        "status": "ok",
        "reason": "",
        "partial": False,
        "native_fps": 25.0,
        "duration_s": 4.0,
        "width": 320,
        "height": 240,
        "search_shard": "",
        "n_search": 0,
        "search_times": [],
        "dense_shard": "dense-00000.npz",
        "n_dense": 0,
        "dense_fps": 25.0,
        "dense_start_s": 1.0,
        "audio_file": f"audio/{video_id}.npy",
        "has_audio": True,
        "result_key": f"extraction-of-{video_id}",
    }
    row.update(overrides)
    return row


def _write_frames_dataset(frames_dir: Path) -> np.ndarray:
    """A tiny frames Dataset (FORMATS.md layout): a face clip, a face-less clip, a broken and a rejected row."""
    frames_ds = pytest.importorskip("components.frame_extraction.dataset")
    from dataclasses import fields

    (frames_dir / "audio").mkdir(parents=True)
    talking, _ = render_clip([FaceSpec(0, 12, 80, 40, size=140, vx=1.0)], 12)
    empty, _ = render_clip([], 8, seed=5)
    audio = np.linspace(-1, 1, 4 * 16000, dtype=np.float32)
    np.savez(frames_dir / "dense-00000.npz", talk=talking, empty=empty)
    for vid in ("talk", "empty", "broken"):
        np.save(frames_dir / "audio" / f"{vid}.npy", audio)
    rows = [
        _frame_row("talk", n_dense=12),
        _frame_row("empty", n_dense=8, dense_start_s=3.9),  # audio ends early: zero-padded
        _frame_row("broken", n_dense=5),  # its array is missing from the shard
        _frame_row("gone", status="rejected", reason="decode: bad stream", dense_shard="", audio_file=""),
    ]
    known = {f.name for f in fields(frames_ds.FrameRecord)}
    with open(frames_dir / "index.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps({k: v for k, v in row.items() if k in known}) + "\n")
    return audio


@pytest.mark.parametrize("workers", [1, 2])
def test_run_face_tracking_end_to_end(model_cache, tmp_path, workers):
    frames_dir, out_dir = tmp_path / "frames", tmp_path / "faces"
    audio = _write_frames_dataset(frames_dir)
    ctx = offline_context(tmp_path / "state", cache_dir=str(model_cache))
    report = core.run_face_tracking(frames_dir, out_dir, FaceTrackingConfig(crop_size=48, workers=workers), ctx)
    assert (report.videos, report.processed, report.skipped, report.rejected, report.fallback) == (4, 2, 1, 1, 1)
    metrics = report.as_metrics()
    assert metrics["videos_fallback"] == 1.0 and metrics["samples"] == 2.0
    assert metrics["mean_selected_coverage"] == pytest.approx(0.5)  # the face clip fully, the empty one not
    records = {r.video_id: r for r in read_face_index(out_dir)}
    assert sorted(records) == ["broken", "empty", "talk"]
    assert records["broken"].status == "rejected" and records["broken"].reason

    talk = records["talk"]
    assert (talk.status, talk.fallback_used, talk.faces_seen, talk.n_tracks, talk.n_frames) == ("ok", False, 1, 1, 12)
    sample = talk.selected_sample
    assert sample.track_id == talk.selected_track and sample.crops_file == f"crops/{sample.sample_id}.npy"
    assert load_mouth_crops(out_dir, sample).shape == (12, 48, 48, 3)
    assert len(sample.boxes) == 12 and all(b is not None for b in sample.boxes)
    # The evidence a lip-sync verdict needs: the face's size in source pixels (the frames Dataset says the video is
    # 320 px wide, as the dense frames are) and its detector score.
    assert 60 <= talk.face_px <= 100 and 0.8 <= talk.face_score <= 1
    rules = EvidenceRules.of(0.3, FaceTrackingConfig())  # the clips are 12 and 8 frames at 25 fps
    assert rules.problems(talk.evidence) == []
    assert [p.code for p in rules.problems(records["empty"].evidence)] == ["no_face"]
    talk_audio = load_sample_audio(out_dir, talk)
    assert talk_audio.shape == (12 * 16000 // 25,)
    np.testing.assert_array_equal(talk_audio, audio[16000 : 16000 + 7680])

    empty_rec = records["empty"]
    assert empty_rec.fallback_used and empty_rec.selected_track == -1
    assert [s.sample_id for s in empty_rec.samples] == ["empty-center"] and empty_rec.samples[0].selected
    assert load_mouth_crops(out_dir, empty_rec.samples[0]).shape == (8, 48, 48, 3)
    empty_audio = load_sample_audio(out_dir, empty_rec)
    assert empty_audio.shape == (5120,) and np.all(empty_audio[1600:] == 0) and np.any(empty_audio[:1600] != 0)


def test_a_rerun_reuses_kept_tracks_and_crops(model_cache, tmp_path):
    frames_dir = tmp_path / "frames"
    _write_frames_dataset(frames_dir)
    ctx = offline_context(tmp_path / "state", cache_dir=str(model_cache))
    config = FaceTrackingConfig(crop_size=48, workers=2)
    first = core.run_face_tracking(frames_dir, tmp_path / "one", config, ctx)
    assert (first.computed, first.reused, first.as_metrics()["videos_reused"]) == (3, 0, 0.0)
    # workers and the evidence rules (applied by later stages) do not change the tracks.
    again = replace(config, workers=1, min_face_px=8.0)
    second = core.run_face_tracking(frames_dir, tmp_path / "two", again, ctx)
    assert (second.computed, second.reused, second.processed, second.rejected) == (1, 2, 2, 1)  # broken: tried again
    assert {v["video_id"]: v["reused"] for v in second.per_video} == {"talk": True, "empty": True, "broken": False}
    one = {r.video_id: r for r in read_face_index(tmp_path / "one")}
    two = {r.video_id: r for r in read_face_index(tmp_path / "two")}
    assert one == two
    for record in two.values():
        for sample in record.samples:
            one_crops = load_mouth_crops(tmp_path / "one", sample)
            assert np.array_equal(one_crops, load_mouth_crops(tmp_path / "two", sample))
        if record.status == "ok":
            one_audio = load_sample_audio(tmp_path / "one", record)
            assert np.array_equal(one_audio, load_sample_audio(tmp_path / "two", record))
    # A corrected label is this run's; a tracking setting is a new key.
    index = frames_dir / "index.jsonl"
    index.write_text(index.read_text().replace('"authenticity": "real"', '"authenticity": "fake"'))
    third = core.run_face_tracking(frames_dir, tmp_path / "three", again, ctx)
    assert third.reused == 2 and {r.authenticity for r in read_face_index(tmp_path / "three")} == {"fake"}
    assert core.run_face_tracking(frames_dir, tmp_path / "four", replace(config, crop_size=32), ctx).reused == 0


# ------------------------------------------------------------------------------- the demo generator's heads


@pytest.mark.parametrize(
    "pose_args",
    [
        {"angle_deg": 0.0},
        {"angle_deg": 28.0},
        {"angle_deg": -28.0, "flip": True},
        {"squeeze": 0.6, "wobble_deg": 6.0},
        {"squeeze": 0.6, "squeeze_right": False, "angle_deg": 15.0, "flip": True},
    ],
    ids=["frontal", "rot+28", "rot-28-flip", "profile", "profile-left-rot"],
)
def test_mouth_geometry_matches_demo_truth(models, pose_args):
    faces = pytest.importorskip("components.demo_data.faces")
    rng = np.random.default_rng(7)
    pose = faces.FacePose(cx=160.0, cy=110.0, face_px=80.0, wobble_px=6.0, **pose_args)
    n, fps = 12, 25.0
    frames = np.empty((n, 240, 320, 3), np.uint8)
    sprite = faces.FaceSprite(pose)
    for f in range(n):
        frame = faces.studio_background(np.random.default_rng(1), 240, 320)
        sprite.paint(frame, opening=float(rng.uniform()), t=f / fps)
        frames[f] = np.clip(frame, 0, 255).astype(np.uint8)
    result = core.track_video(frames, fps, CFG, models)
    assert not result.fallback_used and len(result.tracks) == 1
    track = result.selected
    for f in range(n):
        truth = pose.truth(f / fps)
        assert detect.iou(result.boxes[track.track_id][f], truth["box"]) > 0.5
        geometry = crops.mouth_geometry(track.detections[f], CFG.mouth_scale, use_landmarks=False)
        assert np.hypot(geometry.cx - truth["mouth"][0], geometry.cy - truth["mouth"][1]) < 0.15 * 80
        # The face mesh (on by default) fits every frame and puts the crop centre on the lips, within 5 %
        # of the face width (keypoints: within 15 %; measured 0.9-2.7 % with the mesh, 3.3-4.8 % without).
        assert track.detections[f].lips is not None
        meshed = crops.mouth_geometry(track.detections[f], CFG.mouth_scale)
        assert np.hypot(meshed.cx - truth["mouth"][0], meshed.cy - truth["mouth"][1]) < 0.05 * 80
        (rx, ry), (lx, ly) = truth["eyes"]
        true_angle = crops._normalize_angle(np.degrees(np.arctan2(ly - ry, lx - rx)))
        assert abs(geometry.angle - true_angle) < 12, (f, geometry.angle, true_angle)


def test_textured_faceless_demo_background_falls_back(models):
    faces = pytest.importorskip("components.demo_data.faces")
    backgrounds = [faces.textured_background(np.random.default_rng(seed), 240, 320) for seed in range(6)]
    frames = np.clip(np.stack(backgrounds), 0, 255).astype(np.uint8)
    result = core.track_video(frames, 25.0, CFG, models)
    assert result.fallback_used and result.faces_seen == 0


def test_component_logs_face_statistics_to_mlflow(model_cache, state_dir, tmp_path):
    import mlflow
    from kfp.dsl import Dataset

    from components.config import from_dict
    from components.face_tracking.component import face_tracking

    frames_dir = tmp_path / "frames"
    _write_frames_dataset(frames_dir)
    cfg = from_dict({"state_dir": str(state_dir), "cache_dir": str(model_cache)})
    frames = Dataset(name="frames", uri=str(frames_dir))
    faces = Dataset(name="faces", uri=str(tmp_path / "faces"))
    face_tracking.python_func(config=cfg.to_json(), parent_run_id="", frames=frames, faces=faces)

    assert faces.metadata["videos_fallback"] == 1.0
    assert len(read_face_index(tmp_path / "faces")) == 3
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    (run,) = [r for r in runs if r.data.tags.get("clipsync.stage") == "face_tracking"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["videos_processed"] == 2.0 and run.data.metrics["videos_rejected"] == 1.0
    assert run.data.params["select_strategy"] == "speaking"
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="face_tracking/per_video.json")
    per_video = {v["video_id"]: v for v in json.loads(Path(local).read_text())["videos"]}
    assert per_video["empty"]["fallback_used"] is True and per_video["talk"]["faces_seen"] == 1
    assert per_video["broken"]["status"] == "rejected"


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import av

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=core.AUDIO_RATE)
        audio = [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
    return frames, np.concatenate(audio)


def test_speaking_strategy_picks_the_face_that_follows_the_voice(models, tmp_path):
    """On the demo's two-face interviews (one speaker, one silent or barely moving face) `speaking` finds the
    speaker every time; `longest` cannot tell them apart (both faces are on screen throughout)."""
    from components.demo_data.core import DemoConfig, generate_demo_data

    demo = DemoConfig(seed=3, as_of="2026-11-01", clips_per_category=0, talking_real=1, talking_fake=1, two_face=6)
    summary = generate_demo_data(tmp_path / "bucket", tmp_path / "truth", replace(demo, broken=False, workers=1))
    interviews = [json.loads(line) for line in summary.truth_path.read_text().splitlines()]
    interviews = [t for t in interviews if t["kind"] == "two_face"]
    assert len(interviews) == 6
    config = FaceTrackingConfig(select_strategy="speaking")
    for truth in interviews:
        frames, audio = _decode(summary.bucket_dir / truth["video_path"])
        result = core.track_video(frames, truth["fps"], config, models, audio)
        assert len(result.speech_sync) == 2, truth["video_path"]
        box = next(b for b in result.boxes[result.selected.track_id] if b is not None)
        speaker_side = 0 if (box[0] + box[2]) / 2 < frames.shape[2] / 2 else 1  # face 0 is on the left
        assert speaker_side == truth["transform"]["speaker"], (truth["video_path"], result.speech_sync)
        silent = min(result.speech_sync.values())
        assert result.speech_sync[result.selected.track_id] > 0.5 > silent
        assert list(result.crops) == [result.selected.track_id]
        # Without audio there is nothing to follow: the longest track, as documented.
        without = core.track_video(frames, truth["fps"], config, models)
        assert without.speech_sync == {} and without.selected is not None

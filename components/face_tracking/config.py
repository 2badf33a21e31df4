"""Settings of the face_tracking stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.errors import require

SELECT_STRATEGIES = ("longest", "largest", "first", "speaking")


_require = functools.partial(require, section="face_tracking")


@dataclass(frozen=True)
class FaceTrackingConfig:
    """How faces are found, tracked and turned into mouth crops.

    Attributes:
        max_faces: Most faces kept per frame (the highest-scoring ones).
        select_strategy: Which track is the subject: ``speaking`` (the default: the face whose mouth motion best
            follows the audio; ``longest`` without audio or with one candidate), ``longest`` (most frames with a
            face), ``largest`` (largest median box area) or ``first`` (earliest start; ties go to the longer
            track). On the benchmark's 80 two-face interviews ``speaking`` picked the speaker in 91 % of them,
            ``longest`` in 33 %, at the same cost (``benchmarks/quality.py``).
        min_detection_confidence: Detector score threshold (0..1).
        iou_threshold: Smallest IoU between a track's last box and a detection for them to match.
        max_misses: Frames a track survives without a matching detection (a short occlusion) and keeps its id.
        detect_every: Run the detector and the face mesh on every k-th frame only (and the last); boxes and crop
            geometry in between are interpolated linearly between the detections of the same track. 2 by default:
            a lip-sync request costs about two thirds of the CPU time of every frame (1, the reference), and on
            benchmark v2's 125 test videos a detector trained on every-frame crops scored every-other-frame crops
            with a video AUC 0.010 higher [-0.023, 0.050] (paired bootstrap), no fake type lower
            (``serving/README.md``).
        crop_size: Side of the square mouth crops in pixels.
        mouth_scale: Crop side as a multiple of the distance between the eyes.
        use_landmarks: Also run FaceLandmarker (the face mesh) on detection frames and place the mouth crop
            from its lip and eye landmarks where the mesh agrees with the detector's keypoints (the seed's
            method); elsewhere, and when off, from the detector's six keypoints (eyes, mouth centre). On by
            default: see ``benchmarks/face_tracking.py`` for its cost and effect.
        landmark_tracking: Run the face mesh over a clip in MediaPipe's VIDEO running mode: each frame's mesh is
            placed from the previous frame's, and the landmarker's own face detector runs only where it has lost a
            face (in the IMAGE mode it runs on every frame: a third of the mesh's time). The lip centres move
            by about 1 px on 320 px frames (``benchmarks/lipsync_request.py --part crops``).
        full_range_fallback: Where the short-range detector finds nothing in a frame, try the full-range
            model (small or distant faces).
        emit_all_tracks: Emit every kept track as its own sample (each speaker), not only the selected one.
        min_track_frames: Tracks with fewer detected frames are dropped as spurious (the selected track is
            kept whatever its length).
        workers: Videos processed in parallel (processes); 1 processes them in this process.
        min_face_px: Smallest subject face (median box side, in the source video's pixels) that counts as
            evidence for a lip-sync verdict; a smaller one is refused at serving and left out of training and
            evaluation (:mod:`components.face_tracking.evidence`).
        min_face_score: Lowest mean detector score of the subject's detections that counts as evidence.
    """

    max_faces: int = 5
    select_strategy: str = "speaking"
    min_detection_confidence: float = 0.5
    iou_threshold: float = 0.3
    max_misses: int = 5
    detect_every: int = 2
    crop_size: int = 96
    mouth_scale: float = 1.6
    use_landmarks: bool = True
    landmark_tracking: bool = True
    full_range_fallback: bool = True
    emit_all_tracks: bool = False
    min_track_frames: int = 3
    workers: int = 1
    min_face_px: float = 32.0
    min_face_score: float = 0.7

    def __post_init__(self) -> None:
        _require(1 <= self.max_faces <= 20, f"max_faces must be 1..20, got {self.max_faces}")
        _require(
            self.select_strategy in SELECT_STRATEGIES,
            f"select_strategy must be one of {', '.join(SELECT_STRATEGIES)}, got {self.select_strategy!r}",
        )
        _require(
            0.0 < self.min_detection_confidence < 1.0,
            f"min_detection_confidence must be in (0, 1), got {self.min_detection_confidence}",
        )
        _require(0.0 < self.iou_threshold < 1.0, f"iou_threshold must be in (0, 1), got {self.iou_threshold}")
        _require(0 <= self.max_misses <= 1000, f"max_misses must be 0..1000, got {self.max_misses}")
        _require(1 <= self.detect_every <= 30, f"detect_every must be 1..30, got {self.detect_every}")
        _require(16 <= self.crop_size <= 512, f"crop_size must be 16..512, got {self.crop_size}")
        _require(0.5 <= self.mouth_scale <= 5.0, f"mouth_scale must be 0.5..5, got {self.mouth_scale}")
        _require(self.min_track_frames >= 1, f"min_track_frames must be >= 1, got {self.min_track_frames}")
        _require(1 <= self.workers <= 64, f"workers must be 1..64, got {self.workers}")
        _require(0 <= self.min_face_px <= 4096, f"min_face_px must be 0..4096, got {self.min_face_px}")
        _require(0 <= self.min_face_score < 1, f"min_face_score must be in [0, 1), got {self.min_face_score}")
        for name in ("use_landmarks", "landmark_tracking", "full_range_fallback", "emit_all_tracks"):
            _require(isinstance(getattr(self, name), bool), f"{name} must be a bool, got {getattr(self, name)!r}")

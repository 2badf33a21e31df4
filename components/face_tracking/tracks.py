"""face_tracking, tracks: detections linked across frames, and the choice of the subject's track.

Detections are linked into tracks by greedy IoU matching against each track's constant-velocity prediction; a
track keeps its id through up to ``max_misses`` frames without a match (a hand in front of the face). The subject
is the longest, largest, first or speaking track.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from components.face_tracking.config import FaceTrackingConfig
from components.face_tracking.dataset import AUDIO_RATE, Box
from components.face_tracking.detect import FaceDetection, box_area, iou


@dataclass(eq=False)
class Track:
    """One face followed across frames.

    Attributes:
        track_id: Stable id within the video (0, 1, ... in order of appearance).
        detections: Frame index -> the detection matched on that frame.
        velocity: Box change per frame, estimated from the last two detections (for matching).
    """

    track_id: int
    detections: dict[int, FaceDetection] = field(default_factory=dict)
    velocity: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def frames(self) -> list[int]:
        return sorted(self.detections)

    @property
    def start(self) -> int:
        return min(self.detections)

    @property
    def end(self) -> int:
        return max(self.detections)

    @property
    def last_box(self) -> Box:
        return self.detections[self.end].box

    @property
    def median_area(self) -> float:
        return float(np.median([box_area(d.box) for d in self.detections.values()]))

    def predict(self, frame: int) -> Box:
        """The constant-velocity prediction of the box at ``frame``."""
        dt = frame - self.end
        return tuple(b + v * dt for b, v in zip(self.last_box, self.velocity, strict=True))  # type: ignore[return-value]

    def add(self, frame: int, detection: FaceDetection) -> None:
        if self.detections:
            prev_frame = self.end
            prev = self.detections[prev_frame].box
            dt = max(frame - prev_frame, 1)
            self.velocity = tuple((n - p) / dt for n, p in zip(detection.box, prev, strict=True))  # type: ignore[assignment]
        self.detections[frame] = detection


def _match(tracks: list[Track], detections: list[FaceDetection], frame: int, threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU (highest first) between predicted track boxes and detections."""
    pairs = []
    for ti, track in enumerate(tracks):
        predicted = track.predict(frame)
        for di, det in enumerate(detections):
            # The larger of the IoU with the last box and with the prediction: a bad velocity estimate
            # (a jittery detection) must not lose a face that has not moved.
            overlap = max(iou(predicted, det.box), iou(track.last_box, det.box))
            if overlap >= threshold:
                pairs.append((overlap, ti, di))
    pairs.sort(key=lambda p: -p[0])
    used_t: set[int] = set()
    used_d: set[int] = set()
    matches = []
    for _, ti, di in pairs:
        if ti in used_t or di in used_d:
            continue
        used_t.add(ti)
        used_d.add(di)
        matches.append((ti, di))
    return matches


def update_tracks(
    active: list[Track],
    detections: list[FaceDetection],
    frame: int,
    config: FaceTrackingConfig,
    next_id: int,
) -> tuple[list[Track], list[Track], int]:
    """Advance the tracker by one detection frame.

    Args:
        active: Tracks still alive before this frame.
        detections: This frame's detections.
        frame: This frame's index.
        config: ``iou_threshold``, ``max_misses`` and ``detect_every``.
        next_id: The id a new track gets.

    Returns:
        ``(active, ended, next_id)``: the tracks alive after this frame, those that ended (missed for
        more than ``max_misses`` frames), and the next free id.
    """
    # A track may go unobserved for detect_every - 1 frames between detection frames without a miss.
    allowed_gap = max(config.max_misses, config.detect_every - 1)
    alive = [t for t in active if frame - t.end - 1 <= allowed_gap]
    ended = [t for t in active if frame - t.end - 1 > allowed_gap]
    matches = _match(alive, detections, frame, config.iou_threshold)
    matched = {di for _, di in matches}
    for ti, di in matches:
        alive[ti].add(frame, detections[di])
    for di, det in enumerate(detections):
        if di not in matched:
            track = Track(track_id=next_id)
            track.add(frame, det)
            alive.append(track)
            next_id += 1
    return alive, ended, next_id


def track_faces(detections_per_frame: Sequence[list[FaceDetection] | None], config: FaceTrackingConfig) -> list[Track]:
    """Link per-frame detections into tracks.

    Args:
        detections_per_frame: One entry per frame: the detections, or ``None`` for a frame the detector
            skipped (``detect_every`` > 1).
        config: Matching settings.

    Returns:
        Every track, ordered by id (no length filter here).
    """
    active: list[Track] = []
    done: list[Track] = []
    next_id = 0
    for frame, detections in enumerate(detections_per_frame):
        if detections is None:
            continue
        active, ended, next_id = update_tracks(active, detections, frame, config, next_id)
        done.extend(ended)
    return sorted(done + active, key=lambda t: t.track_id)


def track_boxes(track: Track, n_frames: int, detect_every: int) -> list[Box | None]:
    """Per-frame boxes of a track: detected frames, and linear interpolation across frames the detector
    skipped (gaps up to ``detect_every``); ``None`` during misses and outside the track."""
    boxes: list[Box | None] = [None] * n_frames
    frames = track.frames
    for f in frames:
        boxes[f] = track.detections[f].box
    for a, b in itertools.pairwise(frames):
        if b - a > detect_every:
            continue
        box_a, box_b = np.asarray(track.detections[a].box), np.asarray(track.detections[b].box)
        for f in range(a + 1, b):
            w = (f - a) / (b - a)
            boxes[f] = tuple(float(v) for v in (1 - w) * box_a + w * box_b)  # type: ignore[assignment]
    return boxes


def track_length(track: Track, n_frames: int, detect_every: int) -> int:
    """Frames with a box (detected or interpolated between detection frames)."""
    return sum(b is not None for b in track_boxes(track, n_frames, detect_every))


def speech_sync(crops: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int = AUDIO_RATE) -> float:
    """How closely a face's mouth motion follows the voice of the clip.

    The Pearson correlation, frame by frame, between the motion energy of the mouth crops (mean absolute
    difference of consecutive grey crops) and the change in loudness (RMS of the audio over each frame's
    span). On the demo's two-face clips the speaker scores 0.6 to 0.9 and the silent face at most 0.26.

    Args:
        crops: uint8 [T, C, C, 3] mouth crops of one track.
        audio: Mono samples aligned with the first crop (shorter audio is padded with silence).
        fps: Frame rate of the crops.
        sample_rate: Audio sample rate.

    Returns:
        The correlation in [-1, 1]; NaN when motion or loudness is constant (e.g. silence).
    """
    n = len(crops)
    if n < 3:
        return float("nan")
    grey = crops.astype(np.float32).mean(axis=-1)
    motion = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
    edges = np.round(np.arange(n + 1) * sample_rate / fps).astype(int)
    padded = np.zeros(edges[-1], dtype=np.float32)
    piece = np.asarray(audio, dtype=np.float32)[: edges[-1]]
    padded[: len(piece)] = piece
    rms = np.sqrt(np.add.reduceat(padded**2, edges[:-1]) / np.diff(edges))
    loudness_change = np.abs(np.diff(rms))
    if motion.std() == 0 or loudness_change.std() == 0:
        return float("nan")
    return float(np.corrcoef(motion, loudness_change)[0, 1])


def select_track(
    tracks: Sequence[Track],
    strategy: str,
    n_frames: int = 0,
    detect_every: int = 1,
    sync: Mapping[int, float] | None = None,
) -> Track | None:
    """Choose the subject's track.

    Args:
        tracks: Candidate tracks.
        strategy: ``longest`` (most frames with a box; ties: larger), ``largest`` (median box area; ties:
            longer), ``first`` (earliest start; ties: longer) or ``speaking`` (highest ``sync`` score; tracks
            without a score come last, then as ``longest``).
        n_frames: Clip length (for the frame count of ``longest``); 0 uses the last detected frame + 1.
        detect_every: Detection stride the tracks were built with.
        sync: Track id -> :func:`speech_sync` score (``speaking`` only).

    Returns:
        The chosen track, or ``None`` when there is none.
    """
    if not tracks:
        return None
    n = n_frames or max(t.end for t in tracks) + 1
    length = {t.track_id: track_length(t, n, detect_every) for t in tracks}
    if strategy == "speaking":
        scores = {k: v for k, v in (sync or {}).items() if math.isfinite(v)}
        key = lambda t: (scores.get(t.track_id, -math.inf), length[t.track_id], t.median_area)  # noqa: E731
    elif strategy == "longest":
        key = lambda t: (length[t.track_id], t.median_area, -t.start)  # noqa: E731
    elif strategy == "largest":
        key = lambda t: (t.median_area, length[t.track_id], -t.start)  # noqa: E731
    elif strategy == "first":
        key = lambda t: (-t.start, length[t.track_id], t.median_area)  # noqa: E731
    else:
        raise ValueError(f"unknown select_strategy {strategy!r}")
    return max(tracks, key=key)


def detection_frames(n_frames: int, detect_every: int) -> list[int]:
    """Frames the detector runs on: every ``detect_every``-th one and always the last."""
    frames = list(range(0, n_frames, detect_every))
    if n_frames and frames[-1] != n_frames - 1:
        frames.append(n_frames - 1)
    return frames

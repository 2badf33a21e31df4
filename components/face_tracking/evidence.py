"""When a clip carries evidence for a lip-sync verdict: one rule for face_tracking, training, evaluate and serving.

A real/fake verdict compares a mouth with a voice over at least one analysis window. A clip without an audio
track, without a usable face track or shorter than one window carries no such evidence: serving refuses to judge it
(HTTP 422 with the reason, or a verdict marked ``inconclusive``), finetune_lipsync does not train on it and evaluate
does not score it. A face track is usable when the subject's face is at least ``face_tracking.min_face_px`` wide in
the source video's pixels (the dense frames are rescaled, so a 16 px clip's "face" fills them) and its detections
score ``face_tracking.min_face_score`` on average (MediaPipe scores random-noise clips 0.50 to 0.77, the demo's real
face 0.86 to 0.94: measured on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Reason codes, in the order they are reported.
NO_AUDIO = "no_audio"
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
FACE_LOW_CONFIDENCE = "face_low_confidence"
TOO_SHORT = "too_short"


@dataclass(frozen=True)
class Evidence:
    """What a clip offers a lip-sync verdict.

    Attributes:
        has_audio: The video has an audio track.
        faces_seen: Most faces found in one frame.
        fallback_used: No face track was found (the crops are the frame centre).
        face_px: Median side of the subject's face box in source-video pixels (0 without a face track).
        face_score: Mean detector score of the subject's detections (0 without a face track).
        duration_s: Analysed duration (the dense clip: frames / fps).
    """

    has_audio: bool
    faces_seen: int
    fallback_used: bool
    face_px: float
    face_score: float
    duration_s: float


@dataclass(frozen=True)
class Problem:
    """Why a clip cannot be judged: a reason code and a sentence."""

    code: str
    detail: str


@dataclass(frozen=True)
class EvidenceRules:
    """The thresholds a clip must meet.

    Attributes:
        window_s: The detector's analysis window in seconds.
        min_face_px: ``face_tracking.min_face_px``.
        min_face_score: ``face_tracking.min_face_score``.
    """

    window_s: float
    min_face_px: float
    min_face_score: float

    @classmethod
    def of(cls, window_s: float, face_config: Any) -> EvidenceRules:
        """The rules of a detector with ``window_s`` and a client's ``FaceTrackingConfig``."""
        return cls(float(window_s), float(face_config.min_face_px), float(face_config.min_face_score))

    def problems(self, evidence: Evidence) -> list[Problem]:
        """Every reason the clip cannot be judged, in reporting order (empty: it can)."""
        found = []
        if not evidence.has_audio:
            found.append(Problem(NO_AUDIO, "the video has no audio track"))
        if evidence.fallback_used or evidence.face_px <= 0:
            found.append(Problem(NO_FACE, "no face track was found"))
        else:
            if evidence.face_px < self.min_face_px:
                detail = f"the face is {evidence.face_px:.0f} px wide; at least {self.min_face_px:g} px are needed"
                found.append(Problem(FACE_TOO_SMALL, detail))
            if evidence.face_score < self.min_face_score:
                detail = f"the face detections score {evidence.face_score:.2f}; at least {self.min_face_score:g} needed"
                found.append(Problem(FACE_LOW_CONFIDENCE, detail))
        if evidence.duration_s + 1e-6 < self.window_s:
            detail = f"{evidence.duration_s:.2f} s analysed, shorter than one {self.window_s:g} s window"
            found.append(Problem(TOO_SHORT, detail))
        return found

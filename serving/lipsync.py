"""lipsync predictor: is this talking-head video real or AI lip-synced?

The request's video goes through the training code path: frame_extraction's dense clip where the audio is most
energetic and its 16 kHz audio (:func:`extract_analysis_clip`: the same reader and scaling as training's
``extract_video``, but only the analysis window is decoded, with the server's ``threads``), face_tracking's
``track_video`` (MediaPipe detection, IoU tracks, subject selection, aligned mouth crops) and finetune_lipsync's
``predict_video`` (windows, per-window scores, aggregation, threshold). The answer carries the seed's fields
``is_real``, ``is_fake``, ``confidence`` (probability of real) and ``manipulation_probability``, plus ``verdict``
(``real``/``fake``), which face track was judged, the evidence (``has_audio``, ``faces_seen``, ``fallback_used``,
the subject's face size and detector score, the analysed duration) and the per-window scores.

A video without that evidence (no audio track, no usable face track, shorter than one analysis window: the rules
of :mod:`components.face_tracking.evidence`, the same training and evaluate apply) gets no verdict: HTTP 422 /
gRPC FAILED_PRECONDITION with the reason codes and the evidence, or, with ``serving.inconclusive_verdicts``,
HTTP 200 with ``verdict: inconclusive`` and the reason.

Inputs (checked in ``preprocess``): V1 ``{"instances": [{"video_b64": "..."}]}``, V2 BYTES ``video`` ``[1]``
(REST: base64 text, or the raw file with the binary data extension; gRPC: raw bytes), and the seed's
``POST /api/lip-sync`` multipart ``video_file`` (serving/routes.py). Limits: ``max_upload_mb``,
``max_duration_s`` and ``max_video_pixels`` (HTTP 413; the frame size is read from the stream header before any
frame is decoded); content checked by decoding (HTTP 400 with FFmpeg's reason, never a server path).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.config import ServingConfig
from serving.errors import NoEvidence, PayloadTooLarge
from serving.kserve_adapter import InferRequest, InferResponse, InvalidInput, Model, input_tensor, output, v2_response

if TYPE_CHECKING:
    from components.common.media import MediaInfo

logger = logging.getLogger("clipsync.serving.lipsync")

#: The V2 tensors of a lip-sync model (``GET /v2/models/<name>``).
INPUTS = [{"name": "video", "datatype": "BYTES", "shape": [1]}]
OUTPUTS = [
    {"name": "verdict", "datatype": "BYTES", "shape": [1]},
    {"name": "reason", "datatype": "BYTES", "shape": [1]},
    {"name": "is_real", "datatype": "BOOL", "shape": [1]},
    {"name": "is_fake", "datatype": "BOOL", "shape": [1]},
    {"name": "confidence", "datatype": "FP32", "shape": [1]},
    {"name": "manipulation_probability", "datatype": "FP32", "shape": [1]},
    {"name": "face_track", "datatype": "INT32", "shape": [1]},
    {"name": "faces_seen", "datatype": "INT32", "shape": [1]},
    {"name": "fallback_used", "datatype": "BOOL", "shape": [1]},
    {"name": "has_audio", "datatype": "BOOL", "shape": [1]},
    {"name": "analyzed_duration_s", "datatype": "FP32", "shape": [1]},
    {"name": "window_probabilities", "datatype": "FP32", "shape": [-1]},
    {"name": "window_starts_s", "datatype": "FP32", "shape": [-1]},
]


_TORCH_THREADS = threading.Lock()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread (the process' count is restored after it).

    A request's windows (5 for a 3 s clip) are too little work to split: with ``serving.threads`` (2) torch threads
    the detector took 2.6x the wall time and 2.9x the CPU time of one thread at load average 5 on the shared 2-core
    machine, 5.8x and 8.6x at load 14 (its threads spin waiting for each other). torch's count is process-wide: the
    lock keeps concurrent requests from restoring each other's value.
    """
    import torch

    with _TORCH_THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


#: What the client is told for each way an upload fails to be a video (the media probe's codes).
_NOT_A_VIDEO = {
    "not_media": "not a decodable video file",
    "no_video_stream": "the file has no video stream",
    "undecodable": "corrupt video: no frame could be decoded",
}


def probe_video(path: Path, max_duration_s: float, max_pixels: int = 2**31) -> MediaInfo:
    """Check by decoding that ``path`` is a video within the limits (the probe ingest uses).

    The frame size and duration come from the headers, before any frame is decoded.

    Raises:
        InvalidInput: Not a media file, no video stream, or no frame decodes (with FFmpeg's reason).
        PayloadTooLarge: Longer than ``max_duration_s``, or frames larger than ``max_pixels``.
    """
    from components.common.media import MediaError, probe_media

    def within_limits(width: int, height: int, duration_s: float) -> None:
        if width * height > max_pixels:
            raise PayloadTooLarge(f"video frames are {width}x{height} px; the limit is {max_pixels} pixels")
        if duration_s > max_duration_s:
            raise PayloadTooLarge(f"video is {duration_s:.1f} s long; the limit is {max_duration_s:g} s")

    try:
        return probe_media(path, within_limits)
    except MediaError as exc:  # FFmpeg's reason; the server's temporary path is never in the answer
        detail = exc.detail.replace(str(path), "upload")
        raise InvalidInput(f"{_NOT_A_VIDEO[exc.code]}: {detail}") from None


def extract_analysis_clip(path: Path, config: Any, threads: int) -> Any:
    """The dense clip (``config.dense_seconds`` where the audio is loudest) and the audio of a checked video.

    Training's ``extract_video`` also takes search frames at 1 fps, which walk the whole file; a lip-sync request
    uses none of them. Here the reader seeks to the keyframe at or before the window, decodes to the window's end
    and stops: the frames, their times and their scaling are those training takes (the same reader).

    Args:
        path: A video :func:`probe_video` accepted.
        config: The predictor's ``FrameExtractionConfig``.
        threads: Decoder threads (frame and slice threading, as the stream allows).

    Returns:
        ``ExtractedVideo`` with ``dense_frames``, ``dense_fps``, ``dense_start_s``, ``audio``, the display size
        and ``decoded_frames``; ``status`` ``rejected`` with the reason when no frame of the window decodes.
    """
    import av

    from components.common.media import stream_timing
    from components.frame_extraction.core import ExtractedVideo, keep_dense_clip
    from components.frame_extraction.decode import (
        Reader,
        StopDecode,
        Sweep,
        decode_audio,
        dense_window,
        set_decoder_threads,
    )

    video = ExtractedVideo(video_id="upload")
    audio, audio_error = decode_audio(path, config.audio_rate)
    if audio_error:
        logger.warning("lipsync: %s", audio_error)
    video.audio = audio if audio is not None and audio.size else None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        threads = set_decoder_threads(stream, threads)
        timing = stream_timing(container, stream)
        start, duration = timing.start_s, max(0.0, timing.duration_s or 0.0)
        video.native_fps, video.duration_s = timing.fps or 0.0, duration
        sweep = Sweep(Reader(container, stream, video.native_fps, threads), stream, config)
        try:
            sweep.run([], dense_window(video.audio, start, duration, config))
        except StopDecode as exc:  # keep the frames before the error; none at all is a rejection below
            logger.warning("lipsync: decoding stopped: %s", exc.detail)
            video.reason = f"decode_error: {exc.detail}"
    video.decoded_frames = sweep.reader.decoded
    if sweep.geometry is not None:
        video.width, video.height, video.rotation = sweep.geometry
    if not sweep.dense:
        video.status = "rejected"
        video.reason = video.reason or "no_frames: no frame of the analysis window decoded"
        return video
    keep_dense_clip(video, sweep, video.native_fps)
    return video


def check_video(data: bytes, settings: ServingConfig) -> bytes:
    """The upload's size checks (before any decoding).

    Raises:
        InvalidInput: Empty.
        PayloadTooLarge: Over ``max_upload_mb``.
    """
    if not data:
        raise InvalidInput("the video is empty")
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"video is {len(data) / 1048576:.1f} MiB; the limit is {settings.max_upload_mb:g} MiB")
    return data


def _decode_b64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise InvalidInput(f"{where}: expected the video as a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: invalid base64") from None


def _looks_b64(raw: bytes) -> bool:
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass
class VideoRequest:
    """A checked lip-sync request: the video and how to answer."""

    video: bytes
    v2: InferRequest | None = None


class LipSyncModel(Model):
    """The lipsync predictor of one client (model name ``lipsync-<client>``)."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        settings: ServingConfig | None = None,
        frame_config: Any = None,
        face_config: Any = None,
        cache_dir: str | Path | None = None,
        version: str = "",
        device: str | None = None,
    ) -> None:
        super().__init__(name)
        from components.face_tracking.config import FaceTrackingConfig
        from components.frame_extraction.config import FrameExtractionConfig

        self.model_dir = Path(model_dir)
        self.settings = settings or ServingConfig()
        self.frame_config = frame_config or FrameExtractionConfig()  # its dense clip and audio settings
        self.face_config = face_config or FaceTrackingConfig()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.version = version
        self.device = device or self.settings.device  # the detector's device; face tracking runs on the CPU
        self.model = None
        self.face_models: list[Any] = []  # one MediaPipe set per thread that detects (serving.threads)
        self.rules = None
        self._face_lock = threading.Lock()  # MediaPipe task objects are not re-entrant

    def load(self) -> bool:
        from components.common.device import resolve_device
        from components.face_tracking.detect import FaceModels
        from components.face_tracking.evidence import EvidenceRules
        from components.face_tracking.models import verify_face_models
        from components.finetune_lipsync.model import load_model

        self.model = load_model(self.model_dir, resolve_device(self.device))
        self.rules = EvidenceRules.of(self.model.config.window_s, self.face_config)
        if self.cache_dir is None:
            raise FileNotFoundError(f"{self.name}: a cache_dir with the MediaPipe face models is required")
        paths = verify_face_models(self.cache_dir)
        self.face_models = [FaceModels(paths, self.face_config) for _ in range(self.settings.cpu_threads)]
        self.ready = True
        logger.info("%s: lip-sync model loaded from %s", self.name, self.model_dir)
        return self.ready

    def stop(self) -> None:
        self.ready = False
        for models in self.face_models:
            models.close()
        self.face_models = []

    def get_input_types(self) -> list[dict]:
        return INPUTS

    def get_output_types(self) -> list[dict]:
        return OUTPUTS

    # ------------------------------------------------------------------ analysis (worker thread)
    def analyze_file(self, path: Path) -> dict[str, Any]:
        """Judge one local video file (validated by decoding first); :class:`NoEvidence` when it cannot be."""
        from components.face_tracking.core import clip_audio, subject_face, track_video
        from components.face_tracking.evidence import Evidence
        from components.finetune_lipsync.model import predict_video

        started = time.perf_counter()
        duration = probe_video(path, self.settings.max_duration_s, self.settings.max_video_pixels).duration_s
        video = extract_analysis_clip(path, self.frame_config, self.settings.cpu_threads)
        if video.status != "ok" or video.dense_frames.size == 0:
            why = (video.reason or "no frames around speech").replace(str(path), "the upload")
            raise InvalidInput(f"video could not be analysed: {why}")
        fps = float(video.dense_fps)
        has_audio = video.audio is not None
        audio = clip_audio(
            video.audio if has_audio else np.zeros(0, np.float32), video.dense_start_s, len(video.dense_frames), fps
        )
        with self._face_lock:
            faces = track_video(
                video.dense_frames, fps, self.face_config, self.face_models, audio if has_audio else None
            )
        dense_side = max(video.dense_frames.shape[1:3])
        face_px, face_score = subject_face(faces, (max(video.width, video.height) or dense_side) / dense_side)
        analysed_s = faces.n_frames / fps if fps > 0 else 0.0
        evidence = Evidence(has_audio, faces.faces_seen, bool(faces.fallback_used), face_px, face_score, analysed_s)
        track_id = -1 if faces.selected is None else faces.selected.track_id
        facts = {
            "face_track": track_id,
            "faces_seen": faces.faces_seen,
            "n_tracks": len(faces.tracks),
            "fallback_used": evidence.fallback_used,
            "has_audio": has_audio,
            "face_px": face_px,
            "face_score": face_score,
            "analyzed": {
                "start_s": round(video.dense_start_s, 3),
                "frames": faces.n_frames,
                "fps": round(fps, 3),
                "duration_s": round(evidence.duration_s, 3),
                "video_duration_s": round(duration, 3),
            },
        }
        problems = self.rules.problems(evidence)
        if problems:
            codes = [p.code for p in problems]
            summary = "; ".join(f"{p.code} ({p.detail})" for p in problems)
            if not self.settings.inconclusive_verdicts:
                raise NoEvidence(f"no verdict: {summary}", extra={"reason": codes[0], "reasons": codes, **facts})
            verdict = {"verdict": "inconclusive", "reason": codes[0], "reasons": codes, "detail": summary}
            return {**verdict, "is_real": False, "is_fake": False, **facts, "windows": [], "seconds": _since(started)}
        with one_torch_thread():
            score = predict_video(self.model, faces.crops[track_id], audio, fps)
        p_fake = float(score.probability)
        return {
            "verdict": "fake" if score.is_fake else "real",
            "reason": "",
            "is_real": not score.is_fake,
            "is_fake": bool(score.is_fake),
            "confidence": round(1.0 - p_fake, 6),
            "manipulation_probability": round(p_fake, 6),
            "threshold": score.threshold,
            **facts,
            "windows": [
                {"start_s": round(s, 3), "manipulation_probability": round(p, 6)}
                for s, p in zip(score.window_starts_s, score.window_probabilities, strict=True)
            ],
            "seconds": _since(started),
        }

    def analyze_bytes(self, data: bytes) -> dict[str, Any]:
        """Judge a video given as bytes (written to a private temporary file, removed afterwards)."""
        with tempfile.TemporaryDirectory(prefix="clipsync-lipsync-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            return self.analyze_file(path)

    async def analyze(self, data: bytes) -> dict[str, Any]:
        """Judge checked video bytes (:func:`check_video`) in a worker thread (the caller sets the deadline)."""
        result = await asyncio.to_thread(self.analyze_bytes, data)
        logger.info(
            "%s: %s, p_fake %s, track %s, %.2f s",
            self.name,
            result["verdict"],
            result.get("manipulation_probability"),
            result["face_track"],
            result["seconds"],
        )
        return result

    # ------------------------------------------------------------------ protocols
    async def preprocess(self, payload: Any, headers: dict | None = None) -> VideoRequest:
        """The request's video, checked: one video, base64 or raw bytes, within the size limit."""
        if isinstance(payload, InferRequest):
            inputs = {inp.name: inp for inp in payload.inputs}
            if set(inputs) != {"video"}:
                raise InvalidInput(f"expected one input 'video' (BYTES [1]), got {sorted(inputs)[:5]}")
            unknown = sorted({o.name for o in payload.request_outputs or []} - {o["name"] for o in OUTPUTS})
            if unknown:
                raise InvalidInput(f"unknown output(s) {unknown[:5]}")
            values = input_tensor(inputs["video"], ("BYTES",), 1).reshape(-1)
            if len(values) != 1:
                raise InvalidInput(f"input 'video' must hold exactly one video, got {len(values)}")
            raw = values[0]
            if isinstance(raw, str):  # REST JSON carries strings: base64
                raw = await asyncio.to_thread(_decode_b64, raw, "video")
            elif not payload.from_grpc and _looks_b64(raw):
                raw = base64.b64decode(raw)  # base64 text sent as BYTES; a real video is never valid base64
            return VideoRequest(check_video(bytes(raw), self.settings), payload)
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object with 'instances'")
        instances = payload.get("instances")
        if not isinstance(instances, list) or len(instances) != 1:
            raise InvalidInput("expected 'instances' with exactly one {\"video_b64\": ...}")
        inst = instances[0]
        if not isinstance(inst, dict) or "video_b64" not in inst:
            raise InvalidInput("instance 0: missing 'video_b64'")
        video = await asyncio.to_thread(_decode_b64, inst["video_b64"], "instance 0")
        return VideoRequest(check_video(video, self.settings))

    async def predict(self, payload: VideoRequest, headers: dict | None = None, response_headers: dict | None = None):
        result = await self.analyze(payload.video)
        if payload.v2 is None:
            return {"predictions": [result]}
        return self._v2_response(payload.v2, result)

    def _v2_response(self, request: InferRequest, r: dict[str, Any]) -> InferResponse:
        outputs = [
            output("verdict", np.array([r["verdict"].encode()], dtype=np.object_)),
            output("reason", np.array([r["reason"].encode()], dtype=np.object_)),
            output("is_real", np.array([r["is_real"]])),
            output("is_fake", np.array([r["is_fake"]])),
            output("face_track", np.array([r["face_track"]], dtype=np.int32)),
            output("faces_seen", np.array([r["faces_seen"]], dtype=np.int32)),
            output("fallback_used", np.array([r["fallback_used"]])),
            output("has_audio", np.array([r["has_audio"]])),
            output("analyzed_duration_s", np.array([r["analyzed"]["duration_s"]], dtype=np.float32)),
        ]
        if r["verdict"] != "inconclusive":
            outputs += [
                output("confidence", np.array([r["confidence"]], dtype=np.float32)),
                output("manipulation_probability", np.array([r["manipulation_probability"]], dtype=np.float32)),
                output(
                    "window_probabilities",
                    np.array([w["manipulation_probability"] for w in r["windows"]], dtype=np.float32),
                ),
                output("window_starts_s", np.array([w["start_s"] for w in r["windows"]], dtype=np.float32)),
            ]
        return v2_response(request, self.name, self.version, outputs)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)

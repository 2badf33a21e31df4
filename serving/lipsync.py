"""lipsync predictor: is this talking-head video real or AI lip-synced?

The request's video goes through the training code path: frame_extraction's ``extract_video`` (dense clip where
the audio is most energetic, 16 kHz audio), face_tracking's ``track_video`` (MediaPipe detection, IoU tracks,
subject selection, aligned mouth crops, centre-crop fallback) and finetune_lipsync's ``predict_video`` (windows,
per-window scores, aggregation, threshold). The answer carries the seed's fields ``is_real``, ``is_fake``,
``confidence`` (probability of real) and ``manipulation_probability``, plus which face track was judged, whether the
centre-crop fallback was used, and the per-window scores.

Inputs: V1 ``{"instances": [{"video_b64": "..."}]}``, V2 BYTES ``video`` ``[1]`` (REST: base64 string or the
binary extension; gRPC: raw bytes), and the seed's ``POST /api/lip-sync`` multipart ``video_file`` (serving/server.py).
Limits: ``max_upload_mb`` and ``max_duration_s`` (HTTP 413), content checked by decoding (HTTP 400 with the reason),
``request_timeout_s`` (HTTP 504; the worker thread finishes in the background, its result is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.config import ServingConfig
from serving.kserve_adapter import InferenceError, InferOutput, InferRequest, InferResponse, InvalidInput, Model

if TYPE_CHECKING:
    from components.common.media import MediaInfo

logger = logging.getLogger("clipsync.serving.lipsync")


class PayloadTooLarge(InvalidInput):
    """The upload is larger or longer than the configured limits (HTTP 413)."""


class RequestTimeout(InferenceError):
    """The analysis took longer than ``request_timeout_s`` (HTTP 504)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, status="504")


#: What the client is told for each way an upload fails to be a video (the media probe's codes).
_NOT_A_VIDEO = {
    "not_media": "not a decodable video file",
    "no_video_stream": "the file has no video stream",
    "undecodable": "corrupt video: no frame could be decoded",
}


def probe_video(path: Path, max_duration_s: float) -> MediaInfo:
    """Check by decoding that ``path`` is a video no longer than ``max_duration_s`` (the probe ingest uses).

    Raises:
        InvalidInput: Not a media file, no video stream, or no frame decodes (with FFmpeg's reason).
        PayloadTooLarge: Longer than ``max_duration_s``.
    """
    from components.common.media import MediaError, probe_media

    try:
        info = probe_media(path)
    except MediaError as exc:
        raise InvalidInput(f"{_NOT_A_VIDEO[exc.code]}: {exc.detail}") from None
    if info.duration_s > max_duration_s:
        raise PayloadTooLarge(f"video is {info.duration_s:.1f} s long; the limit is {max_duration_s:g} s")
    return info


def _decode_b64(data: Any, where: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if not isinstance(data, str) or not data:
        raise InvalidInput(f"{where}: expected the video as a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{where}: invalid base64: {exc}") from None


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
        # Every uploaded video gets a dense clip (training takes one only for authenticity-labelled videos).
        base = frame_config or FrameExtractionConfig()
        self.frame_config = FrameExtractionConfig(**{**base.__dict__, "dense_all": True, "workers": 1})
        self.face_config = face_config or FaceTrackingConfig()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.version = version
        self.device = device or self.settings.device  # the detector's device; face tracking runs on the CPU
        self.model = None
        self.face_models = None
        self._face_lock = threading.Lock()  # MediaPipe task objects are not re-entrant

    def load(self) -> bool:
        from components.common.device import resolve_device
        from components.face_tracking.detect import FaceModels
        from components.face_tracking.models import verify_face_models
        from components.finetune_lipsync.model import load_model

        self.model = load_model(self.model_dir, resolve_device(self.device))
        if self.cache_dir is None:
            raise FileNotFoundError(f"{self.name}: a cache_dir with the MediaPipe face models is required")
        self.face_models = FaceModels(verify_face_models(self.cache_dir), self.face_config)
        self.ready = True
        logger.info("%s: lip-sync model loaded from %s", self.name, self.model_dir)
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.face_models is not None:
            self.face_models.close()
            self.face_models = None

    # ------------------------------------------------------------------ analysis (worker thread)
    def analyze_file(self, path: Path) -> dict[str, Any]:
        """Score one local video file (validated by decoding first)."""
        from components.common.manifest import VideoRecord
        from components.face_tracking.core import clip_audio, track_video
        from components.finetune_lipsync.model import predict_video
        from components.frame_extraction.core import extract_video

        started = time.perf_counter()
        duration = probe_video(path, self.settings.max_duration_s).duration_s
        record = VideoRecord(
            video_id="upload", key="upload", uri=str(path), sha256="", size_bytes=0, uploaded_at="", status="accepted"
        )
        video = extract_video(path, record, self.frame_config)
        if video.status != "ok" or video.dense_frames.size == 0:
            raise InvalidInput(f"video could not be analysed: {video.reason or 'no frames around speech'}")
        fps = float(video.dense_fps)
        has_audio = video.audio is not None
        audio = clip_audio(
            video.audio if has_audio else np.zeros(0, np.float32), video.dense_start_s, len(video.dense_frames), fps
        )
        with self._face_lock:
            faces = track_video(
                video.dense_frames, fps, self.face_config, self.face_models, audio if has_audio else None
            )
        track_id = -1 if faces.selected is None else faces.selected.track_id
        score = predict_video(self.model, faces.crops[track_id], audio, fps)
        p_fake = float(score.probability)
        return {
            "is_real": not score.is_fake,
            "is_fake": bool(score.is_fake),
            "confidence": round(1.0 - p_fake, 6),
            "manipulation_probability": round(p_fake, 6),
            "threshold": score.threshold,
            "face_track": track_id,
            "faces_seen": faces.faces_seen,
            "n_tracks": len(faces.tracks),
            "fallback_used": bool(faces.fallback_used),
            "has_audio": video.has_audio,
            "windows": [
                {"start_s": round(s, 3), "manipulation_probability": round(p, 6)}
                for s, p in zip(score.window_starts_s, score.window_probabilities, strict=True)
            ],
            "analyzed": {
                "start_s": round(video.dense_start_s, 3),
                "frames": faces.n_frames,
                "fps": round(fps, 3),
                "video_duration_s": round(duration, 3),
            },
            "seconds": round(time.perf_counter() - started, 3),
        }

    def analyze_bytes(self, data: bytes) -> dict[str, Any]:
        """Score a video given as bytes (written to a private temporary file, removed afterwards)."""
        with tempfile.TemporaryDirectory(prefix="clipsync-lipsync-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            return self.analyze_file(path)

    async def analyze(self, data: bytes) -> dict[str, Any]:
        """Check the size, then score in a worker thread under the request timeout."""
        if not data:
            raise InvalidInput("the video is empty")
        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"video is {len(data) / 1048576:.1f} MiB; the limit is {self.settings.max_upload_mb:g} MiB"
            )
        timeout = self.settings.request_timeout_s
        try:
            result = await asyncio.wait_for(asyncio.to_thread(self.analyze_bytes, data), timeout)
        except TimeoutError:
            raise RequestTimeout(f"analysis took longer than {timeout:g} s") from None
        logger.info(
            "%s: p_fake %.3f, track %s, fallback %s, %.2f s",
            self.name,
            result["manipulation_probability"],
            result["face_track"],
            result["fallback_used"],
            result["seconds"],
        )
        return result

    # ------------------------------------------------------------------ protocols
    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None) -> Any:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if not isinstance(payload, dict):
            raise InvalidInput(f"unsupported request type {type(payload).__name__}")
        instances = payload.get("instances")
        if not isinstance(instances, list) or len(instances) != 1:
            raise InvalidInput("expected 'instances' with exactly one {\"video_b64\": ...}")
        inst = instances[0]
        if not isinstance(inst, dict) or "video_b64" not in inst:
            raise InvalidInput("instance 0: missing 'video_b64'")
        return {"predictions": [await self.analyze(_decode_b64(inst["video_b64"], "instance 0"))]}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        inputs = {inp.name: inp for inp in request.inputs}
        if set(inputs) != {"video"}:
            raise InvalidInput(f"expected one input 'video' (BYTES [1]), got {sorted(inputs)}")
        inp = inputs["video"]
        if inp.datatype != "BYTES":
            raise InvalidInput(f"input 'video' must be BYTES, got {inp.datatype}")
        values = inp.as_numpy().reshape(-1)
        if len(values) != 1:
            raise InvalidInput(f"input 'video' must hold exactly one video, got {len(values)}")
        raw = values[0]
        if isinstance(raw, str):  # REST JSON carries strings: base64
            raw = _decode_b64(raw, "video")
        elif not request.from_grpc and isinstance(raw, bytes) and _looks_b64(raw):
            raw = base64.b64decode(raw)  # a base64 text sent as BYTES over REST; a real video is never valid base64
        r = await self.analyze(bytes(raw))
        probs = np.array([w["manipulation_probability"] for w in r["windows"]], dtype=np.float32)
        starts = np.array([w["start_s"] for w in r["windows"]], dtype=np.float32)
        outputs = [
            _out("is_real", np.array([r["is_real"]])),
            _out("is_fake", np.array([r["is_fake"]])),
            _out("confidence", np.array([r["confidence"]], dtype=np.float32)),
            _out("manipulation_probability", np.array([r["manipulation_probability"]], dtype=np.float32)),
            _out("face_track", np.array([r["face_track"]], dtype=np.int32)),
            _out("fallback_used", np.array([r["fallback_used"]])),
            _out("window_probabilities", probs),
            _out("window_starts_s", starts),
        ]
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs)


def _looks_b64(raw: bytes) -> bool:
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _out(name: str, array: np.ndarray) -> InferOutput:
    from serving.kserve_adapter import from_np_dtype

    out = InferOutput(name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype))
    out.set_data_from_numpy(array, binary_data=False)
    return out

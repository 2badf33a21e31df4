"""clip-search predictor: text-to-video search over one client's library with that client's CLIP adapter.

Many clients share one base CLIP (:mod:`serving.clip_backbones`): each client's LoRA adapter is attached to it.

Inputs (see ``serving/README.md``):

- V1 ``{"instances": [{"text": "...", "top_k": 5}]}``; an instance ``{"text": "...", "output": "text_embedding"}``
  returns the raw text vector, ``{"image_b64": "<png/jpeg base64>"}`` the image vector.
- V2 (REST and gRPC): BYTES ``text`` ``[Q]``, optional INT32/INT64 ``top_k`` ``[1]``; outputs ``video_ids``
  (BYTES ``[Q, k]``), ``scores`` (FP32 cosine ``[Q, k]``), ``confidence`` (FP32 ``[Q]``), ``low_confidence``
  (BOOL ``[Q]``), ``query_id`` (BYTES ``[Q]``) and, when requested, ``text_embedding`` (FP32 ``[Q, D]``). UINT8
  ``image`` ``[N, H, W, 3]`` gives ``image_embedding``.
- Feedback (V2, REST and gRPC; ``POST /api/feedback`` is the JSON form): BYTES ``query_id``, BYTES ``video_id``,
  BOOL ``relevant`` and optional BYTES ``label``, each ``[N]``; outputs ``feedback_id`` (BYTES ``[N]``) and
  ``query_known`` (BOOL ``[N]``), once the answers are stored (:mod:`serving.feedback`).

Every search answer carries a ``query_id``: the query log entry's id, which feedback names.

``confidence`` is P(the top-1 video is relevant) from the Platt calibrator fitted when the index was built
(:mod:`serving.calibration`), never the raw cosine similarity.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching import BatchSettings, DynamicBatcher
from serving.calibration import Calibrator
from serving.clip_backbones import ClipBackbones, ClipHandle
from serving.config import ServingConfig
from serving.errors import NotReady, PayloadTooLarge
from serving.feedback import MAX_ITEMS, Feedback, FeedbackLog, caller_key, check_feedback, feedback_entry
from serving.index import VideoIndex
from serving.kserve_adapter import (
    InferInput,
    InferRequest,
    InferResponse,
    InvalidInput,
    Model,
    input_tensor,
    input_text,
    output,
    requested_outputs,
    short,
    v2_response,
)
from serving.querylog import QueryLog

logger = logging.getLogger("clipsync.serving.clip_search")

INDEX_DIR = "index"
CALIBRATION_FILE = "calibration.json"
MAX_TOP_K = 100
MAX_QUERIES = 256
MAX_TEXT_CHARS = 1000
#: The V2 tensors of a clip-search model (``GET /v2/models/<name>``; ``-1``: any size).
INPUTS = [
    {"name": "text", "datatype": "BYTES", "shape": [-1]},
    {"name": "top_k", "datatype": "INT32", "shape": [1]},
    {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
    {"name": "query_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "video_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "relevant", "datatype": "BOOL", "shape": [-1]},
    {"name": "label", "datatype": "BYTES", "shape": [-1]},
]
FEEDBACK_INPUTS = frozenset({"query_id", "video_id", "relevant", "label"})
#: Searches a model remembers (query id -> text and results) to check and describe feedback on them.
RECENT_QUERIES = 50_000
OUTPUTS = [
    {"name": "video_ids", "datatype": "BYTES", "shape": [-1, -1]},
    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "confidence", "datatype": "FP32", "shape": [-1]},
    {"name": "low_confidence", "datatype": "BOOL", "shape": [-1]},
    {"name": "text_embedding", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "image_embedding", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "query_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "feedback_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "query_known", "datatype": "BOOL", "shape": [-1]},
]


# ------------------------------------------------------------------------------------------- predictor


def _fallback_calibrator() -> Calibrator:
    """No calibration data: confidence 0.5 for every query, flagged ``calibrated: false``."""
    return Calibrator(weights=(0.0, 0.0, 0.0), n_queries=0)


@dataclass
class SearchResult:
    ids: list[str]
    scores: list[float]
    confidence: float
    embedding: np.ndarray
    query_id: str = ""


def _check_text(text: Any, where: str) -> str:
    text = input_text(text, "text", where)
    if not text:
        raise InvalidInput(f"{where}: 'text' is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where}: 'text' is longer than {MAX_TEXT_CHARS} characters")
    return text


def _check_top_k(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{where}: 'top_k' must be an integer")
    if not 1 <= int(value) <= MAX_TOP_K:
        raise InvalidInput(f"{where}: 'top_k' must be 1..{MAX_TOP_K}, got {short(int(value))[:24]}")
    return int(value)


def decode_image(data: Any, where: str, max_pixels: int) -> np.ndarray:
    """A base64 PNG/JPEG as RGB uint8, its size checked from the header before any pixel is decoded.

    Raises:
        InvalidInput: Not base64, not an image, or a truncated one.
        PayloadTooLarge: More than ``max_pixels`` (width x height; what is left of the request's limit).
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str):
        raise InvalidInput(f"{where}: 'image_b64' must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise InvalidInput(f"{where}: 'image_b64' is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"{where}: the image is {width}x{height} px; the limit is {max_pixels} pixels")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"{where}: the image is larger than {max_pixels} pixels") from None
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"{where}: 'image_b64' is not a decodable PNG/JPEG image ({type(exc).__name__})") from None


def _parse_v2_feedback(inputs: dict[str, InferInput]) -> list[Feedback]:
    """Feedback answers from V2 tensors: BYTES ``query_id``, ``video_id``, BOOL ``relevant``, BYTES ``label``."""
    missing = [n for n in ("query_id", "video_id", "relevant") if n not in inputs]
    if missing:
        raise InvalidInput(f"feedback needs the inputs 'query_id', 'video_id' and 'relevant'; missing {missing}")
    qids = input_tensor(inputs["query_id"], ("BYTES",), MAX_ITEMS).reshape(-1)
    vids = input_tensor(inputs["video_id"], ("BYTES",), MAX_ITEMS).reshape(-1)
    rel = input_tensor(inputs["relevant"], ("BOOL",), MAX_ITEMS).reshape(-1)
    labels = input_tensor(inputs["label"], ("BYTES",), MAX_ITEMS).reshape(-1) if "label" in inputs else None
    n = len(qids)
    if n == 0 or len(vids) != n or len(rel) != n or (labels is not None and len(labels) != n):
        raise InvalidInput(f"the feedback inputs must hold the same number (1..{MAX_ITEMS}) of answers")
    return [
        check_feedback(qids[i], vids[i], bool(rel[i]), labels[i] if labels is not None else "", f"feedback[{i}]")
        for i in range(n)
    ]


@dataclass
class SearchRequest:
    """A checked clip-search request: what to search and embed, and how to answer.

    Attributes:
        searches: (position, text, k) of each text query.
        text_embeddings: (position, text) of each text asking for its raw vector (V1).
        images: (position, RGB uint8 [H, W, 3]) of each image.
        feedback: Feedback answers (a V2 feedback request: nothing is searched).
        v2: The V2 request (REST or gRPC) it came from; ``None`` for V1.
        size: Number of V1 instances.
        wanted: Output names a V2 request asked for (empty: the default outputs).
    """

    searches: list[tuple[int, str, int]] = field(default_factory=list)
    text_embeddings: list[tuple[int, str]] = field(default_factory=list)
    images: list[tuple[int, np.ndarray]] = field(default_factory=list)
    v2: InferRequest | None = None
    size: int = 0
    wanted: set[str] = field(default_factory=set)
    feedback: list[Feedback] = field(default_factory=list)


class ClipSearchModel(Model):
    """The clip-search predictor of one client (model name ``clip-<client>``)."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        settings: ServingConfig | None = None,
        backbones: ClipBackbones | None = None,
        query_log: QueryLog | None = None,
        version: str = "",
        feedback_log: FeedbackLog | None = None,
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings = settings or ServingConfig()
        self.backbones = backbones or ClipBackbones(device=self.settings.device)
        self.query_log = query_log
        self.feedback_log = feedback_log
        self.version = version
        self._recent: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._video_ids: frozenset[str] = frozenset()
        self.handle: ClipHandle | None = None
        self.index: VideoIndex | None = None
        self.calibrator = _fallback_calibrator()
        self.batcher: DynamicBatcher | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        self.handle = self.backbones.attach(self.name, self.model_dir)
        index_dir = self.model_dir / INDEX_DIR
        if (index_dir / "index.json").is_file():
            self.index = VideoIndex.load(index_dir)  # as built: its IVF index and tuned search breadth
            self._video_ids = frozenset(self.index.ids)
            if (index_dir / CALIBRATION_FILE).is_file():
                self.calibrator = Calibrator.load(index_dir / CALIBRATION_FILE)
            logger.info(
                "%s: index of %d videos (%s), calibrator on %d queries (ECE %.3f)",
                self.name,
                len(self.index),
                self.index.describe(),
                self.calibrator.n_queries,
                self.calibrator.ece,
            )
        else:
            logger.warning(
                "%s: no video index in %s; only embeddings are served (run `clipsync index`)", self.name, index_dir
            )
        self.batcher = DynamicBatcher(
            self._search_batch,
            BatchSettings(max_batch=self.settings.batch_max, max_wait_ms=self.settings.batch_wait_ms),
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            logger.info("%s: %s", self.name, self.batcher.describe())
        if self.handle is not None:
            self.backbones.detach(self.handle)

    # ------------------------------------------------------------------ the work (thread)
    def _search_batch(self, items: list[tuple[str, int]]) -> list[SearchResult]:
        assert self.handle is not None
        emb = self.handle.encode_texts([text for text, _ in items])
        if self.index is None:
            return [SearchResult([], [], float("nan"), e) for e in emb]
        k = max(2, max(k for _, k in items))
        scores, ids = self.index.search(emb, k)
        conf = self.calibrator.confidence(scores) if scores.shape[1] else np.full(len(items), np.nan)
        return [
            SearchResult(ids[i][:kk], [float(s) for s in scores[i][:kk]], float(conf[i]), emb[i])
            for i, (_, kk) in enumerate(items)
        ]

    def search_sync(self, texts: list[str], k: int) -> list[SearchResult]:
        """The same search without the server (benchmarks' in-process baseline)."""
        return self._search_batch([(t, k) for t in texts])

    async def _search(self, texts: list[str], ks: list[int], protocol: str) -> list[SearchResult]:
        if self.index is None:
            raise NotReady(f"{self.name} has no video index: build it with `clipsync index` and reload")
        started = time.perf_counter()
        assert self.batcher is not None
        results = await asyncio.gather(*(self.batcher.submit((t, k)) for t, k in zip(texts, ks, strict=True)))
        latency_ms = (time.perf_counter() - started) * 1000
        for text, res in zip(texts, results, strict=True):
            res.query_id = uuid.uuid4().hex
            self._recent[res.query_id] = {"query": text, "results": list(res.ids)}
            if len(self._recent) > RECENT_QUERIES:
                self._recent.popitem(last=False)
            if self.query_log is not None:
                self.query_log.append(
                    self.name,
                    {
                        "query_id": res.query_id,
                        "query": text,
                        "top_video": res.ids[0] if res.ids else "",
                        "top_score": round(res.scores[0], 5) if res.scores else None,
                        "confidence": round(res.confidence, 5),
                        "low_confidence": bool(res.confidence < self.settings.low_confidence_threshold),
                        "latency_ms": round(latency_ms, 3),
                        "k": len(res.ids),
                        "protocol": protocol,
                        "version": self.version,
                    },
                )
        return results

    async def record_feedback(self, items: list[Feedback], authorization: str | None, protocol: str) -> list[dict]:
        """Store feedback on this model's searches; returns the stored entries once they are in the store.

        Args:
            items: The checked answers (:func:`serving.feedback.check_feedback`).
            authorization: The caller's ``Authorization`` header (whom the rate limit counts).
            protocol: ``rest``, ``v2`` or ``grpc`` (recorded).

        Raises:
            NotReady: No video index, no feedback store, or the store did not take the answers (retry).
            InvalidInput: A ``video_id`` that is not in this model's library.
            Overloaded: The caller passed ``serving.feedback_per_minute`` (HTTP 429 with ``Retry-After``).
        """
        if self.index is None:
            raise NotReady(f"{self.name} has no video index: build it with `clipsync index` and reload")
        if self.feedback_log is None or not self.feedback_log.enabled:
            raise NotReady("this server stores no feedback (serving.query_log_uri is off)")
        for n, item in enumerate(items):
            if item.video_id not in self._video_ids:
                where = "feedback" if len(items) == 1 else f"feedback[{n}]"
                raise InvalidInput(f"{where}: video_id {short(item.video_id)[:80]} is not in {self.name}'s library")
        self.feedback_log.limiter.take(caller_key(authorization), len(items))
        entries = [feedback_entry(self.name, self.version, i, self._recent.get(i.query_id), protocol) for i in items]
        try:
            await asyncio.wrap_future(self.feedback_log.submit(self.name, entries))
        except RuntimeError as exc:
            raise NotReady(str(exc), headers={"Retry-After": "5"}) from None
        except Exception as exc:  # the store refused or is unreachable: nothing was acknowledged
            raise NotReady(
                f"feedback could not be stored ({type(exc).__name__}); send it again", headers={"Retry-After": "5"}
            ) from None
        unknown = sum(not e["query_known"] for e in entries)
        if unknown:
            logger.info("%s: %d feedback answer(s) on a query this server does not know (flagged)", self.name, unknown)
        return entries

    def _calibration_info(self) -> dict[str, Any]:
        c = self.calibrator
        return {
            "method": "platt(top1_score, margin)" if c.n_queries else "none",
            "calibrated": c.n_queries > 0,
            "n_queries": c.n_queries,
            "ece": None if not np.isfinite(c.ece) else round(c.ece, 4),
        }

    # ------------------------------------------------------------------ protocols
    def get_input_types(self) -> list[dict]:
        return INPUTS

    def metadata_parameters(self) -> dict[str, Any]:
        """The V2 metadata's ``parameters``: how the index searches and the recall it measured when built."""
        return self.index.describe() if self.index is not None else {}

    def get_output_types(self) -> list[dict]:
        dim = self.handle.embed_dim if self.handle is not None else -1
        return [{**o, "shape": [-1, dim]} if o["name"].endswith("_embedding") else o for o in OUTPUTS]

    async def preprocess(self, payload: Any, headers: dict | None = None) -> SearchRequest:
        """The request checked: texts (1..1000 characters), ``top_k`` 1..100, images within the pixel limit."""
        if isinstance(payload, InferRequest):
            return await self._parse_v2(payload)
        if isinstance(payload, dict):
            return await self._parse_v1(payload)
        raise InvalidInput("expected a JSON object with 'instances'")

    async def _parse_v1(self, payload: dict) -> SearchRequest:
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("expected a non-empty list 'instances'")
        if len(instances) > MAX_QUERIES:
            raise InvalidInput(f"at most {MAX_QUERIES} instances per request, got {len(instances)}")
        req = SearchRequest(size=len(instances))
        for i, inst in enumerate(instances):
            where = f"instance {i}"
            if not isinstance(inst, dict):
                raise InvalidInput(f"{where}: expected an object with 'text' (or 'image_b64')")
            if "image_b64" in inst:  # the pixel limit holds for all the images of the request together
                left = self.settings.max_image_pixels - sum(img.shape[0] * img.shape[1] for _, img in req.images)
                req.images.append((i, await asyncio.to_thread(decode_image, inst["image_b64"], where, left)))
                continue
            if "text" not in inst:
                raise InvalidInput(f"{where}: missing 'text'")
            text = _check_text(inst["text"], where)
            wanted = inst.get("output", "results")
            if wanted == "text_embedding":
                req.text_embeddings.append((i, text))
            elif wanted == "results":
                req.searches.append((i, text, _check_top_k(inst.get("top_k", 5), where)))
            else:
                raise InvalidInput(f"{where}: 'output' must be 'results' or 'text_embedding'")
        return req

    async def _parse_v2(self, request: InferRequest) -> SearchRequest:
        inputs = {inp.name: inp for inp in request.inputs}
        unknown = sorted(set(inputs) - {i["name"] for i in INPUTS})
        if unknown or not inputs:
            raise InvalidInput(
                f"unknown input(s) {[short(u)[:40] for u in unknown[:5]]}; expected 'text' (BYTES), "
                "'top_k' (INT32) or 'image' (UINT8), or feedback: 'query_id', 'video_id', 'relevant', 'label'"
            )
        wanted = requested_outputs(request)
        known = {o["name"] for o in OUTPUTS}
        if wanted - known:
            raise InvalidInput(f"unknown output(s) {[short(w)[:40] for w in sorted(wanted - known)[:5]]}")
        req = SearchRequest(v2=request, wanted=wanted)
        if FEEDBACK_INPUTS & set(inputs):
            if {"text", "top_k", "image"} & set(inputs):
                raise InvalidInput("a request is either a search or feedback ('query_id', 'video_id', 'relevant')")
            req.feedback = _parse_v2_feedback(inputs)
            return req
        if "image" in inputs:
            arr = input_tensor(inputs["image"], ("UINT8",), self.settings.max_image_pixels * 3)
            if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[:3]) < 1:
                raise InvalidInput(f"input 'image' must be [N, H, W, 3], got {list(arr.shape)}")
            req.images = list(enumerate(arr))
        if "text" in inputs:
            raw = input_tensor(inputs["text"], ("BYTES",), MAX_QUERIES).reshape(-1)
            if len(raw) == 0:
                raise InvalidInput(f"input 'text' must hold 1..{MAX_QUERIES} queries")
            texts = [_check_text(t, f"text[{i}]") for i, t in enumerate(raw)]
            k = 5
            if "top_k" in inputs:
                values = input_tensor(inputs["top_k"], ("INT32", "INT64"), 1).reshape(-1)
                if len(values) != 1:
                    raise InvalidInput("input 'top_k' must hold one value (the same k for every query)")
                k = _check_top_k(values[0], "top_k")
            if wanted == {"text_embedding"}:
                req.text_embeddings = list(enumerate(texts))
            else:
                req.searches = [(i, t, k) for i, t in enumerate(texts)]
        elif "top_k" in inputs:
            raise InvalidInput("input 'top_k' needs the input 'text'")
        return req

    async def predict(self, payload: SearchRequest, headers: dict | None = None, response_headers: dict | None = None):
        assert self.handle is not None
        req = payload
        if req.feedback:
            assert req.v2 is not None
            auth = {k.lower(): v for k, v in (headers or {}).items()}.get("authorization")
            entries = await self.record_feedback(req.feedback, auth, "grpc" if req.v2.from_grpc else "v2")
            outputs = [
                output("feedback_id", np.array([e["feedback_id"].encode() for e in entries], dtype=np.object_)),
                output("query_known", np.array([e["query_known"] for e in entries], dtype=np.bool_)),
            ]
            return v2_response(req.v2, self.name, self.version, outputs)
        text_emb = image_emb = None
        if req.text_embeddings:
            text_emb = await asyncio.to_thread(self.handle.encode_texts, [t for _, t in req.text_embeddings])
        if req.images:
            image_emb = await asyncio.to_thread(self.handle.encode_frames, [img[None] for _, img in req.images])
        protocol = "v1" if req.v2 is None else ("grpc" if req.v2.from_grpc else "v2")
        results = []
        if req.searches:
            results = await self._search([t for _, t, _ in req.searches], [k for _, _, k in req.searches], protocol)
        if req.v2 is None:
            return self._v1_response(req, text_emb, image_emb, results)
        return self._v2_response(req, text_emb, image_emb, results)

    def _v1_response(self, req: SearchRequest, text_emb, image_emb, results: list[SearchResult]) -> dict:
        out: list[dict[str, Any] | None] = [None] * req.size
        for (i, _), e in zip(req.text_embeddings, text_emb if text_emb is not None else [], strict=True):
            out[i] = {"text_embedding": [float(x) for x in e]}
        for (i, _), e in zip(req.images, image_emb if image_emb is not None else [], strict=True):
            out[i] = {"image_embedding": [float(x) for x in e]}
        for (i, _, _), res in zip(req.searches, results, strict=True):
            out[i] = {
                "results": [{"video_id": v, "score": round(s, 5)} for v, s in zip(res.ids, res.scores, strict=True)],
                "confidence": round(res.confidence, 4),
                "low_confidence": bool(res.confidence < self.settings.low_confidence_threshold),
                "query_id": res.query_id,
            }
        return {"predictions": out, "calibration": self._calibration_info()}

    def _v2_response(self, req: SearchRequest, text_emb, image_emb, results: list[SearchResult]) -> InferResponse:
        outputs = []
        if image_emb is not None:
            outputs.append(output("image_embedding", image_emb.astype(np.float32)))
        if text_emb is not None:
            outputs.append(output("text_embedding", text_emb.astype(np.float32)))
        if results:
            kk = min(len(r.ids) for r in results)
            conf = np.array([r.confidence for r in results], dtype=np.float32)
            outputs += [
                output("video_ids", np.array([[v.encode() for v in r.ids[:kk]] for r in results], dtype=np.object_)),
                output(
                    "scores", np.array([r.scores[:kk] for r in results], dtype=np.float32).reshape(len(results), kk)
                ),
                output("confidence", conf),
                output("low_confidence", conf < self.settings.low_confidence_threshold),
                output("query_id", np.array([r.query_id.encode() for r in results], dtype=np.object_)),
            ]
            if "text_embedding" in req.wanted:
                outputs.append(output("text_embedding", np.stack([r.embedding for r in results]).astype(np.float32)))
        return v2_response(req.v2, self.name, self.version, outputs, {"calibrated": self.calibrator.n_queries > 0})

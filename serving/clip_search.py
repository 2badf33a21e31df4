"""clip-search predictor: text-to-video search over one client's library with that client's CLIP adapter.

Many clients share one base CLIP (:mod:`serving.clip_backbones`): each client's LoRA adapter is attached to it.

Inputs (see ``serving/README.md``):

- V1 ``{"instances": [{"text": "...", "top_k": 5}]}``; an instance ``{"text": "...", "output": "text_embedding"}``
  returns the raw text vector, ``{"image_b64": "<png/jpeg base64>"}`` the image vector.
- V2 (REST and gRPC): BYTES ``text`` ``[Q]``, optional INT32/INT64 ``top_k`` ``[1]``; outputs ``video_ids``
  (BYTES ``[Q, k]``), ``scores`` (FP32 cosine ``[Q, k]``), ``confidence`` (FP32 ``[Q]``), ``low_confidence``
  (BOOL ``[Q]``) and, when requested, ``text_embedding`` (FP32 ``[Q, D]``). UINT8 ``image`` ``[N, H, W, 3]``
  gives ``image_embedding``.

``confidence`` is P(the top-1 video is relevant) from the Platt calibrator fitted when the index was built
(:mod:`serving.calibration`), never the raw cosine similarity.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching import BatchSettings, DynamicBatcher
from serving.calibration import Calibrator
from serving.clip_backbones import ClipBackbones, ClipHandle
from serving.config import ServingConfig
from serving.index import IndexSettings, VideoIndex
from serving.kserve_adapter import InferenceError, InferOutput, InferRequest, InferResponse, InvalidInput, Model
from serving.querylog import QueryLog

logger = logging.getLogger("clipsync.serving.clip_search")

INDEX_DIR = "index"
CALIBRATION_FILE = "calibration.json"
MAX_TOP_K = 100
MAX_QUERIES = 256
MAX_TEXT_CHARS = 1000


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


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: 'text' must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise InvalidInput(f"{where}: 'text' is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where}: 'text' is longer than {MAX_TEXT_CHARS} characters")
    return text


def _check_top_k(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{where}: 'top_k' must be an integer, got {value!r}")
    if not 1 <= int(value) <= MAX_TOP_K:
        raise InvalidInput(f"{where}: 'top_k' must be 1..{MAX_TOP_K}, got {int(value)}")
    return int(value)


def _decode_image(data: Any, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str):
        raise InvalidInput(f"{where}: 'image_b64' must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"{where}: 'image_b64' is not a decodable PNG/JPEG image: {exc}") from None


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
    ) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.settings = settings or ServingConfig()
        self.backbones = backbones or ClipBackbones(device=self.settings.device)
        self.query_log = query_log
        self.version = version
        self.handle: ClipHandle | None = None
        self.index: VideoIndex | None = None
        self.calibrator = _fallback_calibrator()
        self.batcher: DynamicBatcher | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        self.handle = self.backbones.attach(self.name, self.model_dir)
        index_dir = self.model_dir / INDEX_DIR
        if (index_dir / "index.json").is_file():
            s = self.settings
            self.index = VideoIndex.load(index_dir, IndexSettings(approx_threshold=s.approx_threshold, nprobe=s.nprobe))
            if (index_dir / CALIBRATION_FILE).is_file():
                self.calibrator = Calibrator.load(index_dir / CALIBRATION_FILE)
            logger.info(
                "%s: index of %d videos (%s), calibrator on %d queries (ECE %.3f)",
                self.name,
                len(self.index),
                "approximate" if self.index.approximate else "exact",
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
            raise InferenceError(f"{self.name} has no video index: build it with `clipsync index` and reload")
        started = time.perf_counter()
        assert self.batcher is not None
        results = await asyncio.gather(*(self.batcher.submit((t, k)) for t, k in zip(texts, ks, strict=True)))
        latency_ms = (time.perf_counter() - started) * 1000
        if self.query_log is not None:
            for text, res in zip(texts, results, strict=True):
                self.query_log.append(
                    self.name,
                    {
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

    def _calibration_info(self) -> dict[str, Any]:
        c = self.calibrator
        return {
            "method": "platt(top1_score, margin)" if c.n_queries else "none",
            "calibrated": c.n_queries > 0,
            "n_queries": c.n_queries,
            "ece": None if not np.isfinite(c.ece) else round(c.ece, 4),
        }

    # ------------------------------------------------------------------ protocols
    async def predict(self, payload: Any, headers: dict | None = None, response_headers: dict | None = None) -> Any:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        if isinstance(payload, dict):
            return await self._predict_v1(payload)
        raise InvalidInput(f"unsupported request type {type(payload).__name__}")

    async def _predict_v1(self, payload: dict) -> dict:
        instances = payload.get("instances")
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("expected a non-empty list 'instances'")
        if len(instances) > MAX_QUERIES:
            raise InvalidInput(f"at most {MAX_QUERIES} instances per request, got {len(instances)}")
        out: list[dict[str, Any] | None] = [None] * len(instances)
        search_rows: list[tuple[int, str, int]] = []
        texts_only: list[tuple[int, str]] = []
        images: list[tuple[int, np.ndarray]] = []
        for i, inst in enumerate(instances):
            where = f"instance {i}"
            if not isinstance(inst, dict):
                raise InvalidInput(f"{where}: expected an object with 'text' (or 'image_b64')")
            if "image_b64" in inst:
                images.append((i, _decode_image(inst["image_b64"], where)))
                continue
            if "text" not in inst:
                raise InvalidInput(f"{where}: missing 'text'")
            text = _check_text(inst["text"], where)
            output = inst.get("output", "results")
            if output == "text_embedding":
                texts_only.append((i, text))
            elif output == "results":
                search_rows.append((i, text, _check_top_k(inst.get("top_k", 5), where)))
            else:
                raise InvalidInput(f"{where}: 'output' must be 'results' or 'text_embedding', got {output!r}")
        assert self.handle is not None
        if texts_only:
            emb = await asyncio.to_thread(self.handle.encode_texts, [t for _, t in texts_only])
            for (i, _), e in zip(texts_only, emb, strict=True):
                out[i] = {"text_embedding": [float(x) for x in e]}
        if images:
            emb = await asyncio.to_thread(self.handle.encode_frames, [img[None] for _, img in images])
            for (i, _), e in zip(images, emb, strict=True):
                out[i] = {"image_embedding": [float(x) for x in e]}
        if search_rows:
            results = await self._search([t for _, t, _ in search_rows], [k for _, _, k in search_rows], "v1")
            for (i, _, _), res in zip(search_rows, results, strict=True):
                out[i] = {
                    "results": [
                        {"video_id": v, "score": round(s, 5)} for v, s in zip(res.ids, res.scores, strict=True)
                    ],
                    "confidence": round(res.confidence, 4),
                    "low_confidence": bool(res.confidence < self.settings.low_confidence_threshold),
                }
        return {"predictions": out, "calibration": self._calibration_info()}

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        inputs = {inp.name: inp for inp in request.inputs}
        unknown = sorted(set(inputs) - {"text", "top_k", "image"})
        if unknown:
            raise InvalidInput(
                f"unknown input(s) {unknown}; expected 'text' (BYTES), 'top_k' (INT32) or 'image' (UINT8)"
            )
        wanted = {o.name for o in (request.request_outputs or [])}
        outputs: list[InferOutput] = []
        assert self.handle is not None
        if "image" in inputs:
            img = inputs["image"]
            if img.datatype != "UINT8":
                raise InvalidInput(f"input 'image' must be UINT8 [N, H, W, 3], got {img.datatype}")
            arr = img.as_numpy()
            if arr.ndim != 4 or arr.shape[-1] != 3 or min(arr.shape[:3]) < 1:
                raise InvalidInput(f"input 'image' must be [N, H, W, 3], got {list(arr.shape)}")
            emb = await asyncio.to_thread(self.handle.encode_frames, [a[None] for a in arr])
            outputs.append(_output("image_embedding", emb.astype(np.float32)))
        if "text" in inputs:
            inp = inputs["text"]
            if inp.datatype != "BYTES":
                raise InvalidInput(f"input 'text' must be BYTES, got {inp.datatype}")
            raw = inp.as_numpy().reshape(-1)
            if len(raw) == 0 or len(raw) > MAX_QUERIES:
                raise InvalidInput(f"input 'text' must hold 1..{MAX_QUERIES} queries, got {len(raw)}")
            texts = []
            for i, t in enumerate(raw):
                if isinstance(t, bytes):
                    try:
                        t = t.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InvalidInput(f"text[{i}] is not UTF-8") from None
                texts.append(_check_text(t, f"text[{i}]"))
            k = 5
            if "top_k" in inputs:
                tk = inputs["top_k"]
                if tk.datatype not in ("INT32", "INT64"):
                    raise InvalidInput(f"input 'top_k' must be INT32, got {tk.datatype}")
                values = {int(v) for v in tk.as_numpy().reshape(-1)}
                if len(values) != 1:
                    raise InvalidInput("input 'top_k' must hold one value (the same k for every query)")
                k = _check_top_k(values.pop(), "top_k")
            if wanted == {"text_embedding"}:
                emb = await asyncio.to_thread(self.handle.encode_texts, texts)
                outputs.append(_output("text_embedding", emb.astype(np.float32)))
            else:
                results = await self._search(texts, [k] * len(texts), "grpc" if request.from_grpc else "v2")
                kk = min(len(r.ids) for r in results)
                conf = np.array([r.confidence for r in results], dtype=np.float32)
                outputs += [
                    _output(
                        "video_ids", np.array([[v.encode() for v in r.ids[:kk]] for r in results], dtype=np.object_)
                    ),
                    _output("scores", np.array([r.scores[:kk] for r in results], dtype=np.float32)),
                    _output("confidence", conf),
                    _output("low_confidence", conf < self.settings.low_confidence_threshold),
                ]
                if "text_embedding" in wanted:
                    outputs.append(
                        _output("text_embedding", np.stack([r.embedding for r in results]).astype(np.float32))
                    )
        if not outputs:
            raise InvalidInput("no input: send 'text' (BYTES) or 'image' (UINT8)")
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            parameters={"calibrated": self.calibrator.n_queries > 0},
        )


def _output(name: str, array: np.ndarray) -> InferOutput:
    from serving.kserve_adapter import from_np_dtype

    array = np.asarray(array)
    datatype = "BYTES" if array.dtype == np.object_ else from_np_dtype(array.dtype)
    out = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
    out.set_data_from_numpy(array, binary_data=False)
    return out

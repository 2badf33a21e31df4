"""Build a client's video index next to its CLIP model: ``{model_dir}/index/``.

The index holds the embedding of every video of the frames Dataset (all splits: the client searches the whole
library) computed by that client's model, so a new adapter always comes with its own new index. The search
confidence is calibrated on the same occasion: the label texts of the val and test videos are run as queries
against the whole index; a query's top-1 is a hit when that video carries the query's label (``label``) or is
of the query's category (``category``, the default: demo labels are paraphrases spread over a category). A
Platt calibrator maps (top-1 score, margin) to the hit probability; its ECE on those queries is stored beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from serving.calibration import Calibrator, expected_calibration_error, fit_calibrator
from serving.config import IndexSettings, ServingConfig
from serving.index import VideoIndex

logger = logging.getLogger("clipsync.serving.index_build")

BUILD_FILE = "build.json"


def _constant_calibrator(hits: np.ndarray) -> Calibrator:
    """All hits or all misses: the (Laplace-smoothed) hit rate for every query, still an honest probability."""
    rate = (hits.sum() + 1) / (len(hits) + 2)
    cal = Calibrator(weights=(0.0, 0.0, float(math.log(rate / (1 - rate)))), n_queries=len(hits))
    ece = expected_calibration_error(np.full(len(hits), rate), hits) if len(hits) else float("nan")
    return Calibrator(weights=cal.weights, ece=ece, n_queries=len(hits))


def build_index(
    model_dir: str | Path,
    frames_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: IndexSettings | None = None,
    calibration_splits: tuple[str, ...] = ("val", "test"),
    relevance: str = "category",
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Embed every video of a frames Dataset with a client's model and fit the search calibrator.

    Args:
        model_dir: The client's CLIP model folder (``card.json`` + adapter) or a base model folder.
        frames_dir: The frame_extraction Dataset (``index.jsonl`` + ``search-*.npz``).
        out_dir: Where the index goes; default ``{model_dir}/index``.
        settings: Index search settings stored with it.
        calibration_splits: Splits whose label texts become calibration queries.
        relevance: ``category`` or ``label`` (what counts as a relevant top-1, see the module doc).
        batch_size: Videos per forward pass.
        cache_dir: Passed to the model loader (base models fetched from s3).

    Returns:
        The build summary also written to ``{out_dir}/build.json``.

    Raises:
        ValueError: If no video of the Dataset could be embedded, or ``relevance`` is unknown.
    """
    from components.frame_extraction.dataset import load_search_frames, read_frame_index
    from serving.clip_backbones import ClipBackbones
    from serving.clip_search import CALIBRATION_FILE, INDEX_DIR

    if relevance not in ("category", "label"):
        raise ValueError(f"relevance must be 'category' or 'label', got {relevance!r}")
    started = time.perf_counter()
    model_dir, frames_dir = Path(model_dir), Path(frames_dir)
    out = Path(out_dir) if out_dir is not None else model_dir / INDEX_DIR
    handle = ClipBackbones(cache_dir).attach("index-build", model_dir)
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    meta: dict[str, tuple[str, tuple[str, ...], str]] = {}
    skipped: list[dict[str, str]] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if pending:
            vectors.append(handle.encode_frames([f for _, f in pending]))
            ids.extend(v for v, _ in pending)
            pending.clear()

    for rec in read_frame_index(frames_dir):
        if rec.status != "ok":
            skipped.append({"video_id": rec.video_id, "reason": f"frames not extracted: {rec.reason}"})
            continue
        try:
            frames = load_search_frames(frames_dir, rec)
            if len(frames) == 0:
                raise ValueError("no search frames")
        except Exception as exc:  # one unreadable video must not stop the build
            skipped.append({"video_id": rec.video_id, "reason": f"bad_frames: {type(exc).__name__}: {exc}"})
            continue
        meta[rec.video_id] = (rec.split, tuple(rec.labels), rec.category)
        pending.append((rec.video_id, frames))
        if len(pending) >= batch_size:
            flush()
    flush()
    if not ids:
        raise ValueError(f"no video of {frames_dir} could be embedded ({len(skipped)} skipped)")
    # Calibration queries: label texts of the held-out videos.
    label_cats: dict[str, Counter] = {}
    for split, labels, category in meta.values():
        if split in calibration_splits:
            for label in labels:
                label_cats.setdefault(label.strip(), Counter())[category] += 1
    queries = sorted(q for q in label_cats if q)
    q_emb = handle.encode_texts(queries) if queries else None
    index = VideoIndex(ids, np.concatenate(vectors), settings, sample_queries=q_emb)
    summary: dict[str, Any] = {
        "videos": len(ids),
        "skipped": skipped,
        "dim": index.dim,
        "approximate": index.approximate,
        "search": index.describe(),
        "calibration_queries": len(queries),
        "relevance": relevance,
    }
    if q_emb is not None:
        scores, top = index.search(q_emb, 2)
        hits = []
        for q, row in zip(queries, top, strict=True):
            split, labels, category = meta[row[0]]
            q_cat = sorted(label_cats[q].items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            hits.append(q in labels if relevance == "label" else (category == q_cat or q in labels))
        hit_arr = np.asarray(hits, dtype=np.float64)
        try:
            calibrator = fit_calibrator(scores, hit_arr)
        except ValueError:
            calibrator = _constant_calibrator(hit_arr)
        summary.update(top1_accuracy=float(hit_arr.mean()), ece=calibrator.ece, weights=list(calibrator.weights))
        if index.approximate:  # the label texts as queries: recall@10 of the IVF search against exact search
            summary["query_recall_at_10"] = index.recall_at_k(q_emb, 10)
    else:
        calibrator = Calibrator(weights=(0.0, 0.0, 0.0), n_queries=0)
        logger.warning("index build: no labelled %s videos: search confidence stays uncalibrated", calibration_splits)
    index.save(out)
    calibrator.save(out / CALIBRATION_FILE)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    (out / BUILD_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
    logger.info(
        "index build: %d videos, %d calibration queries, top-1 %.3f, ECE %s -> %s",
        len(ids),
        len(queries),
        summary.get("top1_accuracy", float("nan")),
        summary.get("ece"),
        out,
    )
    return summary


def index_main(
    model_dir: str | Path,
    frames_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: ServingConfig | None = None,
    relevance: str = "category",
) -> int:
    """``clipsync index``: build the index and print its summary as JSON; returns the exit code."""
    import sys

    summary = build_index(
        model_dir,
        frames_dir,
        out_dir,
        IndexSettings.of(settings or ServingConfig()),
        relevance=relevance,
    )
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2) + "\n")
    return 0

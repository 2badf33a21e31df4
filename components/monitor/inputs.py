"""What the monitor stage feeds :func:`components.monitor.core.monitor_month` besides the query log and feedback.

- the champion CLIP's text tower (query-text embeddings) and its video embeddings of the window's new uploads
  (:func:`champion_embedder`, :func:`upload_embeddings`);
- the library before them: the upload embeddings earlier months' monitor runs saved beside their reports
  (``monitor/<model>/<month>/uploads.npy``), so no month re-reads old videos;
- the lip-sync model's scores on the month's test clips from evaluate_lipsync's paired outcomes (the champion's
  when there is one, else the challenger's), and the previous month's as saved by its monitor run.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("clipsync.monitor")

UPLOADS_FILE = "uploads.npy"
LIPSYNC_FILE = "lipsync_scores.json"


def champion_embedder(ctx: Any, work_dir: Path) -> tuple[Any, str] | None:
    """The client's CLIP champion attached for embedding (``ClipHandle``) and its version; ``None`` in month 1."""
    from components.common.champions import fetch_champion
    from serving.clip_backbones import ClipBackbones

    found = fetch_champion(ctx.tracking, "clip", ctx.client_id, work_dir / "champion")
    if found is None:
        return None
    model_dir, version = found
    return ClipBackbones(ctx.cache_dir).attach("monitor", model_dir), version


def upload_embeddings(handle: Any, frames_dir: Path, batch: int = 16) -> np.ndarray:
    """``[N, D]`` champion embeddings of the frames Dataset's videos (the window's uploads, every split)."""
    from components.frame_extraction.dataset import load_search_frames, read_frame_index

    videos = [load_search_frames(frames_dir, r) for r in read_frame_index(frames_dir) if r.status == "ok"]
    videos = [v for v in videos if len(v)]
    if not videos:
        return np.zeros((0, handle.embed_dim), dtype=np.float32)
    return np.concatenate([handle.encode_frames(videos[i : i + batch]) for i in range(0, len(videos), batch)])


def library_embeddings(store: Any, prefix: str, month: str) -> np.ndarray | None:
    """The upload embeddings saved by the monitor runs of months before ``month`` (``None``: none saved)."""
    keys = sorted(k for k in store.list_keys(f"{prefix}/") if k.endswith(f"/{UPLOADS_FILE}"))
    arrays = [np.load(io.BytesIO(store.get_bytes(k)), allow_pickle=False) for k in keys if k.split("/")[-2] < month]
    arrays = [a for a in arrays if a.ndim == 2 and len(a)]
    if not arrays or len({a.shape[1] for a in arrays}) != 1:
        return None
    return np.concatenate(arrays)


def lipsync_scores(evaluation_dir: Path | None) -> np.ndarray | None:
    """The lip-sync manipulation probabilities evaluate_lipsync gave this month's test clips (``None``: none)."""
    from components.evaluate.lipsync_eval import PAIRED_FILE

    path = Path(evaluation_dir) / PAIRED_FILE if evaluation_dir else None
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    role = "champion" if any("champion_score" in r for r in rows) else "challenger"
    scores = [float(r[f"{role}_score"]) for r in rows if r.get(f"{role}_score") is not None]
    return np.asarray(scores, dtype=np.float64) if scores else None


def saved_lipsync_scores(store: Any, prefix: str, month: str) -> np.ndarray | None:
    """The lip-sync scores the monitor run of ``month`` saved (``None``: none)."""
    key = f"{prefix}/{month}/{LIPSYNC_FILE}"
    if not store.exists(key):
        return None
    return np.asarray(json.loads(store.get_bytes(key)), dtype=np.float64)


def save_arrays(out_dir: Path, uploads: np.ndarray | None, scores: np.ndarray | None) -> None:
    """Keep this month's upload embeddings and lip-sync scores beside the reports (next month's reference)."""
    if uploads is not None and len(uploads):
        np.save(out_dir / UPLOADS_FILE, uploads.astype(np.float32), allow_pickle=False)
    if scores is not None:
        (out_dir / LIPSYNC_FILE).write_text(json.dumps([round(float(x), 6) for x in scores]))

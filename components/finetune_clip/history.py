"""CLIP's memory: every labelled video a month trained on, kept for the months after (deliverable "CLIP remembers").

A month's frames Dataset holds only that window's uploads. So that a month with few new videos improves rather
than forgets, finetune_clip keeps each training and validation video it used, as the model saw it (its prepared
frames, its labels with the feedback's additions, its known negatives, its split), under
``history/clip/<video_id>.{npy,json}`` of the client's artifacts store, and trains every month on the window's
videos plus the remembered ones (``finetune_clip.history_days``: how far back, 0 all; ``history_max_videos``: a
cap, newest first). A video keeps the split its content hash gave it, and the test videos are never remembered,
so evaluate's test split stays the window's (months stay comparable). Nothing here touches the client's uploads.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

import numpy as np

from components.finetune_clip.data import ClipSample

logger = logging.getLogger("clipsync.finetune_clip")

HISTORY_PREFIX = "history/clip"


def remember(store: Any, entries: Iterable[tuple[str, ClipSample, str]]) -> int:
    """Keep training and validation samples (frames, labels, negatives) for later months.

    Args:
        store: The client's artifacts store.
        entries: ``(split, sample, first seen)``: the window's videos with the window's end, remembered ones
            with the date they were first seen (their labels and negatives may have grown by feedback; their
            age does not, so the recency window lets them go in time).

    Returns:
        The number of videos written.
    """
    written = 0
    for split, s, as_of in entries:
        buf = io.BytesIO()
        np.save(buf, np.asarray(s.frames), allow_pickle=False)
        store.put_bytes(f"{HISTORY_PREFIX}/{s.video_id}.npy", buf.getvalue())
        meta = {
            "video_id": s.video_id,
            "split": split,
            "labels": list(s.labels),
            "negatives": list(s.negatives),
            "feedback_labels": list(s.feedback_labels),
            "category": s.category,
            "as_of": as_of,
            "shape": list(np.asarray(s.frames).shape),
        }
        store.put_bytes(f"{HISTORY_PREFIX}/{s.video_id}.json", json.dumps(meta, sort_keys=True).encode())
        written += 1
    return written


def recall(
    store: Any, exclude: Iterable[str], as_of: date, days: int, max_videos: int, frame_shape: tuple[int, ...]
) -> list[tuple[str, ClipSample, str]]:
    """The remembered samples for a run whose window ends ``as_of``: ``(split, sample, first seen)``, by video id.

    Args:
        store: The client's artifacts store.
        exclude: Video ids of the window itself (their current labels win).
        as_of: The window's end: videos remembered by later runs are left out (a rerun of an old month).
        days: Only videos remembered within this many days before ``as_of`` (0: all).
        max_videos: Most videos, newest first (0: no cap).
        frame_shape: The prepared frames' shape this model takes; videos kept at another shape (another base or
            ``frames_per_video``) are left out.
    """
    import torch

    skip = set(exclude)
    start = as_of - timedelta(days=days) if days else date.min
    metas = []
    for key in store.list_keys(f"{HISTORY_PREFIX}/"):
        if not key.endswith(".json"):
            continue
        meta = json.loads(store.get_bytes(key))
        seen = date.fromisoformat(meta["as_of"])
        fits = tuple(meta["shape"]) == tuple(frame_shape)
        if meta["video_id"] not in skip and start <= seen <= as_of and meta["labels"] and fits:
            metas.append(meta)
    metas.sort(key=lambda m: (m["as_of"], m["video_id"]), reverse=True)
    if max_videos:
        metas = metas[:max_videos]
    out = []
    for meta in metas:
        frames = np.load(io.BytesIO(store.get_bytes(f"{HISTORY_PREFIX}/{meta['video_id']}.npy")), allow_pickle=False)
        sample = ClipSample(meta["video_id"], torch.from_numpy(frames), tuple(meta["labels"]), meta["category"])
        fed = {"negatives": tuple(meta["negatives"]), "feedback_labels": tuple(meta.get("feedback_labels", ()))}
        out.append((meta["split"], dataclasses.replace(sample, **fed), meta["as_of"]))
    out.sort(key=lambda e: e[1].video_id)
    logger.info("finetune_clip: %d videos of earlier months remembered", len(out))
    return out


def warm_start_adapter(champion_dir: Any, base_ref: str, cfg: Any, window: str) -> Any:
    """The champion's ``adapter_model.safetensors`` when this run can start from it, else ``None``.

    It can when both are LoRA adapters of the same base with the same rank, alpha and target modules (a
    champion trained on another base, or another shape, would not fit the new adapter's weights), and the
    champion was trained on an earlier window: a rerun of a month reproduces that month (it resumes its own
    checkpoint) instead of training on top of its own result.
    """
    from pathlib import Path

    from components.finetune_clip.model import CARD_FILE

    card_path = Path(champion_dir) / CARD_FILE
    adapter = Path(champion_dir) / "adapter_model.safetensors"
    if cfg.strategy != "lora" or not card_path.is_file() or not adapter.is_file():
        return None
    card = json.loads(card_path.read_text())
    lora = card.get("lora") or {}
    same = (
        card.get("strategy") == "lora"
        and card.get("base_model") == base_ref
        and lora.get("r") == cfg.lora_r
        and lora.get("alpha") == cfg.lora_alpha
        and list(lora.get("target_modules", [])) == list(cfg.target_modules)
        and card.get("window") != window
    )
    return adapter if same else None

"""The client's category of every video a month's finetune_clip saw, kept in the artifacts store.

finetune_clip lists every video of its window here (test videos included: only the client's category, no frames
and no labels), so that the next month's feedback stage knows the category of any video a search answered with:
a search rated relevant on a video is evidence about that video's category
(:func:`components.feedback.core.training_records`, ``category_label`` records).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

CATEGORIES_KEY = "history/clip-categories.json"


def remember_categories(store: Any, categories: Mapping[str, str]) -> None:
    """Add ``video_id -> client category`` to the store's list (videos without a category are left out)."""
    known = known_categories(store)
    new = {v: c for v, c in categories.items() if c and known.get(v) != c}
    if new:
        store.put_bytes(CATEGORIES_KEY, json.dumps(known | new, sort_keys=True).encode())


def known_categories(store: Any) -> dict[str, str]:
    """``video_id -> client category`` of every video a month's finetune_clip saw (empty before the first)."""
    return json.loads(store.get_bytes(CATEGORIES_KEY)) if store.exists(CATEGORIES_KEY) else {}

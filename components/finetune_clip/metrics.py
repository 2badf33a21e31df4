"""Text-to-video retrieval metrics of a CLIP search model: what validation (finetune_clip) and evaluate measure.

Definitions (the same code and the same split for every model compared):

- Queries: the unique label texts of the videos (sorted). Relevant videos of a query: the videos carrying that
  label (or, with ``relevance="category"``, every video of the query's category). A query's category: the most
  frequent category of the videos carrying its label.
- Rank: the 1-based position of the first relevant video when all videos are sorted by decreasing cosine
  similarity to the query (ties keep the lower video index first). Recall@K: share of queries with rank <= K.
  Median rank: median of the ranks. AP: mean over the relevant videos of the precision at their positions;
  mAP: mean AP over queries.
- Top-1 accuracy per category, two views: ``query_top1_by_category`` (text to video: share of the category's
  queries whose first video is relevant) and ``video_top1_by_category`` (video to text: share of the category's
  videos whose most similar query is one of their labels).
- Per-query arrays (rank, hit@1/5/10, AP) are kept by query text, so the A/B gate can run a paired test.

The similarities come from :func:`query_video_similarity` (torch is imported inside the functions that need it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.finetune_clip.model import ClipBundle, encode_texts, encode_videos

if TYPE_CHECKING:
    import torch

    from components.finetune_clip.data import ClipSample


RELEVANCE = ("label", "category")


@dataclass
class RetrievalResult:
    """Retrieval metrics of one model on one query set.

    Attributes:
        queries: Query ids (label texts), aligned with every per-query array.
        query_categories: Category of each query.
        rank: 1-based rank of the first relevant video per query.
        average_precision: AP per query.
        recall_at_1: Share of queries with rank 1.
        recall_at_5: Share with rank <= 5.
        recall_at_10: Share with rank <= 10.
        median_rank: Median of ``rank``.
        mean_ap: Mean of ``average_precision``.
        query_top1_by_category: Text-to-video top-1 accuracy per query category.
        video_top1_by_category: Video-to-text top-1 accuracy per video category.
        n_videos: Videos searched.
    """

    queries: list[str]
    query_categories: list[str]
    rank: np.ndarray
    average_precision: np.ndarray
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    median_rank: float
    mean_ap: float
    query_top1_by_category: dict[str, float] = field(default_factory=dict)
    video_top1_by_category: dict[str, float] = field(default_factory=dict)
    n_videos: int = 0

    def hits(self, k: int) -> np.ndarray:
        """Per-query hit@k (0/1)."""
        return (self.rank <= k).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """The aggregate figures (JSON-ready)."""
        return {
            "n_queries": len(self.queries),
            "n_videos": self.n_videos,
            "recall_at_1": self.recall_at_1,
            "recall_at_5": self.recall_at_5,
            "recall_at_10": self.recall_at_10,
            "median_rank": self.median_rank,
            "mean_ap": self.mean_ap,
            "query_top1_by_category": dict(self.query_top1_by_category),
            "video_top1_by_category": dict(self.video_top1_by_category),
        }

    def per_query(self) -> dict[str, list]:
        """Per-query arrays keyed by name, aligned with ``queries``."""
        return {
            "rank": self.rank.tolist(),
            "hit_at_1": self.hits(1).tolist(),
            "hit_at_5": self.hits(5).tolist(),
            "hit_at_10": self.hits(10).tolist(),
            "average_precision": [float(x) for x in self.average_precision],
        }


def retrieval_metrics(
    similarity: np.ndarray,
    relevant: Sequence[set[int]],
    query_categories: Sequence[str],
    video_categories: Sequence[str],
    query_ids: Sequence[str] | None = None,
) -> RetrievalResult:
    """Text-to-video retrieval metrics from a query-by-video similarity matrix.

    Args:
        similarity: ``[Q, V]`` scores, higher is more similar.
        relevant: For each query, the indices of its relevant videos (each non-empty).
        query_categories: Category per query.
        video_categories: Category per video.
        query_ids: Names of the queries (default ``q0``, ``q1``, ...).

    Returns:
        The metrics (see the module docstring for the definitions).

    Raises:
        ValueError: On mismatched shapes or a query without relevant video.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be [Q, V], got shape {sim.shape}")
    n_q, n_v = sim.shape
    if len(relevant) != n_q or len(query_categories) != n_q:
        raise ValueError(f"{n_q} queries but {len(relevant)} relevant sets and {len(query_categories)} categories")
    if len(video_categories) != n_v:
        raise ValueError(f"{n_v} videos but {len(video_categories)} video categories")
    if n_q == 0:
        raise ValueError("no query to evaluate")
    queries = list(query_ids) if query_ids is not None else [f"q{i}" for i in range(n_q)]
    ranks = np.zeros(n_q, dtype=np.int64)
    aps = np.zeros(n_q, dtype=np.float64)
    for q in range(n_q):
        rel = relevant[q]
        if not rel or any(not 0 <= v < n_v for v in rel):
            raise ValueError(f"query {queries[q]!r}: relevant videos must be a non-empty subset of 0..{n_v - 1}")
        order = np.argsort(-sim[q], kind="stable")
        is_rel = np.isin(order, list(rel))
        positions = np.flatnonzero(is_rel) + 1  # 1-based ranks of every relevant video
        ranks[q] = positions[0]
        aps[q] = float(np.mean(np.arange(1, len(positions) + 1) / positions))

    by_cat: dict[str, list[int]] = {}
    for q in range(n_q):
        by_cat.setdefault(query_categories[q], []).append(int(ranks[q] == 1))
    query_top1 = {c: float(np.mean(v)) for c, v in sorted(by_cat.items())}

    video_rel: list[set[int]] = [set() for _ in range(n_v)]
    for q, rel in enumerate(relevant):
        for v in rel:
            video_rel[v].add(q)
    best_query = np.argmax(sim, axis=0)  # first max on ties
    by_vcat: dict[str, list[int]] = {}
    for v in range(n_v):
        if video_rel[v]:
            by_vcat.setdefault(video_categories[v], []).append(int(best_query[v] in video_rel[v]))
    video_top1 = {c: float(np.mean(x)) for c, x in sorted(by_vcat.items())}

    return RetrievalResult(
        queries=queries,
        query_categories=list(query_categories),
        rank=ranks,
        average_precision=aps,
        recall_at_1=float(np.mean(ranks <= 1)),
        recall_at_5=float(np.mean(ranks <= 5)),
        recall_at_10=float(np.mean(ranks <= 10)),
        median_rank=float(np.median(ranks)),
        mean_ap=float(np.mean(aps)),
        query_top1_by_category=query_top1,
        video_top1_by_category=video_top1,
        n_videos=n_v,
    )


def retrieval_problem(
    samples: Sequence[ClipSample], relevance: str = "label"
) -> tuple[list[str], list[set[int]], list[str]]:
    """Queries (unique labels, sorted), their relevant sample indices and their categories.

    Args:
        samples: The test videos.
        relevance: ``label``: a query's relevant videos are those carrying that label. ``category``: every
            video of the query's category (use it when labels are paraphrases spread at random over a
            category's videos, as in the demo data, where ``label`` counts a right-category video as a miss).

    Returns:
        Queries, relevant video indices per query, category per query.
    """
    if relevance not in RELEVANCE:
        raise ValueError(f"relevance must be one of {RELEVANCE}, got {relevance!r}")
    relevant: dict[str, set[int]] = {}
    for i, s in enumerate(samples):
        for label in s.labels:
            relevant.setdefault(label, set()).add(i)
    queries = sorted(relevant)
    cats = []
    for q in queries:
        counts = Counter(samples[i].category for i in relevant[q])
        cats.append(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
    if relevance == "category":
        by_cat: dict[str, set[int]] = {}
        for i, s in enumerate(samples):
            by_cat.setdefault(s.category, set()).add(i)
        return queries, [relevant[q] | by_cat[c] for q, c in zip(queries, cats, strict=True)], cats
    return queries, [relevant[q] for q in queries], cats


def embed_samples(
    bundle: ClipBundle, model: Any, samples: Sequence[ClipSample], pooling: str, batch_size: int = 32
) -> torch.Tensor:
    """``[N, D]`` video embeddings of ``samples`` on the model's device (no gradient; the caller sets eval mode)."""
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            frames = torch.stack([s.frames for s in samples[i : i + batch_size]])
            outs.append(encode_videos(model, frames, bundle.image_spec, pooling))
    return torch.cat(outs) if outs else torch.empty(0)


def query_video_similarity(
    bundle: ClipBundle,
    model: Any,
    samples: Sequence[ClipSample],
    queries: Sequence[str],
    pooling: str,
    batch_size: int = 32,
    video_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[Q, V]`` cosine similarities (float32, on the model's device) of ``queries`` to the videos of ``samples``.

    Args:
        bundle: Tokenizer and image spec of ``model``.
        model: The CLIP to score with (the caller sets eval mode).
        samples: The videos.
        queries: Query texts.
        pooling: Temporal pooling of the frame embeddings.
        batch_size: Videos per forward pass (texts go 64 at a time).
        video_emb: Precomputed ``[V, D]`` video embeddings (a frozen vision tower), else computed here.
    """
    import torch

    from components.common.device import no_autocast

    with torch.no_grad():
        if video_emb is None:
            video_emb = embed_samples(bundle, model, samples, pooling, batch_size)
        text_emb = torch.cat(
            [encode_texts(model, bundle.tokenizer, list(queries[i : i + 64])) for i in range(0, len(queries), 64)]
        )
        with no_autocast(text_emb.device):
            return text_emb.float() @ video_emb.float().T

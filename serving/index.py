"""A client's video index: one L2-normalised embedding per video, searched by cosine similarity.

Small libraries are searched exactly (a matrix product). From ``approx_threshold`` vectors on, the index is a faiss
HNSW graph (inner product on the normalised vectors) whose search breadth ``efSearch`` is chosen when it is built:
the smallest that reaches ``recall_target`` recall@10 against exact search on held-out tuning queries.

The tuning queries are made from the library itself: 200 of its vectors, each turned in a random direction until
its cosine with its source is ``query_similarity``. How hard a graph search is depends mostly on how far a query is
from the library: at 20k clustered vectors, efSearch 16 gave recall@10 0.97 for queries at cosine 0.89 from a
video and 0.58 at cosine 0.3, which needed efSearch 128 for 0.95 (``benchmarks/search_index.py``). Text queries
are far from the videos' image embeddings (CLIP's text-to-best-video cosine is about 0.3), so queries near library
vectors would overstate the recall clients get. Given real queries (``serving.index_build`` passes the client's
held-out label texts), the similarity is their median top-1 cosine; else :data:`QUERY_SIMILARITY`. Held-out library
vectors were not used: every video must be in the index, and a video's own vector is the easy query. The measured
recall is recorded in ``index.json`` and served in the model's metadata; the benchmark compares HNSW with exact
search and the former IVF-Flat index.

On disk: ``embeddings.safetensors`` (the vectors), ``ids.json`` (video ids, same order), ``index.json`` (settings
and tuning) and, for an HNSW index, ``hnsw.faiss``: the graph in faiss' own binary format (no pickle), read back
on load so a large library is not rebuilt (minutes at 1M vectors) every time a server loads it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import RECALL_K, IndexSettings

logger = logging.getLogger("clipsync.serving.index")

HNSW_FILE = "hnsw.faiss"
#: Tuning queries drawn from the library when an HNSW index is built.
TUNING_QUERIES = 200
#: Cosine of a tuning query with the library vector it was made from, when no real queries say otherwise.
QUERY_SIMILARITY = 0.3
# Exact search multiplies queries by at most this many library rows at once (bounded memory on large libraries).
_EXACT_CHUNK = 65_536


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the rows of ``truth`` (exact top-k) that ``found`` holds."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, truth.size)


class VideoIndex:
    """Embeddings of a client's video library with exact or HNSW top-k search.

    Attributes:
        ids: Video ids, one per row.
        vectors: ``[N, D]`` unit vectors (for an HNSW index, a view of the graph's own copy: stored once).
        settings: How it was built.
        tuning: For an HNSW index, the chosen ``ef_search`` and the recall it measured (see the module doc).
    """

    def __init__(
        self,
        ids: list[str],
        embeddings: np.ndarray,
        settings: IndexSettings | None = None,
        sample_queries: np.ndarray | None = None,
    ):
        """Build an index (an HNSW graph, tuned, from ``settings.approx_threshold`` vectors on).

        Args:
            ids: One video id per row of ``embeddings``; unique.
            embeddings: ``[N, D]`` vectors (normalised here).
            settings: Build settings; defaults to :class:`IndexSettings`.
            sample_queries: ``[Q, D]`` real queries; their median top-1 cosine with the library is the similarity
                of the HNSW tuning queries (default :data:`QUERY_SIMILARITY`; see the module doc).

        Raises:
            ValueError: On mismatched lengths, duplicate ids or a non-2-D array.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(ids) != embeddings.shape[0]:
            raise ValueError(f"need one id per embedding row: {len(ids)} ids, array {embeddings.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("video ids in an index must be unique")
        self.ids = list(ids)
        self.settings = settings or IndexSettings()
        self.tuning: dict[str, Any] = {}
        self._hnsw = None
        self.vectors = normalize(embeddings)
        if len(self.ids) >= self.settings.approx_threshold:
            similarity = QUERY_SIMILARITY
            if sample_queries is not None and len(sample_queries):
                similarity = float(np.median(self._exact(normalize(np.atleast_2d(sample_queries)), 1)[0]))
            started = time.perf_counter()
            self._hnsw = self._build_hnsw(self.vectors)
            build_s = time.perf_counter() - started
            self.vectors = self._graph_vectors()
            self.tuning = self._tune(build_s, similarity)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def approximate(self) -> bool:
        return self._hnsw is not None

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ HNSW
    def _build_hnsw(self, vectors: np.ndarray):
        import faiss

        graph = faiss.IndexHNSWFlat(vectors.shape[1], self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.settings.ef_construction
        graph.add(vectors)
        return graph

    def _graph_vectors(self) -> np.ndarray:
        """The graph's stored vectors as a read-only ``[N, D]`` view (the index keeps one copy of them)."""
        import faiss

        storage = faiss.downcast_index(self._hnsw.storage)
        view = faiss.rev_swig_ptr(storage.get_xb(), self._hnsw.ntotal * self._hnsw.d)
        view = view.reshape(self._hnsw.ntotal, self._hnsw.d)
        view.flags.writeable = False
        return view

    def tuning_queries(self, similarity: float) -> np.ndarray:
        """The held-out queries of the recall target: library vectors turned to cosine ``similarity`` with their
        source (deterministic; see the module doc)."""
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(len(self), size=min(len(self), TUNING_QUERIES), replace=False))
        sources = self.vectors[picks]
        away = rng.standard_normal((len(picks), self.dim)).astype(np.float32)
        away = normalize(away - np.sum(away * sources, axis=1, keepdims=True) * sources)  # orthogonal to the source
        return normalize(similarity * sources + np.sqrt(1 - similarity**2) * away)

    def _tune(self, build_s: float, similarity: float) -> dict[str, Any]:
        """The smallest ``efSearch`` (doubling, then bisecting) whose recall@10 reaches the target."""
        started = time.perf_counter()
        similarity = float(np.clip(similarity, 0.0, 0.99))
        queries = self.tuning_queries(similarity)
        k = min(RECALL_K, len(self))
        truth = self._exact(queries, k)[1]
        target, cap = self.settings.recall_target, self.settings.ef_search_max
        measured: dict[int, float] = {}

        def recall(ef: int) -> float:
            if ef not in measured:
                self._hnsw.hnsw.efSearch = ef
                measured[ef] = _overlap(self._hnsw.search(queries, k)[1], truth)
            return measured[ef]

        low, high = 0, min(cap, max(k, 16))
        while recall(high) < target and high < cap:
            low, high = high, min(cap, 2 * high)
        if recall(high) >= target:
            while high - low > max(1, high // 16):  # within about 6 % of the smallest breadth that suffices
                mid = (low + high) // 2
                low, high = (low, mid) if recall(mid) >= target else (mid, high)
        self._hnsw.hnsw.efSearch = high
        met = recall(high) >= target
        logger.log(
            logging.INFO if met else logging.WARNING,
            "index: HNSW over %d vectors (M %d, efConstruction %d, %.1f s): efSearch %d, recall@%d %.3f (target %.2f)",
            len(self),
            self.settings.hnsw_m,
            self.settings.ef_construction,
            build_s,
            high,
            k,
            recall(high),
            target,
        )
        return {
            "ef_search": high,
            "recall_at_10": round(recall(high), 4),
            "recall_target": target,
            "recall_met": met,
            "tuning_queries": len(queries),
            "query_similarity": round(similarity, 4),
            "tried": {str(ef): round(r, 4) for ef, r in sorted(measured.items())},
            "build_s": round(build_s, 2),
            "tune_s": round(time.perf_counter() - started, 2),
        }

    def describe(self) -> dict[str, Any]:
        """Flat facts about the index (the model metadata's ``parameters``: strings, numbers, booleans)."""
        facts: dict[str, Any] = {"index": "hnsw" if self.approximate else "exact", "index_videos": len(self)}
        if self.approximate:
            t = self.tuning
            facts.update(
                index_hnsw_m=self.settings.hnsw_m,
                index_ef_construction=self.settings.ef_construction,
                index_ef_search=t["ef_search"],
                index_recall_at_10=t["recall_at_10"],
                index_recall_target=t["recall_target"],
                index_recall_met=t["recall_met"],
                index_query_similarity=t["query_similarity"],
                index_build_s=t["build_s"],
            )
        return facts

    # ------------------------------------------------------------------ search
    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k rows by inner product, over the library in chunks (bounded memory)."""
        best_scores = np.empty((len(queries), 0), np.float32)
        best_rows = np.empty((len(queries), 0), np.int64)
        for start in range(0, len(self), _EXACT_CHUNK):
            sims = queries @ self.vectors[start : start + _EXACT_CHUNK].T
            kk = min(k, sims.shape[1])
            rows = np.argpartition(-sims, kth=kk - 1, axis=1)[:, :kk]
            best_scores = np.concatenate([best_scores, np.take_along_axis(sims, rows, axis=1)], axis=1)
            best_rows = np.concatenate([best_rows, rows + start], axis=1)
            if best_rows.shape[1] > k:
                keep = np.argpartition(-best_scores, kth=k - 1, axis=1)[:, :k]
                best_scores = np.take_along_axis(best_scores, keep, axis=1)
                best_rows = np.take_along_axis(best_rows, keep, axis=1)
        # Best first; equal scores in library order.
        order = np.lexsort((best_rows, -best_scores), axis=1)
        return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_rows, order, axis=1)

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k videos per query by cosine similarity.

        Args:
            queries: ``[Q, D]`` query embeddings (normalised here).
            k: Results per query; capped at the library size.
            exact: Force exact search even on an HNSW index.

        Returns:
            Scores ``[Q, k']`` (cosine similarity, best first) and the matching video ids.
        """
        queries = normalize(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} does not match the index ({self.dim})")
        k = max(1, min(int(k), len(self.ids)))
        if self._hnsw is not None and not exact:
            scores, rows = self._hnsw.search(queries, k)
        else:
            scores, rows = self._exact(queries, k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return scores.astype(np.float32), ids

    def recall_at_k(self, queries: np.ndarray, k: int) -> float:
        """Share of the exact top-k that the index's own search returns (1.0 for exact indexes)."""
        _, approx = self.search(queries, k)
        _, exact = self.search(queries, k, exact=True)
        hits = sum(len(set(a) & set(e)) for a, e in zip(approx, exact, strict=True))
        return hits / max(1, sum(len(e) for e in exact))

    # ------------------------------------------------------------------ files
    def save(self, directory: Path) -> Path:
        """Write the index files into ``directory`` (created if needed)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": np.ascontiguousarray(self.vectors)}, str(directory / "embeddings.safetensors"))
        (directory / "ids.json").write_text(json.dumps(self.ids))
        meta = {"dim": self.dim, "count": len(self), **asdict(self.settings), "kind": "exact"}
        if self._hnsw is not None:
            import faiss

            faiss.write_index(self._hnsw, str(directory / HNSW_FILE))
            meta.update(kind="hnsw", tuning=self.tuning)
        (directory / "index.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path, settings: IndexSettings | None = None) -> VideoIndex:
        """Read an index written by :meth:`save`.

        The HNSW graph is read from its file when it was built with ``settings``' graph parameters (by default
        the stored settings); otherwise (another ``hnsw_m`` or ``ef_construction``, an index written before HNSW)
        it is built again from the embeddings.

        Raises:
            FileNotFoundError: If a file of the index is missing.
            ValueError: If the files disagree with each other.
        """
        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        ids = json.loads((directory / "ids.json").read_text())
        # Keys of indexes written before HNSW (nlist, nprobe) are ignored: they are rebuilt with the defaults.
        stored = IndexSettings(**{f.name: meta[f.name] for f in fields(IndexSettings) if f.name in meta})
        settings = settings or stored
        graph_file = directory / HNSW_FILE
        same_graph = (settings.hnsw_m, settings.ef_construction) == (stored.hnsw_m, stored.ef_construction)
        if meta.get("kind") == "hnsw" and graph_file.is_file() and same_graph and "tuning" in meta:
            return cls._from_graph(directory, ids, meta, settings)
        from safetensors.numpy import load_file

        vectors = load_file(str(directory / "embeddings.safetensors"))["embeddings"]
        if vectors.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"index in {directory} is inconsistent: {vectors.shape} vs count/dim of index.json")
        return cls(ids, vectors, settings)

    @classmethod
    def _from_graph(cls, directory: Path, ids: list[str], meta: dict, settings: IndexSettings) -> VideoIndex:
        import faiss

        graph = faiss.read_index(str(directory / HNSW_FILE))
        if (graph.ntotal, graph.d) != (len(ids), meta["dim"]) or meta["count"] != len(ids):
            raise ValueError(f"index in {directory} is inconsistent: {HNSW_FILE} holds {graph.ntotal}x{graph.d}")
        index = cls.__new__(cls)
        index.ids, index.settings, index._hnsw = list(ids), settings, graph
        index.vectors = index._graph_vectors()
        index.tuning = dict(meta["tuning"])
        if (settings.recall_target, settings.ef_search_max) == (meta["recall_target"], meta["ef_search_max"]):
            graph.hnsw.efSearch = int(index.tuning["ef_search"])
        else:  # another target: tuned again on the same graph (seconds, not a rebuild)
            index.tuning = index._tune(float(meta["tuning"]["build_s"]), float(meta["tuning"]["query_similarity"]))
        return index

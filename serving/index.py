"""A client's video index: one L2-normalised embedding per video, searched by cosine similarity.

Small libraries are searched exactly (a matrix product). From ``approx_threshold`` vectors on, the index is a faiss
IVF index (inner product on the normalised vectors): k-means cells (``nlist``, about ``4 * sqrt(N)``) found by an
HNSW graph over their centroids, the vectors stored in them as 8-bit codes (SQ8), and the best
``REFINE_FACTOR * k`` candidates re-ranked exactly from the float vectors. Its search breadth ``nprobe`` (cells
scanned per query) is chosen when it is built: the smallest that reaches ``recall_target`` recall@10 against exact
search on held-out tuning queries. A plain HNSW graph (M 32, efConstruction 40) was the index before: at 1M x 512
it reached recall@10 0.74 on far queries at efSearch 1024 after an 886 s build; the IVF index reached 0.95 at
nprobe 48, 1.6 ms per query, after a 552 s build (``benchmarks/search_index.py``; figures in serving/README.md).

The tuning queries are made from the library itself: 200 of its vectors, each turned in a random direction until
its cosine with its source is ``query_similarity``. How hard an approximate search is depends mostly on how far a
query is from the library: at 20k clustered vectors an HNSW graph at efSearch 16 gave recall@10 0.97 for queries
at cosine 0.89 from a video and 0.58 at cosine 0.3 (``benchmarks/search_index.py``). Text queries are far from
the videos' image embeddings (CLIP's text-to-best-video cosine is about 0.3), so queries near library vectors
would overstate the recall clients get. Given real queries (``serving.index_build`` passes the client's held-out
label texts), the similarity is their median top-1 cosine; else :data:`QUERY_SIMILARITY`. Held-out library
vectors were not used: every video must be in the index, and a video's own vector is the easy query. The measured
recall is recorded in ``index.json`` and served in the model's metadata.

On disk: ``embeddings.safetensors`` (the vectors), ``ids.json`` (video ids, same order), ``index.json`` (settings
and tuning) and, for an IVF index, ``ivf.faiss``: the index in faiss' own binary format (no pickle), read back on
load so a large library is not rebuilt (minutes at 1M vectors) every time a server loads it. An index of another
kind (the former HNSW graph or IVF-Flat) is rebuilt from its embeddings on load.
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

IVF_FILE = "ivf.faiss"
#: Tuning queries drawn from the library when an IVF index is built.
TUNING_QUERIES = 200
#: Cosine of a tuning query with the library vector it was made from, when no real queries say otherwise.
QUERY_SIMILARITY = 0.3
#: Candidates re-ranked exactly per result (k-factor of faiss' IndexRefineFlat): the 8-bit codes only order the
#: candidates; at 200k x 512 the recall with re-ranking 4 k candidates equalled the float IVF's at every nprobe.
REFINE_FACTOR = 4
#: k-means iterations of the IVF cells: faiss' default is 25 and the training time is linear in them; with 10 the
#: index met the recall target at 200k and 1M x 512 (``benchmarks/search_index.py``) at 1.6 ms p50 or less.
KMEANS_ITERATIONS = 10
# Exact search multiplies queries by at most this many library rows at once (bounded memory on large libraries).
_EXACT_CHUNK = 65_536


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def nlist_for(count: int, requested: int = 0) -> int:
    """IVF cells for ``count`` vectors: ``requested``, or (0) the power of two nearest ``4 * sqrt(count)``; at most
    one per 39 vectors (faiss' k-means wants 39 training vectors per centroid)."""
    return int(max(1, min(requested or 2 ** round(np.log2(4 * np.sqrt(count))), count // 39)))


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the rows of ``truth`` (exact top-k) that ``found`` holds."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, truth.size)


class VideoIndex:
    """Embeddings of a client's video library with exact or IVF top-k search.

    Attributes:
        ids: Video ids, one per row.
        vectors: ``[N, D]`` unit vectors (for an IVF index, a view of its re-ranking copy: stored once).
        settings: How it was built.
        tuning: For an IVF index, its ``nlist``, the chosen ``nprobe`` and the recall it measured (module doc).
    """

    def __init__(
        self,
        ids: list[str],
        embeddings: np.ndarray,
        settings: IndexSettings | None = None,
        sample_queries: np.ndarray | None = None,
    ):
        """Build an index (an IVF index, tuned, from ``settings.approx_threshold`` vectors on).

        Args:
            ids: One video id per row of ``embeddings``; unique.
            embeddings: ``[N, D]`` vectors (normalised here).
            settings: Build settings; defaults to :class:`IndexSettings`.
            sample_queries: ``[Q, D]`` real queries; their median top-1 cosine with the library is the similarity
                of the IVF tuning queries (default :data:`QUERY_SIMILARITY`; see the module doc).

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
        self._ivf = None
        self.vectors = normalize(embeddings)
        if len(self.ids) >= self.settings.approx_threshold:
            similarity = QUERY_SIMILARITY
            if sample_queries is not None and len(sample_queries):
                similarity = float(np.median(self._exact(normalize(np.atleast_2d(sample_queries)), 1)[0]))
            started = time.perf_counter()
            self._ivf = self._build_ivf(self.vectors)
            build_s = time.perf_counter() - started
            self.vectors = self._stored_vectors()
            self.tuning = self._tune(build_s, similarity)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def approximate(self) -> bool:
        return self._ivf is not None

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ IVF
    def _build_ivf(self, vectors: np.ndarray):
        """IVF lists found by k-means on a sample, 8-bit codes, the float vectors kept for exact re-ranking."""
        import faiss

        nlist = nlist_for(len(vectors), self.settings.nlist)
        base = faiss.index_factory(vectors.shape[1], f"IVF{nlist}_HNSW32,SQ8", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(base).cp.niter = KMEANS_ITERATIONS
        sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 40 * nlist), replace=False)
        base.train(vectors[np.sort(sample)])
        index = faiss.IndexRefineFlat(base)
        index.k_factor = REFINE_FACTOR
        index.add(vectors)
        return index

    def _lists(self):
        """The IVF part of the index (its ``nprobe``) and its coarse quantizer (an HNSW graph over the centroids)."""
        import faiss

        ivf = faiss.extract_index_ivf(faiss.downcast_index(self._ivf.base_index))
        return ivf, faiss.downcast_index(ivf.quantizer)

    def _set_nprobe(self, nprobe: int) -> None:
        ivf, quantizer = self._lists()
        ivf.nprobe = nprobe
        # The quantizer's graph search returns at most efSearch centroids; 2 nprobe (64 at least) is what was measured.
        quantizer.hnsw.efSearch = max(64, 2 * nprobe)

    def _stored_vectors(self) -> np.ndarray:
        """The re-ranking copy of the vectors as a read-only ``[N, D]`` view (the index keeps one float copy)."""
        import faiss

        flat = faiss.downcast_index(self._ivf.refine_index)
        view = faiss.rev_swig_ptr(flat.get_xb(), self._ivf.ntotal * self._ivf.d).reshape(self._ivf.ntotal, -1)
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
        """The smallest ``nprobe`` (doubling, then bisecting) whose recall@10 reaches the target."""
        started = time.perf_counter()
        similarity = float(np.clip(similarity, 0.0, 0.99))
        queries = self.tuning_queries(similarity)
        k = min(RECALL_K, len(self))
        truth = self._exact(queries, k)[1]
        nlist = int(self._lists()[0].nlist)
        target, cap = self.settings.recall_target, min(self.settings.nprobe_max, nlist)
        measured: dict[int, float] = {}

        def recall(nprobe: int) -> float:
            if nprobe not in measured:
                self._set_nprobe(nprobe)
                measured[nprobe] = _overlap(self._ivf.search(queries, k)[1], truth)
            return measured[nprobe]

        low, high = 0, min(cap, 4)
        while recall(high) < target and high < cap:
            low, high = high, min(cap, 2 * high)
        if recall(high) >= target:
            while high - low > max(1, high // 16):  # within about 6 % of the smallest breadth that suffices
                mid = (low + high) // 2
                low, high = (low, mid) if recall(mid) >= target else (mid, high)
        self._set_nprobe(high)
        met = recall(high) >= target
        logger.log(
            logging.INFO if met else logging.WARNING,
            "index: IVF over %d vectors (nlist %d, %.1f s): nprobe %d, recall@%d %.3f (target %.2f)",
            len(self),
            nlist,
            build_s,
            high,
            k,
            recall(high),
            target,
        )
        return {
            "nlist": nlist,
            "nprobe": high,
            "recall_at_10": round(recall(high), 4),
            "recall_target": target,
            "recall_met": met,
            "tuning_queries": len(queries),
            "query_similarity": round(similarity, 4),
            "tried": {str(nprobe): round(r, 4) for nprobe, r in sorted(measured.items())},
            "build_s": round(build_s, 2),
            "tune_s": round(time.perf_counter() - started, 2),
        }

    def describe(self) -> dict[str, Any]:
        """Flat facts about the index (the model metadata's ``parameters``: strings, numbers, booleans)."""
        facts: dict[str, Any] = {"index": "ivf" if self.approximate else "exact", "index_videos": len(self)}
        if self.approximate:
            t = self.tuning
            facts.update(
                index_nlist=t["nlist"],
                index_nprobe=t["nprobe"],
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
            exact: Force exact search even on an IVF index.

        Returns:
            Scores ``[Q, k']`` (cosine similarity, best first) and the matching video ids.
        """
        queries = normalize(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} does not match the index ({self.dim})")
        k = max(1, min(int(k), len(self.ids)))
        if self._ivf is not None and not exact:
            scores, rows = self._ivf.search(queries, k)
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
        if self._ivf is not None:
            import faiss

            faiss.write_index(self._ivf, str(directory / IVF_FILE))
            meta.update(kind="ivf", tuning=self.tuning)
        (directory / "index.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path, settings: IndexSettings | None = None) -> VideoIndex:
        """Read an index written by :meth:`save`.

        The IVF index is read from its file when it was built with ``settings``' ``nlist`` (by default the stored
        settings); otherwise (another ``nlist``, an index of an earlier kind: HNSW, IVF-Flat) it is built again
        from the embeddings.

        Raises:
            FileNotFoundError: If a file of the index is missing.
            ValueError: If the files disagree with each other.
        """
        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        ids = json.loads((directory / "ids.json").read_text())
        # Keys of earlier kinds of index (hnsw_m, ef_construction, ef_search_max) are ignored.
        stored = IndexSettings(**{f.name: meta[f.name] for f in fields(IndexSettings) if f.name in meta})
        settings = settings or stored
        if meta.get("kind") == "ivf" and (directory / IVF_FILE).is_file() and settings.nlist == stored.nlist:
            return cls._from_file(directory, ids, meta, settings)
        from safetensors.numpy import load_file

        vectors = load_file(str(directory / "embeddings.safetensors"))["embeddings"]
        if vectors.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"index in {directory} is inconsistent: {vectors.shape} vs count/dim of index.json")
        return cls(ids, vectors, settings)

    @classmethod
    def _from_file(cls, directory: Path, ids: list[str], meta: dict, settings: IndexSettings) -> VideoIndex:
        import faiss

        ivf = faiss.read_index(str(directory / IVF_FILE))
        if (ivf.ntotal, ivf.d) != (len(ids), meta["dim"]) or meta["count"] != len(ids):
            raise ValueError(f"index in {directory} is inconsistent: {IVF_FILE} holds {ivf.ntotal}x{ivf.d}")
        index = cls.__new__(cls)
        index.ids, index.settings, index._ivf = list(ids), settings, ivf
        index.vectors = index._stored_vectors()
        index.tuning = dict(meta["tuning"])
        if (settings.recall_target, settings.nprobe_max) == (meta["recall_target"], meta["nprobe_max"]):
            index._set_nprobe(int(index.tuning["nprobe"]))
        else:  # another target: tuned again on the same index (seconds, not a rebuild)
            index.tuning = index._tune(float(meta["tuning"]["build_s"]), float(meta["tuning"]["query_similarity"]))
        return index

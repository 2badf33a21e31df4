"""A client's video index: one L2-normalised embedding per video, searched by cosine similarity.

Small libraries are searched exactly (a matrix product). Above ``approx_threshold`` vectors the index switches to
faiss' inverted-file index (IVF-Flat, inner product), whose recall against exact search is measured by
:meth:`VideoIndex.recall_at_k` and reported by ``benchmarks/search_index.py``.

On disk: ``embeddings.safetensors`` (the vectors), ``ids.json`` (video ids, same order) and ``index.json``
(settings). The approximate structure is rebuilt on load; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("clipsync.serving.index")


@dataclass(frozen=True)
class IndexSettings:
    """How an index searches.

    Attributes:
        approx_threshold: From this many vectors on, search with faiss IVF-Flat instead of exactly.
        nlist: IVF cells (0: about 4*sqrt(N)).
        nprobe: Cells visited per query; higher is slower and more exact.
    """

    approx_threshold: int = 50_000
    nlist: int = 0
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.approx_threshold < 1 or self.nlist < 0 or self.nprobe < 1:
            raise ValueError(f"invalid index settings: {self}")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class VideoIndex:
    """Embeddings of a client's video library with exact or approximate top-k search."""

    def __init__(self, ids: list[str], embeddings: np.ndarray, settings: IndexSettings | None = None):
        """Build an index.

        Args:
            ids: One video id per row of ``embeddings``; unique.
            embeddings: ``[N, D]`` vectors (normalised here).
            settings: Search settings; defaults to :class:`IndexSettings`.

        Raises:
            ValueError: On mismatched lengths, duplicate ids or a non-2-D array.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(ids) != embeddings.shape[0]:
            raise ValueError(f"need one id per embedding row: {len(ids)} ids, array {embeddings.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("video ids in an index must be unique")
        self.ids = list(ids)
        self.vectors = normalize(embeddings)
        self.settings = settings or IndexSettings()
        self._ivf = None
        if len(self.ids) >= self.settings.approx_threshold:
            self._ivf = self._build_ivf()

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def approximate(self) -> bool:
        return self._ivf is not None

    def __len__(self) -> int:
        return len(self.ids)

    def _build_ivf(self):
        import faiss

        n = len(self.ids)
        nlist = self.settings.nlist or max(1, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample is enough for the cell centroids and keeps building fast on large libraries.
        sample = self.vectors[np.random.default_rng(0).choice(n, size=min(n, nlist * 64), replace=False)]
        ivf.train(sample)
        ivf.add(self.vectors)
        ivf.nprobe = min(self.settings.nprobe, nlist)
        logger.info("index: IVF-Flat over %d vectors, nlist %d, nprobe %d", n, nlist, ivf.nprobe)
        return ivf

    def search(self, queries: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k videos per query by cosine similarity.

        Args:
            queries: ``[Q, D]`` query embeddings (normalised here).
            k: Results per query; capped at the library size.
            exact: Force exact search even on an approximate index.

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
            sims = queries @ self.vectors.T
            rows = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
            part = np.take_along_axis(sims, rows, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            rows = np.take_along_axis(rows, order, axis=1)
            scores = np.take_along_axis(part, order, axis=1)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return scores.astype(np.float32), ids

    def recall_at_k(self, queries: np.ndarray, k: int) -> float:
        """Share of the exact top-k that the index's own search returns (1.0 for exact indexes)."""
        _, approx = self.search(queries, k)
        _, exact = self.search(queries, k, exact=True)
        hits = sum(len(set(a) & set(e)) for a, e in zip(approx, exact, strict=True))
        return hits / max(1, sum(len(e) for e in exact))

    def save(self, directory: Path) -> Path:
        """Write the index files into ``directory`` (created if needed)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.vectors}, str(directory / "embeddings.safetensors"))
        (directory / "ids.json").write_text(json.dumps(self.ids))
        (directory / "index.json").write_text(
            json.dumps({"dim": self.dim, "count": len(self), **asdict(self.settings)})
        )
        return directory

    @classmethod
    def load(cls, directory: Path, settings: IndexSettings | None = None) -> VideoIndex:
        """Read an index written by :meth:`save`.

        Raises:
            FileNotFoundError: If a file of the index is missing.
            ValueError: If the files disagree with each other.
        """
        from safetensors.numpy import load_file

        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        ids = json.loads((directory / "ids.json").read_text())
        vectors = load_file(str(directory / "embeddings.safetensors"))["embeddings"]
        if vectors.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"index in {directory} is inconsistent: {vectors.shape} vs {meta}")
        stored = IndexSettings(**{k: meta[k] for k in ("approx_threshold", "nlist", "nprobe")})
        return cls(ids, vectors, settings or stored)

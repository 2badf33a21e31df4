"""Video index: exact search is correct, the approximate index keeps high recall, files round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.index import IndexSettings, VideoIndex, normalize


def _library(n: int, d: int = 32, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"v{i:05d}" for i in range(n)], rng.normal(size=(n, d)).astype(np.float32)


def test_exact_search_matches_brute_force():
    ids, vectors = _library(200)
    index = VideoIndex(ids, vectors)
    queries = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    scores, found = index.search(queries, k=7)
    sims = normalize(queries) @ normalize(vectors).T
    for q in range(5):
        expected = [ids[i] for i in np.argsort(-sims[q])[:7]]
        assert found[q] == expected
        np.testing.assert_allclose(scores[q], np.sort(sims[q])[::-1][:7], rtol=1e-5)
    assert not index.approximate and index.recall_at_k(queries, 7) == 1.0


def test_query_for_a_stored_vector_finds_it_first():
    ids, vectors = _library(50)
    scores, found = VideoIndex(ids, vectors).search(vectors[10] * 3.0, k=1)
    assert found == [["v00010"]] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def _clustered(n: int, d: int = 32, clusters: int = 40, seed: int = 0) -> tuple[list[str], np.ndarray]:
    # Embeddings of a real library cluster by content; uniform noise would be the worst case for IVF.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    return [f"v{i:05d}" for i in range(n)], vectors.astype(np.float32)


def test_approximate_index_above_threshold_keeps_recall():
    ids, vectors = _clustered(4000)
    queries = _clustered(50, seed=1)[1]
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000, nprobe=8))
    assert index.approximate
    assert 0.8 < index.recall_at_k(queries, 10) <= 1.0
    # Visiting every cell is exact search.
    everything = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000, nprobe=10_000))
    assert everything.recall_at_k(queries, 10) == pytest.approx(1.0)


def test_k_is_capped_and_dimension_checked():
    ids, vectors = _library(3)
    index = VideoIndex(ids, vectors)
    assert len(index.search(vectors[0], k=50)[1][0]) == 3
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(5), k=1)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="one id per embedding"):
        VideoIndex(["a"], np.ones((2, 4)))
    with pytest.raises(ValueError, match="unique"):
        VideoIndex(["a", "a"], np.ones((2, 4)))


def test_save_load_round_trip(tmp_path: Path):
    ids, vectors = _library(20)
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=10_000, nprobe=4))
    loaded = VideoIndex.load(index.save(tmp_path / "idx"))
    assert loaded.ids == ids and loaded.settings == index.settings
    np.testing.assert_allclose(loaded.vectors, index.vectors, rtol=1e-6)

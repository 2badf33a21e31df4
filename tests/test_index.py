"""Video index: exact search is correct, the IVF index is tuned to its recall target, files round-trip."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from components.common.errors import ConfigError
from serving.config import IndexSettings, ServingConfig
from serving.index import IVF_FILE, VideoIndex, nlist_for, normalize


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


def test_ivf_index_above_threshold_is_tuned_to_the_recall_target():
    ids, vectors = _clustered(4000)
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000))
    assert index.approximate and not VideoIndex(ids, vectors).approximate
    t = index.tuning
    assert t["recall_met"] and t["recall_at_10"] >= 0.95 and t["tuning_queries"] == 200
    assert t["nlist"] == nlist_for(4000) == 102  # 4 sqrt(N) would leave k-means under 39 vectors per cell
    # The smallest breadth tried that reaches the target is kept: every smaller one tried missed it.
    assert all(r < 0.95 for nprobe, r in t["tried"].items() if int(nprobe) < t["nprobe"])
    assert index._lists()[0].nprobe == t["nprobe"] < t["nlist"]
    # Other queries as far from the library as the tuning ones (cosine 0.3 with a video) fare about as well.
    rng = np.random.default_rng(7)
    near = normalize(vectors[rng.integers(0, 4000, 100)])
    away = rng.normal(size=near.shape)
    away = normalize(away - np.sum(away * near, axis=1, keepdims=True) * near)
    assert index.recall_at_k(0.3 * near + np.sqrt(1 - 0.09) * away, 10) > 0.9
    assert t["query_similarity"] == 0.3
    # Scores are exact cosines (re-ranked from the float vectors, not the 8-bit codes).
    scores, found = index.search(vectors[:3], 5)
    rows = [[ids.index(v) for v in row] for row in found]
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", normalize(vectors[:3]), index.vectors[rows]), rtol=1e-5)
    # Real queries set the similarity of the tuning queries: their median top-1 cosine.
    sample = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000), sample_queries=vectors[:5] * 2)
    assert sample.tuning["query_similarity"] == pytest.approx(0.99)
    # A stricter target needs at least as broad a search on the same index.
    strict = VideoIndex.load(index.save(Path(tempfile.mkdtemp()) / "idx"), IndexSettings(1000, recall_target=0.99))
    assert strict.tuning["nprobe"] >= t["nprobe"] and strict.tuning["recall_at_10"] >= 0.99
    assert index.describe() == {
        "index": "ivf",
        "index_videos": 4000,
        "index_nlist": 102,
        "index_nprobe": t["nprobe"],
        "index_recall_at_10": t["recall_at_10"],
        "index_recall_target": 0.95,
        "index_recall_met": True,
        "index_query_similarity": 0.3,
        "index_build_s": t["build_s"],
    }


def test_nlist_grows_with_the_square_root_of_the_library():
    assert [nlist_for(n) for n in (10, 50_000, 200_000, 1_000_000)] == [1, 1024, 2048, 4096]
    assert nlist_for(1_000_000, requested=1000) == 1000 and nlist_for(3900, requested=1000) == 100


def test_a_target_out_of_reach_keeps_the_cap_and_says_so():
    ids, vectors = _library(2000)  # uniform noise in 32 dimensions: the hardest case for cells
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000, recall_target=1.0, nprobe_max=3))
    t = index.tuning
    assert t["nprobe"] == 3 and t["recall_met"] == (t["recall_at_10"] >= 1.0) and not t["recall_met"]
    assert index.describe()["index_recall_met"] is False


def test_exact_search_in_chunks_matches_one_product(monkeypatch):
    ids, vectors = _library(100)
    queries = np.random.default_rng(2).normal(size=(4, 32)).astype(np.float32)
    whole = VideoIndex(ids, vectors).search(queries, k=9)
    monkeypatch.setattr("serving.index._EXACT_CHUNK", 7)
    chunked = VideoIndex(ids, vectors).search(queries, k=9)
    assert chunked[1] == whole[1]
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("nlist", -1), ("recall_target", 0.0), ("recall_target", 1.5), ("nprobe_max", 0), ("nprobe_max", True)],
)
def test_bad_index_settings_are_refused_by_name(setting: str, value: object):
    with pytest.raises(ConfigError, match=setting):
        IndexSettings(**{setting: value})
    with pytest.raises(ConfigError, match=setting):
        ServingConfig(**{setting: value})


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
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=10_000, nlist=16))
    loaded = VideoIndex.load(index.save(tmp_path / "idx"))
    assert loaded.ids == ids and loaded.settings == index.settings and not loaded.approximate
    np.testing.assert_allclose(loaded.vectors, index.vectors, rtol=1e-6)


def test_ivf_index_is_read_back_not_rebuilt(tmp_path: Path, monkeypatch):
    ids, vectors = _clustered(1500)
    index = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1000))
    folder = index.save(tmp_path / "idx")
    meta = json.loads((folder / "index.json").read_text())
    assert meta["kind"] == "ivf" and meta["tuning"] == index.tuning and (folder / IVF_FILE).is_file()

    def no_rebuild(*args):
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(VideoIndex, "_build_ivf", no_rebuild)
    loaded = VideoIndex.load(folder)
    assert loaded.tuning == index.tuning and loaded._lists()[0].nprobe == index.tuning["nprobe"]
    queries = _clustered(20, seed=3)[1]
    assert loaded.search(queries, 5)[1] == index.search(queries, 5)[1]
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    # Another nlist than the file's: built again from the embeddings.
    with pytest.raises(AssertionError, match="rebuilt"):
        VideoIndex.load(folder, IndexSettings(approx_threshold=1000, nlist=16))


@pytest.mark.parametrize(
    "earlier",
    [
        {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 40, "ef_search_max": 1024, "tuning": {"ef_search": 64}},
        {"nlist": 0, "nprobe": 16},  # IVF-Flat, before HNSW
    ],
)
def test_index_of_an_earlier_kind_still_loads(tmp_path: Path, earlier: dict):
    ids, vectors = _clustered(1200)
    folder = VideoIndex(ids, vectors).save(tmp_path / "idx")
    (folder / "hnsw.faiss").write_bytes(b"an HNSW graph")  # never read: the index is built again from the embeddings
    (folder / "index.json").write_text(json.dumps({"dim": 32, "count": 1200, "approx_threshold": 1000, **earlier}))
    loaded = VideoIndex.load(folder)
    assert loaded.approximate and loaded.settings == IndexSettings(approx_threshold=1000)
    assert loaded.tuning["recall_met"]

"""Search index: HNSW (serving/index.py) vs exact search vs the former IVF-Flat index, in one run.

Data: synthetic L2-normalized vectors drawn around ``--clusters`` random centres (video libraries are clustered by
topic; uniform random vectors would make every approximate index look bad and every query look the same).
Queries, two sets: ``near`` (a library vector plus small noise, cosine about 0.89 with it: the queries this
benchmark used before) and ``far`` (a library vector turned to cosine 0.3 with it: as far as CLIP's text queries
are from their best video; what serving/index.py tunes for). For each size:

- exact: the matrix product (``VideoIndex`` below its threshold);
- HNSW: ``VideoIndex`` above its threshold with the serving defaults (M 32, efConstruction 40, efSearch tuned to
  recall@10 >= 0.95 on its own tuning queries); build + tuning time, the chosen efSearch, its recall on both query
  sets, and the time to read the graph back from its file (what a server does on load) vs building it;
- IVF-Flat (baseline: the index serving used before, nlist 4*sqrt(N), nprobe 16; also nprobe 64), skipped above
  ``--ivf-max`` vectors (its k-means did not finish in 10 minutes at 1M here).

Each answers the queries one at a time (as the server does for an unbatched query): p50/p99 ms. Memory: the bytes
of each structure (faiss' serialized size, which is what it holds in memory; the vectors' bytes for exact) and the
process RSS growth while it was built. Recall@10 is the share of the exact top-10 returned.

Run: ``.venv/bin/python benchmarks/search_index.py [--sizes 20000,1000000] [--threads 1] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.config import IndexSettings
from serving.index import VideoIndex, normalize


def library(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = normalize(rng.standard_normal((clusters, dim)).astype(np.float32))
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, clusters, stop - start)
        out[start:stop] = centres[which] + 0.8 * rng.standard_normal((stop - start, dim)).astype(np.float32) / np.sqrt(
            dim
        )
    return normalize(out)


def turned(sources: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Each source turned in a random direction to ``cosine`` with itself."""
    away = rng.standard_normal(sources.shape).astype(np.float32)
    away = normalize(away - np.sum(away * sources, axis=1, keepdims=True) * sources)
    return normalize(cosine * sources + np.sqrt(1 - cosine**2) * away)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_at_a_time(search, queries: np.ndarray, k: int) -> dict[str, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3)}


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return round(sum(len(set(r.tolist()) & set(t.tolist())) for r, t in zip(rows, truth, strict=True)) / truth.size, 4)


def build_ivf(vectors: np.ndarray):
    """The IVF-Flat index serving/index.py built before HNSW (same parameters and training sample)."""
    import faiss

    n, dim = vectors.shape
    nlist = max(1, int(4 * np.sqrt(n)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[np.random.default_rng(0).choice(n, size=min(n, nlist * 64), replace=False)])
    ivf.add(vectors)
    return ivf


def serialized_mib(index) -> float:
    import faiss

    return round(faiss.serialize_index(index).nbytes / 2**20, 1)


def measure(n: int, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    k = args.k
    vectors = library(n, args.dim, args.clusters, rng)
    sources = vectors[rng.integers(0, n, args.queries)]
    near = normalize(sources + 0.5 * rng.standard_normal(sources.shape).astype(np.float32) / np.sqrt(args.dim))
    far = turned(vectors[rng.integers(0, n, args.queries)], 0.3, rng)
    ids = [str(i) for i in range(n)]
    row: dict = {"n": n, "dim": args.dim, "queries": args.queries}

    exact = VideoIndex(ids, vectors, IndexSettings(approx_threshold=n + 1))
    truth = {name: exact._exact(q, k)[1] for name, q in (("near", near), ("far", far))}
    row["exact"] = {**one_at_a_time(exact._exact, far, k), "mib": round(vectors.nbytes / 2**20, 1)}
    del exact

    before, t = rss_mib(), time.perf_counter()
    hnsw = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1))
    row["hnsw"] = {
        "build_and_tune_s": round(time.perf_counter() - t, 2),
        "build_s": hnsw.tuning["build_s"],
        "ef_search": hnsw.tuning["ef_search"],
        "tuning_recall_at_10": hnsw.tuning["recall_at_10"],
        **one_at_a_time(hnsw._hnsw.search, far, k),
        "recall_far": recall(hnsw._hnsw.search(far, k)[1], truth["far"]),
        "recall_near": recall(hnsw._hnsw.search(near, k)[1], truth["near"]),
        "mib": serialized_mib(hnsw._hnsw),
        "rss_growth_mib": round(rss_mib() - before, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = hnsw.save(Path(tmp) / "index")
        t = time.perf_counter()
        VideoIndex.load(folder)
        row["hnsw"]["load_s"] = round(time.perf_counter() - t, 2)
    del hnsw

    if n <= args.ivf_max:
        before, t = rss_mib(), time.perf_counter()
        ivf = build_ivf(vectors)
        row["ivf"] = {"build_s": round(time.perf_counter() - t, 2), "nlist": ivf.nlist}
        row["ivf"]["mib"] = serialized_mib(ivf)
        row["ivf"]["rss_growth_mib"] = round(rss_mib() - before, 1)
        for nprobe in (16, 64):
            ivf.nprobe = nprobe
            row["ivf"][f"nprobe={nprobe}"] = {
                **one_at_a_time(ivf.search, far, k),
                "recall_far": recall(ivf.search(far, k)[1], truth["far"]),
                "recall_near": recall(ivf.search(near, k)[1], truth["near"]),
            }
        del ivf
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000", help="library sizes, e.g. 20000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--ivf-max", type=int, default=200_000, help="skip the IVF baseline above this many vectors")
    p.add_argument("--threads", type=int, default=1, help="faiss and numpy BLAS threads (the server's share of a node)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    print(f"load average {os.getloadavg()}, cpus {os.cpu_count()}, threads {args.threads}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(n, args, rng))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"\nload average {os.getloadavg()}")
    print("\n| N | index | build s | p50 / p99 ms (far queries) | recall@10 far / near | MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e, h = r["exact"], r["hnsw"]
        print(f"| {r['n']:,} | exact | - | {e['p50_ms']} / {e['p99_ms']} | 1 / 1 | {e['mib']} |")
        print(
            f"| {r['n']:,} | HNSW M32 efSearch {h['ef_search']} | {h['build_s']} (+tune, load {h['load_s']}) | "
            f"{h['p50_ms']} / {h['p99_ms']} | {h['recall_far']} / {h['recall_near']} | {h['mib']} |"
        )
        for key in ("nprobe=16", "nprobe=64"):
            if "ivf" in r:
                s = r["ivf"][key]
                print(
                    f"| {r['n']:,} | IVF-Flat nlist {r['ivf']['nlist']} {key} | {r['ivf']['build_s']} | "
                    f"{s['p50_ms']} / {s['p99_ms']} | {s['recall_far']} / {s['recall_near']} | {r['ivf']['mib']} |"
                )


if __name__ == "__main__":
    main()

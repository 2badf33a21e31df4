"""Search index: the IVF index of serving/index.py vs exact search, the former HNSW graph and IVF-Flat, in one run.

Data: synthetic L2-normalized vectors drawn around ``--clusters`` random centres (video libraries are clustered by
topic; uniform random vectors would make every approximate index look bad and every query look the same).
Queries, two sets: ``near`` (a library vector plus small noise, cosine about 0.89 with it: the queries this
benchmark used before) and ``far`` (a library vector turned to cosine 0.3 with it: as far as CLIP's text queries
are from their best video; what serving/index.py tunes for). For each size:

- exact: the matrix product (``VideoIndex`` below its threshold; the baseline); timed on ``--exact-queries``
  queries (0.4 s p50 at 1M in the run of serving/README.md);
- IVF: ``VideoIndex`` above its threshold with the serving defaults (nlist about 4 sqrt(N), HNSW32 coarse
  quantizer, SQ8 codes, exact re-ranking of 4k candidates, nprobe tuned to recall@10 >= 0.95 on its own tuning
  queries); build and tuning time, the chosen nprobe, its recall on both query sets, and the time to read the
  index back from its file (what a server does on load);
- HNSW (the serving index before: faiss IndexHNSWFlat M 32, efConstruction 40) at efSearch 128 / 512 / 1024,
  skipped above ``--hnsw-max`` vectors (its build took 886 s at 1M here and reached recall 0.74 on far queries);
- IVF-Flat (the index before HNSW: nlist 4*sqrt(N), flat quantizer, nprobe 16 and 64), skipped above
  ``--ivf-max`` vectors (its k-means did not finish in 10 minutes at 1M here).

Each answers the queries one at a time (as the server does for an unbatched query): p50/p99 ms. Memory: the bytes
of each structure (faiss' serialized size, which is what it holds in memory; the vectors' bytes for exact) and the
process RSS growth while it was built. Recall@10 is the share of the exact top-10 returned. Builds use
``--build-threads`` faiss threads, searches ``--threads``.

Run: ``.venv/bin/python benchmarks/search_index.py [--sizes 200000,1000000] [--threads 1] [--out FILE]``
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
    import faiss
    from threadpoolctl import threadpool_limits

    k = args.k
    vectors = library(n, args.dim, args.clusters, rng)
    sources = vectors[rng.integers(0, n, args.queries)]
    near = normalize(sources + 0.5 * rng.standard_normal(sources.shape).astype(np.float32) / np.sqrt(args.dim))
    far = turned(vectors[rng.integers(0, n, args.queries)], 0.3, rng)
    ids = [str(i) for i in range(n)]
    row: dict = {"n": n, "dim": args.dim, "queries": args.queries}

    faiss.omp_set_num_threads(args.build_threads)
    exact = VideoIndex(ids, vectors, IndexSettings(approx_threshold=n + 1))
    with threadpool_limits(limits=args.build_threads, user_api="blas"):
        truth = {name: exact._exact(q, k)[1] for name, q in (("near", near), ("far", far))}
    faiss.omp_set_num_threads(args.threads)
    row["exact"] = {**one_at_a_time(exact._exact, far[: args.exact_queries], k), "mib": round(vectors.nbytes / 2**20)}
    del exact

    faiss.omp_set_num_threads(args.build_threads)
    before, t = rss_mib(), time.perf_counter()
    ivf = VideoIndex(ids, vectors, IndexSettings(approx_threshold=1))
    faiss.omp_set_num_threads(args.threads)
    row["ivf"] = {
        "build_and_tune_s": round(time.perf_counter() - t, 2),
        **{key: ivf.tuning[key] for key in ("build_s", "nlist", "nprobe")},
        "tuning_recall_at_10": ivf.tuning["recall_at_10"],
        **one_at_a_time(ivf._ivf.search, far, k),
        "recall_far": recall(ivf._ivf.search(far, k)[1], truth["far"]),
        "recall_near": recall(ivf._ivf.search(near, k)[1], truth["near"]),
        "mib": serialized_mib(ivf._ivf),
        "rss_growth_mib": round(rss_mib() - before, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = ivf.save(Path(tmp) / "index")
        t = time.perf_counter()
        VideoIndex.load(folder)
        row["ivf"]["load_s"] = round(time.perf_counter() - t, 2)
    del ivf

    if n <= args.hnsw_max:
        faiss.omp_set_num_threads(args.build_threads)
        before, t = rss_mib(), time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(vectors)
        faiss.omp_set_num_threads(args.threads)
        row["hnsw"] = {"build_s": round(time.perf_counter() - t, 2), "mib": serialized_mib(hnsw)}
        row["hnsw"]["rss_growth_mib"] = round(rss_mib() - before, 1)
        for ef in (128, 512, 1024):
            hnsw.hnsw.efSearch = ef
            row["hnsw"][f"efSearch={ef}"] = {
                **one_at_a_time(hnsw.search, far, k),
                "recall_far": recall(hnsw.search(far, k)[1], truth["far"]),
                "recall_near": recall(hnsw.search(near, k)[1], truth["near"]),
            }
        del hnsw

    if n <= args.ivf_max:
        faiss.omp_set_num_threads(args.build_threads)
        before, t = rss_mib(), time.perf_counter()
        ivf = build_ivf(vectors)
        faiss.omp_set_num_threads(args.threads)
        row["ivf_flat"] = {"build_s": round(time.perf_counter() - t, 2), "nlist": ivf.nlist}
        row["ivf_flat"]["mib"] = serialized_mib(ivf)
        row["ivf_flat"]["rss_growth_mib"] = round(rss_mib() - before, 1)
        for nprobe in (16, 64):
            ivf.nprobe = nprobe
            row["ivf_flat"][f"nprobe={nprobe}"] = {
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
    p.add_argument("--exact-queries", type=int, default=200, help="far queries timed on exact search")
    p.add_argument("--hnsw-max", type=int, default=200_000, help="skip the HNSW baseline above this many vectors")
    p.add_argument("--ivf-max", type=int, default=200_000, help="skip the IVF-Flat baseline above this many vectors")
    p.add_argument("--threads", type=int, default=1, help="faiss and numpy BLAS threads (the server's share of a node)")
    p.add_argument("--build-threads", type=int, default=0, help="faiss threads while building (0: the CPUs available)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args()

    from threadpoolctl import threadpool_limits

    from components.common.cpus import available_cpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.build_threads = args.build_threads or available_cpus()
    threadpool_limits(limits=args.threads, user_api="blas")
    print(
        f"load average {os.getloadavg()}, cpus {available_cpus()}, threads {args.threads}, build {args.build_threads}",
        flush=True,
    )
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
        e, i = r["exact"], r["ivf"]
        print(f"| {r['n']:,} | exact | - | {e['p50_ms']} / {e['p99_ms']} | 1 / 1 | {e['mib']} |")
        print(
            f"| {r['n']:,} | IVF{i['nlist']}_HNSW32,SQ8 + re-rank, nprobe {i['nprobe']} | {i['build_s']} "
            f"(+tune; load {i['load_s']}) | {i['p50_ms']} / {i['p99_ms']} | {i['recall_far']} / {i['recall_near']} "
            f"| {i['mib']} |"
        )
        for name, label in (("hnsw", "HNSW M32 efC40"), ("ivf_flat", "IVF-Flat")):
            for key, s in r.get(name, {}).items():
                if isinstance(s, dict):
                    print(
                        f"| {r['n']:,} | {label} {key} | {r[name]['build_s']} | {s['p50_ms']} / {s['p99_ms']} | "
                        f"{s['recall_far']} / {s['recall_near']} | {r[name]['mib']} |"
                    )


if __name__ == "__main__":
    main()

"""Search time over 10k, 100k and 1M indexed vectors: exact vs. faiss IVF-Flat (serving/index.py), with recall.

Data: synthetic L2-normalized vectors drawn around ``--clusters`` random centres (video libraries are clustered
by topic; uniform random vectors would make every approximate index look bad and every query look the same).
Queries: library vectors plus noise (a text query lands near, not on, its videos). For each size, the exact
index (a matrix product) and the IVF index (``nlist`` = sqrt(N) cells, ``nprobe`` swept) answer the same queries
one at a time (as the server does for an unbatched query) and as one batch; recall@k is the share of the exact
top-k the IVF returns (``VideoIndex.recall_at_k``).

Run: ``.venv/bin/python benchmarks/search_index.py [--sizes 10000,100000,1000000] [--dim 512] [--queries 200]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.index import IndexSettings, VideoIndex, normalize


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


def timed_queries(index: VideoIndex, queries: np.ndarray, k: int, exact: bool) -> dict[str, float]:
    one = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], k, exact=exact)
        one.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    index.search(queries, k, exact=exact)
    batch_ms = (time.perf_counter() - t) * 1000
    one.sort()
    return {
        "p50_ms": round(statistics.median(one), 3),
        "p99_ms": round(one[min(len(one) - 1, int(0.99 * len(one)))], 3),
        "batch_per_query_ms": round(batch_ms / len(queries), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--nprobes", default="4,16,64")
    p.add_argument("--threads", type=int, default=1, help="faiss and numpy BLAS threads (the server's share of a node)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")  # the exact search's matrix product
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = library(n, args.dim, args.clusters, rng)
        picks = rng.integers(0, n, args.queries)
        noise = 0.5 * rng.standard_normal((args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        queries = normalize(vectors[picks] + noise)
        ids = [str(i) for i in range(n)]
        exact = VideoIndex(ids, vectors, IndexSettings(approx_threshold=n + 1))
        row = {"n": n, "dim": args.dim, "exact": timed_queries(exact, queries, args.k, exact=True)}
        nlist = max(1, int(np.sqrt(n)))
        t = time.perf_counter()
        ivf = VideoIndex(
            ids,
            vectors,
            IndexSettings(approx_threshold=1, nlist=nlist, nprobe=max(int(x) for x in args.nprobes.split(","))),
        )
        row["ivf_build_s"] = round(time.perf_counter() - t, 2)
        row["nlist"] = nlist
        row["ivf"] = {}
        for nprobe in (int(x) for x in args.nprobes.split(",")):
            ivf._ivf.nprobe = min(nprobe, nlist)  # the benchmark sweeps what IndexSettings.nprobe sets
            stats = timed_queries(ivf, queries, args.k, exact=False)
            stats[f"recall_at_{args.k}"] = round(ivf.recall_at_k(queries, args.k), 4)
            row["ivf"][f"nprobe={nprobe}"] = stats
        rows.append(row)
        print(json.dumps(row), flush=True)
        del exact, ivf, vectors
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"\n| N | exact p50 / p99 ms | IVF nlist | nprobe | IVF p50 / p99 ms | recall@{args.k} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for key, s in r["ivf"].items():
            e = r["exact"]
            print(
                f"| {r['n']:,} | {e['p50_ms']} / {e['p99_ms']} | {r['nlist']} | {key.split('=')[1]} | "
                f"{s['p50_ms']} / {s['p99_ms']} | {s[f'recall_at_{args.k}']} |"
            )


if __name__ == "__main__":
    main()

"""evaluate (CLIP part): text-to-video retrieval of the challenger vs. the champion (or the base model).

Definitions (the same code and the same test split for both models):

- Queries: the unique label texts of the test videos (sorted). Relevant videos of a query: the test videos
  carrying that label. A query's category: the most frequent category of its relevant videos.
- Rank: the 1-based position of the first relevant video when all test videos are sorted by decreasing
  cosine similarity to the query (ties keep the lower video index first). Recall@K: share of queries with
  rank <= K. Median rank: median of the ranks. AP: mean over the relevant videos of the precision at their
  positions; mAP: mean AP over queries.
- Top-1 accuracy per category, two views: ``query_top1_by_category`` (text to video: share of the
  category's queries whose first video is relevant) and ``video_top1_by_category`` (video to text: share of
  the category's test videos whose most similar query is one of their labels).
- Per-query arrays (rank, hit@1/5/10, AP) are kept by query text, so the A/B gate can run a paired test.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.common.config import ClientConfig
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import ClipSample

logger = logging.getLogger("clipsync.evaluate")

RELEVANCE = ("label", "category")
REPORT_FILES = ("clip_eval.json", "clip_per_query.json", "clip_report.md", "clip_report.html", "clip_per_category.png")


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


def score_model(
    bundle: Any, samples: Sequence[ClipSample], pooling: str, device: str = "cpu", relevance: str = "label"
) -> RetrievalResult:
    """Embed ``samples`` and their label queries with one model on ``device`` and compute the retrieval metrics."""
    from components.common.device import resolve_device
    from components.finetune_clip.core import query_video_similarity

    model = bundle.model.to(resolve_device(device)).eval()
    queries, relevant, q_cats = retrieval_problem(samples, relevance)
    sim = query_video_similarity(bundle, model, samples, queries, pooling)
    return retrieval_metrics(sim.cpu().numpy(), relevant, q_cats, [s.category for s in samples], queries)


@dataclass
class ClipEvalReport:
    """Challenger vs. baseline on the test split."""

    challenger: RetrievalResult
    baseline: RetrievalResult
    baseline_kind: str
    n_test_videos: int
    skipped: list[dict[str, str]]
    files: dict[str, str]
    relevance: str = "label"

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow (``clip_challenger_*``, ``clip_baseline_*``, ``clip_delta_*``)."""
        out: dict[str, float] = {
            "clip_n_test_videos": self.n_test_videos,
            "clip_n_queries": len(self.challenger.queries),
        }
        for role, res in (("challenger", self.challenger), ("baseline", self.baseline)):
            for key in ("recall_at_1", "recall_at_5", "recall_at_10", "median_rank", "mean_ap"):
                out[f"clip_{role}_{key}"] = getattr(res, key)
        for key in ("recall_at_1", "recall_at_5", "recall_at_10", "mean_ap"):
            out[f"clip_delta_{key}"] = getattr(self.challenger, key) - getattr(self.baseline, key)
        return out


def evaluate_clip(
    challenger: str | Path,
    baseline: str | Path,
    frames_dir: Path,
    out_dir: Path,
    baseline_kind: str = "base",
    frames_per_video: int = 4,
    pooling: str = "mean",
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    relevance: str = "label",
) -> ClipEvalReport:
    """Score the challenger and the baseline on the test split with the same code, write the report.

    Args:
        challenger: The challenger's model folder (or any reference :func:`load_clip_model` accepts).
        baseline: The champion's model folder, or the base model reference on the first month.
        frames_dir: The frame_extraction Dataset (its ``test`` split is used).
        out_dir: Folder for the report files (:data:`REPORT_FILES`).
        baseline_kind: How the baseline is named in the report (``champion v3``, ``base``).
        frames_per_video: Frames per video for a model without a card (a model folder's card wins).
        pooling: Pooling for a model without a card.
        cache_dir: Model cache for base references.
        device: The ``device`` setting (``auto``: CUDA when available).
        relevance: ``label`` or ``category`` (see :func:`retrieval_problem`).

    Returns:
        The report (also written to ``out_dir``).
    """
    from components.finetune_clip.core import load_frame_samples
    from components.finetune_clip.model import load_clip_model

    results: dict[str, RetrievalResult] = {}
    n_test, skipped, test_ids = 0, [], None
    for role, ref in (("challenger", challenger), ("baseline", baseline)):
        bundle = load_clip_model(ref, cache_dir)
        k = int(bundle.card.get("frames_per_video", frames_per_video))
        pool = str(bundle.card.get("pooling", pooling))
        data, skipped_now = load_frame_samples(Path(frames_dir), ("test",), bundle.image_spec, k)
        test = data["test"]
        if not test:
            raise ValueError(f"no labelled test video in {frames_dir}")
        ids = [s.video_id for s in test]
        if test_ids is None:
            n_test, skipped, test_ids = len(test), skipped_now, ids
        elif ids != test_ids:
            raise RuntimeError("challenger and baseline were scored on different test videos")
        results[role] = score_model(bundle, test, pool, device, relevance)
        logger.info(
            "%s (%s): R@1 %.3f, mAP %.3f on %d queries",
            role,
            ref,
            results[role].recall_at_1,
            results[role].mean_ap,
            len(results[role].queries),
        )
        del bundle
    report = ClipEvalReport(results["challenger"], results["baseline"], baseline_kind, n_test, skipped, {}, relevance)
    report.files = write_clip_report(report, Path(out_dir))
    return report


def write_clip_report(report: ClipEvalReport, out_dir: Path) -> dict[str, str]:
    """Write metrics JSON, paired per-query JSON, Markdown table, bar chart PNG and HTML. Returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ch, bl = report.challenger, report.baseline
    if ch.queries != bl.queries:
        raise ValueError("challenger and baseline were scored on different queries")
    summary = {
        "relevance": report.relevance,
        "baseline_kind": report.baseline_kind,
        "n_test_videos": report.n_test_videos,
        "challenger": ch.summary(),
        "baseline": bl.summary(),
        "skipped": report.skipped,
    }
    files = {name: str(out_dir / name) for name in REPORT_FILES}
    Path(files["clip_eval.json"]).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    paired = {
        "queries": ch.queries,
        "query_categories": ch.query_categories,
        "challenger": ch.per_query(),
        "baseline": bl.per_query(),
    }
    Path(files["clip_per_query.json"]).write_text(json.dumps(paired) + "\n")
    _plot_categories(ch, bl, report.baseline_kind, Path(files["clip_per_category.png"]))
    md = _markdown(report)
    Path(files["clip_report.md"]).write_text(md)
    png64 = base64.b64encode(Path(files["clip_per_category.png"]).read_bytes()).decode()
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>CLIP retrieval</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        + _md_to_html(md)
        + f"<img alt='per-category top-1' src='data:image/png;base64,{png64}'/></body></html>\n"
    )
    Path(files["clip_report.html"]).write_text(html)
    return files


def _markdown(report: ClipEvalReport) -> str:
    ch, bl = report.challenger, report.baseline
    lines = [
        "# CLIP text-to-video retrieval: challenger vs. " + report.baseline_kind,
        "",
        f"Test split: {report.n_test_videos} videos, {len(ch.queries)} queries (unique label texts); relevant"
        + (
            " videos: those of the query's category."
            if report.relevance == "category"
            else " videos: those carrying the label."
        ),
        "",
        f"| metric | {report.baseline_kind} | challenger | change |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("recall_at_1", "Recall@1"),
        ("recall_at_5", "Recall@5"),
        ("recall_at_10", "Recall@10"),
        ("mean_ap", "mAP"),
        ("median_rank", "median rank"),
    ):
        a, b = getattr(bl, key), getattr(ch, key)
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    lines += [
        "",
        "## Top-1 accuracy per category",
        "",
        f"| category | queries | text→video {report.baseline_kind} | text→video challenger |"
        f" video→text {report.baseline_kind} | video→text challenger |",
        "|---|---|---|---|---|---|",
    ]
    cats = sorted(set(ch.query_top1_by_category) | set(ch.video_top1_by_category))
    n_by_cat = Counter(ch.query_categories)
    for c in cats:
        vals = [
            bl.query_top1_by_category.get(c),
            ch.query_top1_by_category.get(c),
            bl.video_top1_by_category.get(c),
            ch.video_top1_by_category.get(c),
        ]
        cells = " | ".join("n/a" if v is None else f"{100 * v:.0f}%" for v in vals)
        lines.append(f"| {c or '(none)'} | {n_by_cat.get(c, 0)} | {cells} |")
    better = int(np.sum(ch.rank < bl.rank))
    worse = int(np.sum(ch.rank > bl.rank))
    lines += [
        "",
        f"Paired per query: the challenger ranks the first relevant video higher on {better} queries,"
        f" lower on {worse}, equal on {len(ch.queries) - better - worse}.",
        "",
    ]
    return "\n".join(lines)


def _md_to_html(md: str) -> str:
    import html

    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def _plot_categories(ch: RetrievalResult, bl: RetrievalResult, baseline_kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, attr, title in (
        (axes[0], "query_top1_by_category", "text → video top-1 (per query)"),
        (axes[1], "video_top1_by_category", "video → label top-1 (per video)"),
    ):
        cats = sorted(set(getattr(ch, attr)) | set(getattr(bl, attr)))
        x = np.arange(len(cats))
        before = [100 * getattr(bl, attr).get(c, 0.0) for c in cats]
        after = [100 * getattr(ch, attr).get(c, 0.0) for c in cats]
        ax.bar(x - 0.2, before, 0.4, label=baseline_kind, color="#999999")
        ax.bar(x + 0.2, after, 0.4, label="challenger", color="#2a7ab0")
        ax.set_xticks(x, [c or "(none)" for c in cats], rotation=30, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title)
        ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_evaluate_clip(
    frames_dir: Path,
    challenger_dir: Path,
    out_dir: Path,
    config: ClientConfig,
    cfg: FinetuneClipConfig,
    log_to_active_run: bool = True,
) -> ClipEvalReport:
    """The CLIP half of the evaluate stage: challenger vs. champion (or the base model on the first month).

    Call it inside the evaluate stage's ``tracking.stage_run`` block when ``log_to_active_run`` is set: the
    metrics go to the active run and the report files to its ``evaluate_clip/`` artifacts.

    Args:
        frames_dir: The frame_extraction Dataset.
        challenger_dir: The finetune_clip Model artifact.
        out_dir: Folder for the report files.
        config: The client's configuration (tracking, state_dir, cache_dir).
        cfg: The finetune_clip settings (base model, pooling and frames for the base model).
        log_to_active_run: Log metrics and artifacts to MLflow's active run.

    Returns:
        The report.
    """
    import tempfile

    from components.common import tracking
    from components.finetune_clip.model import resolve_base_ref

    name = f"clip-{config.client_id}"
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    version = tracking.get_version_by_alias(config.tracking, name, "champion")
    with tempfile.TemporaryDirectory(dir=config.state_dir, prefix=".champion-") as tmp:
        if version is not None:
            baseline: str | Path = tracking.download_version(config.tracking, name, version, Path(tmp) / "champion")
            kind = f"champion v{version}"
        else:
            baseline, kind = resolve_base_ref(cfg.base_model, config.state_dir), "base"
        report = evaluate_clip(
            challenger_dir,
            baseline,
            frames_dir,
            out_dir,
            kind,
            cfg.frames_per_video,
            cfg.pooling,
            config.cache_dir,
            cfg.device,
            cfg.eval_relevance,
        )
    if log_to_active_run:
        import mlflow

        tracking.log_metrics(report.as_metrics())
        mlflow.log_artifacts(str(out_dir), "evaluate_clip")
    return report

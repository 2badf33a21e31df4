"""evaluate (CLIP part): text-to-video retrieval of the challenger vs. the champion (or the base model).

Both models are scored with the same code on the same test split; the metrics and their definitions are
:mod:`components.finetune_clip.metrics` (what training validates with). The per-query arrays are written beside
the summary so that the A/B gate can run a paired test.

Every figure carries its confidence interval and the number of queries it rests on (:func:`clip_estimates`:
Wilson for R@k and each category's R@1, a bootstrap over queries for mAP; :mod:`components.common.stats`).
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

from components.common.stats import bootstrap_mean, wilson
from components.evaluate.config import EvaluateConfig
from components.finetune_clip.metrics import (
    RetrievalResult,
    query_video_similarity,
    retrieval_metrics,
    retrieval_problem,
)

if TYPE_CHECKING:
    from components.finetune_clip.data import ClipSample

logger = logging.getLogger("clipsync.evaluate")

REPORT_FILES = ("clip_eval.json", "clip_per_query.json", "clip_report.md", "clip_report.html", "clip_per_category.png")


def score_model(
    bundle: Any, samples: Sequence[ClipSample], pooling: str, device: str = "cpu", relevance: str = "label"
) -> RetrievalResult:
    """Embed ``samples`` and their label queries with one model on ``device`` and compute the retrieval metrics."""
    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_device

    set_torch_threads()
    model = bundle.model.to(resolve_device(device)).eval()
    queries, relevant, q_cats = retrieval_problem(samples, relevance)
    sim = query_video_similarity(bundle, model, samples, queries, pooling)
    return retrieval_metrics(sim.cpu().numpy(), relevant, q_cats, [s.category for s in samples], queries)


def clip_estimates(result: RetrievalResult, evaluation: EvaluateConfig | None = None) -> dict[str, Any]:
    """One model's retrieval figures with their confidence intervals over the test queries.

    Args:
        result: The model's retrieval metrics.
        evaluation: The ``evaluate`` settings (level, resamples, seed); defaults when ``None``.

    Returns:
        ``recall_at_1`` / ``_5`` / ``_10`` (Wilson), ``mean_ap`` (bootstrap over queries) and, per query category,
        ``recall_at_1_by_category`` and ``mean_ap_by_category``, each an :meth:`Estimate.to_dict`.
    """
    ev = evaluation or EvaluateConfig()
    n = len(result.queries)
    out: dict[str, Any] = {
        f"recall_at_{k}": wilson(int(result.hits(k).sum()), n, ev.confidence).to_dict() for k in (1, 5, 10)
    }
    out["mean_ap"] = bootstrap_mean(result.average_precision, ev.confidence, ev.n_bootstrap, ev.seed).to_dict()
    cats = np.asarray(result.query_categories, dtype=object)
    hit1 = result.hits(1)
    out["recall_at_1_by_category"], out["mean_ap_by_category"] = {}, {}
    for c in sorted(set(result.query_categories)):
        mask = cats == c
        out["recall_at_1_by_category"][c] = wilson(int(hit1[mask].sum()), int(mask.sum()), ev.confidence).to_dict()
        ap = result.average_precision[mask]
        out["mean_ap_by_category"][c] = bootstrap_mean(ap, ev.confidence, ev.n_bootstrap, ev.seed).to_dict()
    return out


@dataclass
class ClipEvalReport:
    """Challenger vs. baseline on the test split; ``estimates``: role -> :func:`clip_estimates` (the CIs)."""

    challenger: RetrievalResult
    baseline: RetrievalResult
    baseline_kind: str
    n_test_videos: int
    skipped: list[dict[str, str]]
    files: dict[str, str]
    relevance: str = "label"
    estimates: dict[str, dict] = field(default_factory=dict)

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
        for role, estimates in self.estimates.items():
            for key in ("recall_at_1", "mean_ap"):
                if estimates[key]["low"] is not None:
                    out[f"clip_{role}_{key}_ci_low"] = estimates[key]["low"]
                    out[f"clip_{role}_{key}_ci_high"] = estimates[key]["high"]
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
    evaluation: EvaluateConfig | None = None,
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
        evaluation: The ``evaluate`` settings (confidence intervals); defaults when ``None``.

    Returns:
        The report (also written to ``out_dir``).
    """
    from components.finetune_clip.data import load_frame_samples
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
    estimates = {role: clip_estimates(res, evaluation) for role, res in results.items()}
    report = ClipEvalReport(
        results["challenger"], results["baseline"], baseline_kind, n_test, skipped, {}, relevance, estimates
    )
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
        "estimates": report.estimates,
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
        lines.append(
            f"| {label} | {_with_ci(a, report, 'baseline', key)} | {_with_ci(b, report, 'challenger', key)}"
            f" | {b - a:+.3f} |"
        )
    lines += [
        "",
        "## Top-1 accuracy per category",
        "",
        f"| category | queries | text→video {report.baseline_kind} | text→video challenger |"
        f" challenger R@1 {_level(report)} CI |"
        f" video→text {report.baseline_kind} | video→text challenger |",
        "|---|---|---|---|---|---|---|",
    ]
    by_cat = report.estimates.get("challenger", {}).get("recall_at_1_by_category", {})
    cats = sorted(set(ch.query_top1_by_category) | set(ch.video_top1_by_category))
    n_by_cat = Counter(ch.query_categories)
    for c in cats:
        vals = [
            bl.query_top1_by_category.get(c),
            ch.query_top1_by_category.get(c),
            bl.video_top1_by_category.get(c),
            ch.video_top1_by_category.get(c),
        ]
        cells = ["n/a" if v is None else f"{100 * v:.0f}%" for v in vals]
        est = by_cat.get(c) or {}
        ci = f"[{100 * est['low']:.0f}%, {100 * est['high']:.0f}%]" if est.get("low") is not None else "n/a"
        lines.append(
            f"| {c or '(none)'} | {n_by_cat.get(c, 0)} | {' | '.join(cells[:2])} | {ci} | {' | '.join(cells[2:])} |"
        )
    better = int(np.sum(ch.rank < bl.rank))
    worse = int(np.sum(ch.rank > bl.rank))
    lines += [
        "",
        f"Paired per query: the challenger ranks the first relevant video higher on {better} queries,"
        f" lower on {worse}, equal on {len(ch.queries) - better - worse}.",
        "",
        f"Intervals: {_level(report)} Wilson for R@k (over the {len(ch.queries)} queries), percentile bootstrap over"
        " queries for mAP. A category with a handful of queries has a wide interval: read its top-1 with it.",
        "",
    ]
    return "\n".join(lines)


def _level(report: ClipEvalReport) -> str:
    est = report.estimates.get("challenger", {}).get("recall_at_1", {})
    return f"{est.get('confidence', 0.95):.0%}"


def _with_ci(value: float, report: ClipEvalReport, role: str, key: str) -> str:
    est = report.estimates.get(role, {}).get(key)
    if not est or est.get("low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{est['low']:.3f}, {est['high']:.3f}]"


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

"""monitor: this month against the last with Evidently (drift per production signal) and accuracy over months.

Signals (:class:`MonthSignals`; each needs ``min_samples`` values on both sides, else it is reported as not
evaluated with the reason):

- ``query_embedding``: the month's search texts embedded by the champion's text tower, against last month's
  (``EmbeddingsDrift``, MMD);
- ``top1_confidence``: the calibrated confidence of each search's top result, against last month's (``ValueDrift``);
- ``low_confidence_rate``: whether each search was flagged low-confidence (``ValueDrift``, categorical);
- ``feedback_precision``: relevant yes/no of each rated search result (``ValueDrift``, categorical);
- ``upload_embedding``: the month's new uploads' video embeddings, against the library before them
  (``EmbeddingsDrift``, MMD);
- ``lipsync_score``: the lip-sync manipulation probabilities, against last month's (``ValueDrift``).

Whether a signal drifted is Evidently's own verdict: the status of the test it attaches to the metric
(``ValueDrift``: its stattest and threshold, chosen by Evidently for the column's type and size; ``EmbeddingsDrift``:
MMD without bootstrap against ``embedding_threshold``, Evidently's default 0.015). Nothing here re-implements a
drift test. Each report is written as Evidently's self-contained HTML and its JSON; ``summary.json`` and
``summary.md`` list every signal with its method, score, threshold, drift yes/no and the month's value (mean
confidence, low-confidence rate, feedback precision).

:func:`accuracy_over_months` reads the registry and the runs of a client's monthly DAG runs (the champion's R@1,
mAP and per-category top-1, lip-sync AUC, promote or keep) and the monitor summaries, for ``clipsync monitor``.
Why this file is long: the six signals share one gathering, one Evidently report writer and one summary, which the
accuracy-over-months reader (its plot and page) reads back month by month.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.common.names import registered_name
from components.common.stage import StageContext
from components.monitor.config import MonitorConfig

if TYPE_CHECKING:
    from serving.config import ServingConfig

logger = logging.getLogger("clipsync.monitor")

SUMMARY_FILE = "summary.json"
#: The perplexity of the t-SNE in Evidently's embedding drift report (sklearn's default; it needs more rows).
TSNE_PERPLEXITY = 30
MONITOR_PREFIX = "monitor"
SIGNALS = (
    "query_embedding",
    "top1_confidence",
    "low_confidence_rate",
    "feedback_precision",
    "upload_embedding",
    "lipsync_score",
)


@dataclass
class MonthSignals:
    """One month's production signals (``None``: not available that month).

    Attributes:
        month: ``YYYY-MM``.
        query_embeddings: ``[Q, D]`` text embeddings of the month's searches.
        confidence: ``[Q]`` calibrated confidence of each search's top result.
        low_confidence: ``[Q]`` bool, flagged low-confidence.
        feedback_relevant: ``[R]`` bool, each rated search result's answer.
        upload_embeddings: ``[N, D]`` video embeddings of the month's new uploads.
        library_embeddings: ``[M, D]`` video embeddings of the library before them (the reference of uploads).
        lipsync_scores: ``[K]`` manipulation probabilities the lip-sync model gave.
    """

    month: str
    query_embeddings: np.ndarray | None = None
    confidence: np.ndarray | None = None
    low_confidence: np.ndarray | None = None
    feedback_relevant: np.ndarray | None = None
    upload_embeddings: np.ndarray | None = None
    library_embeddings: np.ndarray | None = None
    lipsync_scores: np.ndarray | None = None


@dataclass
class SignalResult:
    """One signal compared: Evidently's method, score and verdict, and the month's value."""

    signal: str
    evaluated: bool
    method: str = ""
    score: float | None = None
    threshold: float | None = None
    drift: bool | None = None
    n_current: int = 0
    n_reference: int = 0
    current_value: float | None = None
    reference_value: float | None = None
    report: str = ""
    note: str = ""


@dataclass
class MonitorReport:
    """All signals of one month against the last."""

    month: str
    reference_month: str
    signals: list[SignalResult] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def get(self, signal: str) -> SignalResult:
        return next(s for s in self.signals if s.signal == signal)

    def as_metrics(self) -> dict[str, float]:
        """``monitor_<signal>_drift`` (0/1), ``_score`` and ``_value`` for MLflow (undefined values left out)."""
        out: dict[str, float] = {}
        for s in self.signals:
            for key, value in (("drift", s.drift), ("score", s.score), ("value", s.current_value)):
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    out[f"monitor_{s.signal}_{key}"] = float(value)
        return out

    def to_markdown(self) -> str:
        lines = [
            f"# monitor: {self.month} vs {self.reference_month}",
            "",
            "| signal | drift | method | score | threshold | this month | last month | n (this/last) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.signals:
            if not s.evaluated:
                lines.append(f"| {s.signal} | not evaluated: {s.note} | | | | {_fmt(s.current_value)} | | |")
                continue
            lines.append(
                f"| {s.signal} | {'**yes**' if s.drift else 'no'} | {s.method} | {_fmt(s.score)} | "
                f"{_fmt(s.threshold)} | {_fmt(s.current_value)} | {_fmt(s.reference_value)} | "
                f"{s.n_current}/{s.n_reference} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None or len(values) == 0 else float(np.mean(np.asarray(values, dtype=float)))


def _sample(rows: np.ndarray, limit: int) -> np.ndarray:
    if len(rows) <= limit:
        return rows
    return rows[np.sort(np.random.default_rng(0).choice(len(rows), limit, replace=False))]


def _run_report(metrics: list[Any], current: Any, reference: Any, definition: Any) -> dict[str, Any]:
    """One Evidently report with tests; returns its snapshot and its dict."""
    from evidently import Dataset, Report

    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    return {"snapshot": snapshot, "dict": snapshot.dict()}


def _verdicts(result: dict[str, Any]) -> dict[str, tuple[float, bool, str]]:
    """metric id -> (score, drifted, test description), from the report's own tests (FAIL: drift)."""
    values = {m["id"]: float(m["value"]) for m in result["dict"]["metrics"]}
    out = {}
    for test in result["dict"]["tests"]:
        metric_id = test["metric_config"]["metric_id"]
        out[metric_id] = (values[metric_id], test["status"] != "SUCCESS", test["description"])
    return out


def _compare_values(
    signal: str, column: str, current: np.ndarray, reference: np.ndarray, categorical: bool
) -> tuple[SignalResult, dict[str, Any]]:
    import pandas as pd
    from evidently import DataDefinition
    from evidently.metrics import ValueDrift

    def frame(values: np.ndarray) -> Any:
        values = np.asarray(values)
        return pd.DataFrame(
            {column: np.where(values.astype(bool), "yes", "no") if categorical else values.astype(float)}
        )

    definition = (
        DataDefinition(categorical_columns=[column]) if categorical else DataDefinition(numerical_columns=[column])
    )
    result = _run_report([ValueDrift(column=column)], frame(current), frame(reference), definition)
    metric = result["dict"]["metrics"][0]
    score, drifted, _ = _verdicts(result)[metric["id"]]
    return (
        SignalResult(
            signal,
            True,
            method=str(metric["config"].get("method", "")),
            score=score,
            threshold=metric["config"].get("threshold"),
            drift=drifted,
        ),
        result,
    )


def _compare_embeddings(
    signal: str, current: np.ndarray, reference: np.ndarray, threshold: float
) -> tuple[SignalResult, dict[str, Any]]:
    import pandas as pd
    from evidently import DataDefinition
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import MMDDriftMethod
    from evidently.tests import lte

    columns = [f"{signal}_{i}" for i in range(current.shape[1])]
    definition = DataDefinition(embeddings={signal: columns})
    metric = EmbeddingsDrift(
        embeddings_name=signal,
        drift_method=MMDDriftMethod(bootstrap=False, threshold=threshold),
        tests=[lte(threshold)],
    )
    result = _run_report(
        [metric],
        pd.DataFrame(np.asarray(current, dtype=float), columns=columns),
        pd.DataFrame(np.asarray(reference, dtype=float), columns=columns),
        definition,
    )
    score, drifted, _ = next(iter(_verdicts(result).values()))
    return SignalResult(signal, True, method="mmd", score=score, threshold=threshold, drift=drifted), result


def monitor_month(
    current: MonthSignals, reference: MonthSignals, out_dir: Path, config: MonitorConfig | None = None
) -> MonitorReport:
    """Compare ``current`` with ``reference`` signal by signal; write each Evidently report and the summary.

    Args:
        current: This month's signals.
        reference: Last month's signals (``upload_embedding`` takes its reference from
            ``current.library_embeddings`` instead).
        out_dir: Where ``<signal>.html``, ``<signal>.json``, ``summary.json`` and ``summary.md`` go.
        config: Sample sizes and thresholds.

    Returns:
        The report (also in ``summary.json``).
    """
    cfg = config or MonitorConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = MonitorReport(current.month, reference.month)
    pairs: dict[str, tuple[np.ndarray | None, np.ndarray | None, str]] = {
        "query_embedding": (current.query_embeddings, reference.query_embeddings, "embedding"),
        "top1_confidence": (current.confidence, reference.confidence, "numerical"),
        "low_confidence_rate": (current.low_confidence, reference.low_confidence, "categorical"),
        "feedback_precision": (current.feedback_relevant, reference.feedback_relevant, "categorical"),
        "upload_embedding": (current.upload_embeddings, current.library_embeddings, "embedding"),
        "lipsync_score": (current.lipsync_scores, reference.lipsync_scores, "numerical"),
    }
    for signal, (cur, ref, kind) in pairs.items():
        n_cur = 0 if cur is None else len(cur)
        n_ref = 0 if ref is None else len(ref)
        values = (None, None) if kind == "embedding" else (_mean(cur), _mean(ref))
        if n_cur < cfg.min_samples or n_ref < cfg.min_samples:
            note = f"needs {cfg.min_samples} values on each side, has {n_cur} this month and {n_ref} for reference"
            report.signals.append(SignalResult(signal, False, n_current=n_cur, n_reference=n_ref, note=note))
            report.signals[-1].current_value = values[0]
            continue
        if kind == "embedding" and n_cur + n_ref <= TSNE_PERPLEXITY:
            # Evidently's embedding report draws a t-SNE of both sides: sklearn refuses perplexity >= rows.
            note = f"needs more than {TSNE_PERPLEXITY} embeddings in all (t-SNE), has {n_cur} + {n_ref}"
            report.signals.append(SignalResult(signal, False, n_current=n_cur, n_reference=n_ref, note=note))
            continue
        cur, ref = _sample(np.asarray(cur), cfg.max_rows), _sample(np.asarray(ref), cfg.max_rows)
        if kind == "embedding":
            result, evidently_run = _compare_embeddings(signal, cur, ref, cfg.embedding_threshold)
        else:
            result, evidently_run = _compare_values(signal, signal, cur, ref, kind == "categorical")
        result.n_current, result.n_reference = n_cur, n_ref
        result.current_value, result.reference_value = values
        html, js = out_dir / f"{signal}.html", out_dir / f"{signal}.json"
        evidently_run["snapshot"].save_html(str(html))
        evidently_run["snapshot"].save_json(str(js))
        result.report = html.name
        report.files[signal] = str(html)
        report.signals.append(result)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary_dict(report), indent=2, sort_keys=True) + "\n")
    (out_dir / "summary.md").write_text(report.to_markdown())
    report.files["summary"] = str(out_dir / SUMMARY_FILE)
    for s in report.signals:
        if s.evaluated:
            logger.info(
                "monitor %s: drift %s (%s, score %.4g, threshold %s)",
                s.signal,
                "yes" if s.drift else "no",
                s.method,
                s.score,
                s.threshold,
            )
        else:
            logger.info("monitor %s: not evaluated (%s)", s.signal, s.note)
    return report


def summary_dict(report: MonitorReport) -> dict[str, Any]:
    return {
        "month": report.month,
        "reference_month": report.reference_month,
        "signals": [asdict(s) for s in report.signals],
    }


# ------------------------------------------------------------------------------------------------ gathering


def query_signals(store: Any, model: str, month: str, embed_texts: Any = None) -> MonthSignals:
    """The search-side signals of ``month`` from the query log and the feedback in ``store``.

    Args:
        store: The client's artifacts store.
        model: ``clip-<client>``.
        month: ``YYYY-MM``.
        embed_texts: ``list[str] -> [Q, D]`` (the champion's text tower); ``None``: no query embeddings.
    """
    from serving.feedback import read_feedback
    from serving.querylog import read_month

    log = [e for e in read_month(store, model, month) if e.get("confidence") is not None]
    rated = [e for e in read_feedback(store, model, month) if e.get("rank") is not None]
    signals = MonthSignals(month)
    if log:
        signals.confidence = np.array([float(e["confidence"]) for e in log])
        signals.low_confidence = np.array([bool(e["low_confidence"]) for e in log])
        if embed_texts is not None:
            signals.query_embeddings = np.asarray(embed_texts([e["query"] for e in log]), dtype=np.float32)
    if rated:
        signals.feedback_relevant = np.array([bool(e["relevant"]) for e in rated])
    return signals


def monitor_store_month(
    store: Any,
    model: str,
    month: str,
    out_dir: Path,
    embed_texts: Any = None,
    uploads: tuple[np.ndarray, np.ndarray] | None = None,
    lipsync_scores: tuple[np.ndarray, np.ndarray] | None = None,
    config: MonitorConfig | None = None,
) -> MonitorReport:
    """Monitor ``month`` of ``model`` against the month before and publish the reports to ``store``.

    Args:
        store: The client's artifacts store (query log and feedback in; ``monitor/<model>/<month>/`` out).
        model: ``clip-<client>``.
        month: ``YYYY-MM``.
        out_dir: Local folder for the reports.
        embed_texts: The champion's text tower (``list[str] -> [Q, D]``); ``None``: no query-embedding drift.
        uploads: (the month's new uploads' video embeddings, the library's before them), if known.
        lipsync_scores: (this month's, last month's) lip-sync manipulation probabilities, if known.
        config: Sample sizes and thresholds.
    """
    from components.feedback.core import previous_month

    current = query_signals(store, model, month, embed_texts)
    reference = query_signals(store, model, previous_month(month), embed_texts)
    if uploads is not None:
        current.upload_embeddings, current.library_embeddings = uploads
    if lipsync_scores is not None:
        current.lipsync_scores, reference.lipsync_scores = lipsync_scores
    report = monitor_month(current, reference, out_dir, config)
    for path in sorted(out_dir.iterdir()):
        if path.is_file():
            store.put_file(f"{MONITOR_PREFIX}/{model}/{month}/{path.name}", path)
    return report


def run_monitor(
    frames_dir: Path | None,
    lipsync_eval_dir: Path | None,
    out_dir: Path,
    cfg: MonitorConfig,
    ctx: StageContext,
    serving: ServingConfig,
) -> MonitorReport:
    """The monitor stage: last month's production signals against the month before, every month.

    The month is the one the run's window closes (the run on 1 November monitors October): its query log and
    feedback (where the model server writes them, ``serving.query_log_uri``), the champion CLIP's embeddings of
    the searches' texts and of the window's new uploads against the library saved by earlier monitor runs, and
    the lip-sync scores of evaluate_lipsync against last month's. Reports (Evidently HTML + JSON per signal,
    ``summary.json``/``summary.md``) go to ``out_dir``, to ``monitor/clip-<client>/<month>/`` of the store and to
    the stage run's artifacts with the accuracy-over-months plot of ``clipsync monitor``. Nothing trains here, so
    it runs in a month without a challenger too.

    Args:
        frames_dir: The frame_extraction Dataset (the window's uploads); ``None``: no upload signal.
        lipsync_eval_dir: evaluate_lipsync's report folder; ``None``: no lip-sync signal.
        out_dir: The stage's report folder.
        cfg: Sample sizes and thresholds.
        ctx: The client, its stores, window and MLflow.
        serving: The serving section (where the query log and the feedback are).

    Returns:
        The month's report (drift yes/no per signal with its method and score).
    """
    from components.feedback.core import feedback_month, previous_month
    from components.monitor import inputs
    from serving.feedback import open_feedback_store

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    month = feedback_month(ctx.window.end())
    model = registered_name("clip", ctx.client_id)
    prefix = f"{MONITOR_PREFIX}/{model}"
    store = open_feedback_store(serving.query_log_uri, ctx.storage.artifacts_uri, ctx.client_id, ctx.encryption)
    with ctx.stage_run("monitor", {**asdict(cfg), "month": month}) as run:
        work = out_dir.parent / f"{out_dir.name}-work"
        champion = inputs.champion_embedder(ctx, work)
        embed_texts, uploads = None, None
        if champion is not None:
            handle, version = champion
            embed_texts = handle.encode_texts
            run.set_tag("champion_version", version)
            if frames_dir is not None:
                current = inputs.upload_embeddings(handle, Path(frames_dir))
                uploads = (current, inputs.library_embeddings(store, prefix, month))
        scores = inputs.lipsync_scores(lipsync_eval_dir)
        inputs.save_arrays(out_dir, None if uploads is None else uploads[0], scores)
        previous = inputs.saved_lipsync_scores(store, prefix, previous_month(month))
        report = monitor_store_month(store, model, month, out_dir, embed_texts, uploads, (scores, previous), cfg)
        run.log_metrics(report.as_metrics())
        run.log_artifacts(str(out_dir), "monitor")
        if ctx.track:
            rows = accuracy_over_months(ctx, store=store)
            files = write_accuracy_report(rows, work / "accuracy", f"{ctx.client_id}: accuracy over months")
            for path in files.values():
                run.log_artifact(str(path), "monitor/accuracy")
    logger.info("monitor %s %s:\n%s", model, month, report.to_markdown())
    return report


# ------------------------------------------------------------------------------------------------ over months


@dataclass
class MonthRow:
    """One monthly DAG run of a client, as ``clipsync monitor`` shows it."""

    as_of: str
    run_id: str
    status: str
    clip_champion: dict[str, float] = field(default_factory=dict)
    clip_categories: dict[str, float] = field(default_factory=dict)
    clip_decision: str = ""
    lipsync_champion: dict[str, float] = field(default_factory=dict)
    lipsync_decision: str = ""
    proxies: dict[str, Any] = field(default_factory=dict)


def _gate(metrics: dict[str, float], model: str, primary: str) -> tuple[str, float | None]:
    """(``promote``/``keep``/``""``, the champion's primary metric after the gate) from an ab_gate run's metrics."""
    p = f"gate_{model}_"
    if f"{p}promote" not in metrics:
        return "", None
    promoted = metrics[f"{p}promote"] >= 0.5
    value = metrics.get(f"{p}{'challenger' if promoted else 'champion'}_{primary}")
    return ("promote" if promoted else "keep"), value


def accuracy_over_months(config: Any, months: int = 12, store: Any = None) -> list[MonthRow]:
    """Each monthly run of the client (newest ``months``, oldest first): the champion after the gate and proxies.

    The champion's metrics are the challenger's when the gate promoted it, else the kept champion's, both as
    evaluate measured them on that month's test split (R@1 and mAP for search, test ROC AUC for lip-sync); per
    category: the top-1 hit rate of the champion's queries (``clip_eval.json`` of the evaluate_clip run). The
    production proxies come from the monitor summary of the run's month in ``store``
    (``monitor/<model>/<month>/summary.json``) when there is one.

    Args:
        config: The client's ``ClientConfig`` or a stage's context (its ``tracking`` and ``client_id``).
        months: How many runs, newest first.
        store: The client's artifacts store (proxies); ``None``: none.
    """
    from mlflow.tracking import MlflowClient

    from components.common import tracking

    experiment_id = tracking.configure(config.tracking)
    client = MlflowClient()
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent' and tags.`{tracking.CLIENT_TAG}` = '{config.client_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=months,
    )
    rows = []
    for parent in reversed(parents):
        stages = {
            r.data.tags.get(tracking.STAGE_TAG, r.info.run_name): r
            for r in client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
            )
        }
        row = MonthRow(parent.data.params.get("as_of", ""), parent.info.run_id, parent.info.status)
        gate = stages.get("ab_gate_clip")
        evaluate = stages.get("evaluate_clip")
        if gate is not None:
            row.clip_decision, r1 = _gate(gate.data.metrics, "clip", "recall_at_1")
            promoted = row.clip_decision == "promote"
            if r1 is not None:
                row.clip_champion["recall_at_1"] = r1
            if evaluate is not None:
                role = "challenger" if promoted else "baseline"
                m = evaluate.data.metrics
                if f"clip_{role}_mean_ap" in m:
                    row.clip_champion["mean_ap"] = m[f"clip_{role}_mean_ap"]
                row.clip_categories = _categories(client, evaluate.info.run_id, role)
        gate = stages.get("ab_gate_lipsync")
        if gate is not None:
            row.lipsync_decision, auc = _gate(gate.data.metrics, "lipsync", "roc_auc")
            if auc is not None:
                row.lipsync_champion["roc_auc"] = auc
        if store is not None and row.as_of:
            row.proxies = _proxies(store, f"clip-{config.client_id}", row.as_of)
        rows.append(row)
    return rows


def _categories(client: Any, run_id: str, role: str) -> dict[str, float]:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "evaluate_clip/clip_eval.json", tmp)
            summary = json.loads(Path(path).read_text())
    except Exception as exc:  # an older run without the file: no per-category figures
        logger.debug("no clip_eval.json in run %s: %s", run_id, exc)
        return {}
    return {str(k): float(v) for k, v in summary.get(role, {}).get("query_top1_by_category", {}).items()}


def _proxies(store: Any, model: str, as_of: str) -> dict[str, Any]:
    """The monitor summary of the month the run on ``as_of`` looked back on (the month before ``as_of``'s)."""
    from components.feedback.core import previous_month

    month = previous_month(as_of[:7])
    key = f"{MONITOR_PREFIX}/{model}/{month}/{SUMMARY_FILE}"
    if not store.exists(key):
        return {}
    summary = json.loads(store.get_bytes(key))
    return {s["signal"]: s for s in summary["signals"]}


def write_accuracy_report(rows: list[MonthRow], out_dir: Path, title: str) -> dict[str, Path]:
    """Print-ready table (Markdown), a PNG plot (matplotlib) and an HTML page with both, into ``out_dir``."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    md = accuracy_markdown(rows, title)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = list(range(len(rows)))
    labels = [r.as_of for r in rows]
    for key, name in (("recall_at_1", "search R@1"), ("mean_ap", "search mAP")):
        axes[0].plot(x, [r.clip_champion.get(key, np.nan) for r in rows], marker="o", label=name)
    axes[0].plot(x, [r.lipsync_champion.get("roc_auc", np.nan) for r in rows], marker="s", label="lip-sync AUC")
    for i, r in enumerate(rows):
        if r.clip_decision == "promote":
            axes[0].axvline(i, color="green", alpha=0.2)
    axes[0].set_ylabel("champion (test split)")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="lower right", fontsize=8)
    for signal, name in (("top1_confidence", "mean top-1 confidence"), ("feedback_precision", "feedback precision")):
        axes[1].plot(x, [_proxy_value(r, signal) for r in rows], marker="o", label=name)
    axes[1].plot(x, [_proxy_value(r, "low_confidence_rate") for r in rows], marker="^", label="low-confidence rate")
    axes[1].set_ylabel("production proxies")
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(loc="lower right", fontsize=8)
    axes[1].set_xticks(x, labels, rotation=30, fontsize=8)
    fig.suptitle(title + " (green: CLIP promoted)")
    fig.tight_layout()
    png = out_dir / "accuracy_over_months.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    (out_dir / "accuracy_over_months.md").write_text(md)
    from components.evaluate.clip_eval import _md_to_html

    encoded = base64.b64encode(png.read_bytes()).decode()
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
        "max-width:70em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        f"</style></head><body>{_md_to_html(md)}<img alt='accuracy over months' src='data:image/png;base64,{encoded}'/>"
        "</body></html>\n"
    )
    html = out_dir / "accuracy_over_months.html"
    html.write_text(page)
    return {"png": png, "html": html, "md": out_dir / "accuracy_over_months.md"}


def _proxy_value(row: MonthRow, signal: str) -> float:
    value = row.proxies.get(signal, {}).get("current_value")
    return np.nan if value is None else float(value)


def accuracy_markdown(rows: list[MonthRow], title: str) -> str:
    """The table ``clipsync monitor`` prints: one line per monthly run."""
    lines = [
        f"# {title}",
        "",
        "| run as of | status | search R@1 | search mAP | CLIP | lip-sync AUC | lip-sync | mean confidence | "
        "low-conf. rate | feedback precision | drift |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        drifted = [s for s, v in r.proxies.items() if v.get("drift")]
        lines.append(
            f"| {r.as_of} | {r.status} | {_fmt(r.clip_champion.get('recall_at_1'))} | "
            f"{_fmt(r.clip_champion.get('mean_ap'))} | {r.clip_decision or '-'} | "
            f"{_fmt(r.lipsync_champion.get('roc_auc'))} | {r.lipsync_decision or '-'} | "
            f"{_fmt(r.proxies.get('top1_confidence', {}).get('current_value'))} | "
            f"{_fmt(r.proxies.get('low_confidence_rate', {}).get('current_value'))} | "
            f"{_fmt(r.proxies.get('feedback_precision', {}).get('current_value'))} | {', '.join(drifted) or '-'} |"
        )
    categories = sorted({c for r in rows for c in r.clip_categories})
    if categories:
        lines += ["", "Search top-1 per category (the champion after each run's gate):", ""]
        lines += ["| run as of | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
        for r in rows:
            lines.append(f"| {r.as_of} | " + " | ".join(_fmt(r.clip_categories.get(c)) for c in categories) + " |")
    return "\n".join(lines) + "\n"

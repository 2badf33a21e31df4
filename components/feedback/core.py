"""feedback: a month of client feedback and query log -> training records with provenance, and a review queue.

- A search result the client marked relevant becomes a **label** of that video: the query's text (and the client's
  own ``label`` text, when it gave one), so the next retrain learns the client's phrasing.
- A result marked not relevant becomes a **hard negative** of that query text: the next retrain's contrastive loss
  counts it as a known negative of the text (:mod:`components.finetune_clip.negatives`).
- A relevant result is also evidence about the client's **category** of that video (``feedback.propagate``): the
  text becomes a ``category_label``, a label of every training video of that category in the next retrain. A
  rating on a validation or test video teaches the text tower this way too, while that video itself keeps its
  labels (evaluate's split stays clean). The categories are those finetune_clip listed
  (:func:`components.common.catalog.known_categories`); a video of no known category propagates nothing.
- A search nobody has said the right answer of goes into the client's **review queue** (CSV + HTML): a
  low-confidence one that got no feedback, and one whose rated results were all not relevant (the client said
  what is wrong, not what is right); ranked by how unsure the model was times how often it was asked, never into
  training by itself. The client answers an entry by rating, with the entry's ``query_id``, the right video it
  found in its library (``relevant: true``, through the feedback API like any answer): such an answer is a
  relevant rating like the others (its ``rank`` is empty: the search had not returned that video), so it becomes
  a label and, with ``propagate``, a category label of the search text. ``clipsync feedback review`` writes the
  queue of the month so far, so that answers given within the month reach the next retrain.

Every record names where it came from (feedback id, query id, when, which model version answered). Only the
latest answer per (query, video) counts (:func:`serving.feedback.read_feedback`); when two searches with the same
text (case and spacing aside) got opposite answers on one video, the later one wins. Nothing here writes to the
client's uploads: records and the review queue go to the stage's output folder and the artifacts store.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.catalog import known_categories
from components.common.names import FEEDBACK_RECORDS_FILE, registered_name
from components.common.stage import StageContext
from components.feedback.config import FeedbackConfig

if TYPE_CHECKING:
    from serving.config import ServingConfig

logger = logging.getLogger("clipsync.feedback")

REVIEW_CSV = "review_queue.csv"
REVIEW_HTML = "review_queue.html"
REVIEW_PREFIX = "review"


@dataclass(frozen=True)
class FeedbackRecord:
    """One training record from feedback.

    Attributes:
        kind: ``label`` (``text`` is a label of ``video_id``), ``hard_negative`` (``video_id`` is a known
            negative of ``text``) or ``category_label`` (``text`` is a label of the training videos of
            ``category``, because it was rated relevant on ``video_id``, a video of that category).
        video_id: The library's video id (the index's id: the video's content hash): the rated video.
        text: The query text, or the client's own label text (``source`` says which).
        source: ``query`` (the search's text) or ``client_label`` (the ``label`` the client typed).
        feedback_id: The answer this record comes from.
        query_id: The search it was given on.
        feedback_ts: When the answer was given (ISO 8601).
        model_version: The model version that answered the search.
        category: The client's category of ``video_id`` (``category_label`` records; else empty).
        rank: ``video_id``'s rank in the search's results; ``None`` when the search had not returned it (the
            client named it, answering its review queue) or the server did not know the search.
    """

    kind: str
    video_id: str
    text: str
    source: str
    feedback_id: str
    query_id: str
    feedback_ts: str
    model_version: str = ""
    category: str = ""
    rank: int | None = None


@dataclass(frozen=True)
class ReviewItem:
    """A search whose right answer nobody gave: for the client to answer (``reason``: ``low_confidence``, unsure
    and unrated, or ``no_relevant_result``, every rated result of it was not relevant)."""

    rank: int
    query: str
    count: int
    mean_confidence: float
    unsureness: float
    priority: float
    top_video: str
    last_seen: str
    query_id: str
    reason: str


@dataclass
class FeedbackData:
    """What one month of feedback gives the next retrain."""

    records: list[FeedbackRecord] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    review: list[ReviewItem] = field(default_factory=list)

    @property
    def labels(self) -> list[FeedbackRecord]:
        return [r for r in self.records if r.kind == "label"]

    @property
    def hard_negatives(self) -> list[FeedbackRecord]:
        return [r for r in self.records if r.kind == "hard_negative"]

    @property
    def category_labels(self) -> list[FeedbackRecord]:
        return [r for r in self.records if r.kind == "category_label"]

    def as_metrics(self) -> dict[str, float]:
        return {
            "feedback_labels": float(len(self.labels)),
            "feedback_hard_negatives": float(len(self.hard_negatives)),
            "feedback_category_labels": float(len(self.category_labels)),
            "feedback_skipped": float(len(self.skipped)),
            "feedback_review_queries": float(len(self.review)),
        }


def normalize_query(text: str) -> str:
    """The form two searches share when they ask the same thing: case-folded, spacing collapsed."""
    return " ".join(text.casefold().split())


def training_records(
    feedback: Iterable[dict[str, Any]], query_log: Iterable[dict[str, Any]], categories: Mapping[str, str] | None = None
) -> FeedbackData:
    """Training records from feedback entries (latest per pair) and the query log that names their searches.

    Args:
        feedback: Entries of :func:`serving.feedback.read_feedback` (one month, latest answer per pair).
        query_log: Entries of :func:`serving.querylog.read_month` (the month and the one before: a search at the
            end of a month may be rated in the next).
        categories: ``video_id -> client category``: each label of a rated video of a known category is also
            a ``category_label`` record of that category (once per text and category); ``None``: none.

    Returns:
        The records (labels and hard negatives) and the answers that gave none, with the reason
        (``unknown_query``: neither the server nor the query log knows the search's text).
    """
    texts = {e["query_id"]: e["query"] for e in query_log if e.get("query_id") and e.get("query")}
    data = FeedbackData()
    latest: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for entry in sorted(feedback, key=lambda e: e["ts"]):
        query = entry.get("query") or texts.get(entry["query_id"], "")
        if not query:
            data.skipped.append(
                {"feedback_id": entry["feedback_id"], "query_id": entry["query_id"], "reason": "unknown_query"}
            )
            continue
        latest[(normalize_query(query), entry["video_id"])] = (entry, query)  # the later answer wins
    propagated: set[tuple[str, str]] = set()
    for entry, query in latest.values():
        common = {
            "video_id": entry["video_id"],
            "feedback_id": entry["feedback_id"],
            "query_id": entry["query_id"],
            "feedback_ts": entry["ts"],
            "model_version": str(entry.get("version", "")),
            "rank": entry.get("rank"),
        }
        if not entry["relevant"]:
            data.records.append(FeedbackRecord("hard_negative", text=query, source="query", **common))
            continue
        texts = [("query", query)]
        label = (entry.get("label") or "").strip()
        if label and normalize_query(label) != normalize_query(query):
            texts.append(("client_label", label))
        category = (categories or {}).get(entry["video_id"], "")
        for source, text in texts:
            data.records.append(FeedbackRecord("label", text=text, source=source, **common))
            if category and (text, category) not in propagated:
                propagated.add((text, category))
                data.records.append(
                    FeedbackRecord("category_label", text=text, source=source, category=category, **common)
                )
    return data


def review_queue(
    query_log: Iterable[dict[str, Any]], feedback: Iterable[dict[str, Any]], max_items: int = 200
) -> list[ReviewItem]:
    """Searches whose right answer nobody gave, grouped by text and ranked by unsureness x frequency.

    A text joins the queue when no search of it got a relevant answer and some search of it was either unsure
    (``low_confidence``) or rated with every rated result not relevant. ``unsureness`` is the mean over those
    searches of the probability that the top result was wrong: ``1 - confidence`` (calibrated) for an unrated
    one, 1 for a rated one (the client said so); a text asked often and answered unsurely or wrongly comes first.

    Args:
        query_log: Query-log entries of the month.
        feedback: Feedback entries of the month (latest per pair).
        max_items: Longest queue.
    """
    relevant = {e["query_id"] for e in feedback if e["relevant"]}
    rated = {e["query_id"] for e in feedback}
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in query_log:
        if entry.get("query"):
            groups.setdefault(normalize_query(entry["query"]), []).append(entry)
    items = []
    for entries in groups.values():
        if any(e.get("query_id") in relevant for e in entries):
            continue
        wrong = [e for e in entries if e.get("query_id") in rated]
        low = [e for e in entries if e.get("query_id") not in rated and e.get("low_confidence")]
        low = [e for e in low if e.get("confidence") is not None]
        if not wrong and not low:
            continue
        asked = wrong + low
        mean_conf = sum(float(e.get("confidence") or 0.0) for e in asked) / len(asked)
        unsureness = (len(wrong) + sum(1.0 - float(e["confidence"]) for e in low)) / len(asked)
        last = max(asked, key=lambda e: e.get("ts", ""))
        reason = "no_relevant_result" if wrong else "low_confidence"
        items.append((len(asked) * unsureness, len(asked), unsureness, mean_conf, last, reason))
    items.sort(key=lambda t: (-t[0], -t[1], t[4]["query"]))
    return [
        ReviewItem(
            rank=n + 1,
            query=last["query"],
            count=count,
            mean_confidence=round(mean_conf, 4),
            unsureness=round(unsureness, 4),
            priority=round(priority, 4),
            top_video=last.get("top_video", ""),
            last_seen=last.get("ts", ""),
            query_id=last.get("query_id", ""),
            reason=reason,
        )
        for n, (priority, count, unsureness, mean_conf, last, reason) in enumerate(items[:max_items])
    ]


def write_review_queue(items: list[ReviewItem], out_dir: Path, title: str) -> dict[str, Path]:
    """Write the review queue as ``review_queue.csv`` and ``review_queue.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in ReviewItem.__dataclass_fields__.values()]
    with open(out_dir / REVIEW_CSV, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(i) for i in items)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(getattr(i, c)))}</td>" for c in columns) + "</tr>" for i in items
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Searches whose right answer nobody gave: unsure ones nobody rated "
        "(low_confidence) and ones whose rated results were all wrong (no_relevant_result), most unsure x most "
        "frequent first. Answer one by rating the right video you find in the library with its query_id "
        "(POST /api/feedback, relevant: true): the next month trains on it.</p>"
        f"<table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{rows}</table>"
        f"{'' if items else '<p>No search to review this month.</p>'}</body></html>\n"
    )
    (out_dir / REVIEW_HTML).write_text(page, encoding="utf-8")
    return {"csv": out_dir / REVIEW_CSV, "html": out_dir / REVIEW_HTML}


def previous_month(month: str) -> str:
    """``2026-01`` -> ``2025-12``."""
    year, mon = (int(x) for x in month.split("-"))
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def feedback_month(as_of: date) -> str:
    """The month whose feedback a run on ``as_of`` consumes: the one before ``as_of``'s month."""
    return previous_month(as_of.strftime("%Y-%m"))


def feedback_for_month(
    store: Any, model: str, month: str, out_dir: Path, max_review: int = 200, propagate: bool = True
) -> FeedbackData:
    """One month of a model's feedback -> training records and the review queue.

    Reads ``feedback/<model>/<month>/`` and the query log of ``month`` and the month before from ``store`` (the
    client's artifacts store), writes ``feedback_records.jsonl`` and the review queue into ``out_dir`` and the
    review queue also to ``review/<model>/<month>/`` of the store (where the client picks it up).

    Args:
        store: The client's artifacts store (:func:`serving.feedback.feedback_store`).
        model: ``clip-<client>``.
        month: ``YYYY-MM`` of the feedback.
        out_dir: The stage's output folder.
        max_review: Longest review queue.
        propagate: Also turn relevant ratings into ``category_label`` records (the video's category as
            finetune_clip listed it in the store).

    Returns:
        The records, the answers skipped with their reasons, and the review queue.
    """
    from serving.feedback import read_feedback
    from serving.querylog import read_month

    feedback = read_feedback(store, model, month)
    month_log = read_month(store, model, month)
    categories = known_categories(store) if propagate else None
    data = training_records(feedback, month_log + read_month(store, model, previous_month(month)), categories)
    data.review = review_queue(month_log, feedback, max_review)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / FEEDBACK_RECORDS_FILE, "w", encoding="utf-8") as fh:
        for record in data.records:
            fh.write(json.dumps(asdict(record), sort_keys=True, ensure_ascii=False) + "\n")
    publish_review_queue(store, model, month, data.review, out_dir)
    logger.info(
        "feedback %s %s: %d labels, %d hard negatives, %d category labels, %d skipped, %d searches to review",
        model,
        month,
        len(data.labels),
        len(data.hard_negatives),
        len(data.category_labels),
        len(data.skipped),
        len(data.review),
    )
    return data


def publish_review_queue(store: Any, model: str, month: str, items: list[ReviewItem], out_dir: Path) -> None:
    """Write the review queue into ``out_dir`` and to ``review/<model>/<month>/`` of ``store`` (the client's)."""
    files = write_review_queue(items, out_dir, f"{model}: searches to review, {month}")
    for kind, path in files.items():
        store.put_file(f"{REVIEW_PREFIX}/{model}/{month}/{path.name}", path, f"text/{kind}")


def review_for_month(store: Any, model: str, month: str, out_dir: Path, max_items: int = 200) -> list[ReviewItem]:
    """The review queue of ``month`` so far (``clipsync feedback review``): the client can answer it within the
    month, so that its answers reach the next monthly run (which publishes the month's final queue).

    Args:
        store: The client's artifacts store (:func:`serving.feedback.feedback_store`).
        model: ``clip-<client>``.
        month: ``YYYY-MM``.
        out_dir: Where ``review_queue.csv`` and ``.html`` are written (and published to the store).
        max_items: Longest queue.
    """
    from serving.feedback import read_feedback
    from serving.querylog import read_month

    items = review_queue(read_month(store, model, month), read_feedback(store, model, month), max_items)
    publish_review_queue(store, model, month, items, Path(out_dir))
    return items


def read_records(path: Path) -> list[FeedbackRecord]:
    """The records :func:`feedback_for_month` wrote (``feedback_records.jsonl``)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [FeedbackRecord(**json.loads(line)) for line in lines if line.strip()]


def run_feedback(out_dir: Path, cfg: FeedbackConfig, ctx: StageContext, serving: ServingConfig) -> FeedbackData:
    """The feedback stage: last month's CLIP search feedback -> training records and the client's review queue.

    The month is the one before the window's end (:func:`feedback_month`): the run on 1 November consumes
    October's answers. Reads the feedback and the query log from where the model server writes them
    (``serving.query_log_uri``, else the artifacts store); writes ``feedback_records.jsonl`` (what finetune_clip
    trains on) and the review queue into ``out_dir`` and the review queue to ``review/clip-<client>/<month>/``.
    Nothing is written to the client's uploads.

    Args:
        out_dir: The stage's Dataset folder.
        cfg: Stage settings (off: no records; the review queue is still written).
        ctx: The client, its stores, the window, the MLflow run.
        serving: The serving section (where the query log and the feedback are).

    Returns:
        The records, the answers that gave none (with their reasons) and the review queue.
    """
    from serving.feedback import open_feedback_store

    month = feedback_month(ctx.window.end())
    model = registered_name("clip", ctx.client_id)
    store = open_feedback_store(serving.query_log_uri, ctx.storage.artifacts_uri, ctx.client_id, ctx.encryption)
    with ctx.stage_run("feedback", {**asdict(cfg), "month": month}) as run:
        data = feedback_for_month(store, model, month, Path(out_dir), cfg.max_review, cfg.propagate)
        if not cfg.enabled:
            data.records = []
            (Path(out_dir) / FEEDBACK_RECORDS_FILE).write_text("", encoding="utf-8")
        run.log_metrics(data.as_metrics())
        run.log_artifacts(str(out_dir), "feedback")
    return data

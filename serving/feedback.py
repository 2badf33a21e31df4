"""Client feedback on search results: checked, rate-limited, written durably before it is acknowledged.

A client says whether a result of one of its searches was relevant: ``query_id`` (from the search answer),
``video_id``, ``relevant`` (true/false) and an optional ``label`` (its own words for the video). Each answer is
appended as an immutable JSON Lines object ``feedback/<model>/<YYYY-MM>/<timestamp>-<uuid>.jsonl`` in the client's
artifacts store (the query log's store: ``serving.query_log_uri``, by default ``storage.artifacts_uri``). Nothing is
ever rewritten: a client that changes its mind sends the pair again, and :func:`read_feedback` keeps the latest
answer per ``(query_id, video_id)``.

The reading side (:func:`read_feedback`, :func:`write_csv`) needs neither kserve nor a server: the feedback step
and ``clipsync feedback export`` use it.

Writes happen on the log's own thread, never on the server's event loop (as :mod:`serving.querylog`), but unlike
the query log an answer is acknowledged only once the object holding it is in the store (group commit: every
answer waiting when the thread wakes goes into one object). An answer the store did not take is refused (HTTP 503),
never dropped after an acknowledgement; at shutdown the thread writes what is waiting before the server exits.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from components.common.storage import ObjectStore, validate_key
from serving.errors import Overloaded, PayloadTooLarge

logger = logging.getLogger("clipsync.serving.feedback")

PREFIX = "feedback"
#: Longest ``label`` text (HTTP 413 beyond), as long as a search text may be.
MAX_LABEL_CHARS = 1000
#: Most answers in one request (REST list or V2 tensors).
MAX_ITEMS = 64
#: Largest ``POST /api/feedback`` body (HTTP 413 beyond, before it is read whole).
MAX_BODY_BYTES = 256 * 1024
QUERY_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
MAX_VIDEO_ID = 512


@dataclass(frozen=True)
class Feedback:
    """One checked answer: was ``video_id`` a relevant result of the search ``query_id``?"""

    query_id: str
    video_id: str
    relevant: bool
    label: str = ""


def check_feedback(query_id: Any, video_id: Any, relevant: Any, label: Any = "", where: str = "feedback") -> Feedback:
    """One answer, checked.

    Raises:
        InvalidInput: A ``query_id`` that is not 1..64 letters, digits, ``-`` or ``_``; an empty or overlong
            ``video_id``; ``relevant`` not a boolean; a ``label`` that is not a string.
        PayloadTooLarge: A ``label`` longer than :data:`MAX_LABEL_CHARS` characters.
    """
    from serving.kserve_adapter import InvalidInput, input_text

    qid = input_text(query_id, "query_id", where)
    if not QUERY_ID.match(qid):
        raise InvalidInput(f"{where}: 'query_id' must be the query_id of a search answer")
    vid = input_text(video_id, "video_id", where)
    if not vid or len(vid) > MAX_VIDEO_ID:
        raise InvalidInput(f"{where}: 'video_id' must be a video id of the search's library")
    if not isinstance(relevant, bool):
        raise InvalidInput(f"{where}: 'relevant' must be true or false")
    text = input_text(label if label is not None else "", "label", where)
    if len(text) > MAX_LABEL_CHARS:
        raise PayloadTooLarge(f"{where}: 'label' is longer than {MAX_LABEL_CHARS} characters")
    return Feedback(qid, vid, relevant, text)


def parse_body(body: bytes) -> list[Feedback]:
    """The answers of a ``POST /api/feedback`` body: one JSON object, or a list of 1..64 of them.

    Raises:
        InvalidInput: Not JSON, not an object or a list of objects, unknown or missing fields, bad values.
        PayloadTooLarge: A label over the limit.
    """
    from serving.kserve_adapter import InvalidInput, short

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > MAX_ITEMS:
        raise InvalidInput(f"expected one feedback object or a list of 1..{MAX_ITEMS}")
    out = []
    for i, item in enumerate(items):
        where = "feedback" if not isinstance(data, list) else f"feedback[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: expected an object with query_id, video_id, relevant and an optional label")
        unknown = sorted(set(item) - {"query_id", "video_id", "relevant", "label"})
        if unknown:
            raise InvalidInput(f"{where}: unknown field(s) {[short(u)[:40] for u in unknown[:5]]}")
        missing = [k for k in ("query_id", "video_id", "relevant") if k not in item]
        if missing:
            raise InvalidInput(f"{where}: missing {missing}")
        out.append(check_feedback(item["query_id"], item["video_id"], item["relevant"], item.get("label", ""), where))
    return out


class RateLimiter:
    """At most ``per_minute`` answers per caller in any 60 seconds (a sliding window; thread-safe).

    Args:
        per_minute: Answers one caller may send per minute.
        clock: Monotonic seconds (tests pass their own).
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._seen: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, n: int = 1) -> None:
        """Count ``n`` answers of ``caller``, or refuse them all.

        Raises:
            Overloaded: The caller would pass its limit (HTTP 429, ``Retry-After``: seconds until there is room).
        """
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(caller, collections.deque())
            while seen and seen[0] <= now - self.WINDOW_S:
                seen.popleft()
            if len(seen) + n > self.per_minute:
                frees_at = seen[len(seen) + n - self.per_minute - 1] if n <= self.per_minute else now
                wait = max(1, math.ceil(frees_at + self.WINDOW_S - now))
                raise Overloaded(
                    f"feedback limit of {self.per_minute} answers per minute reached; retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            seen.extend([now] * n)
            if len(self._seen) > 10_000:  # forget callers that have been quiet for a window
                for key in [k for k, q in self._seen.items() if not q or q[-1] <= now - self.WINDOW_S]:
                    del self._seen[key]


def caller_key(authorization: str | None) -> str:
    """Whom a rate limit counts: the SHA-256 of the bearer token (never the token itself); ``open`` without one."""
    if not authorization:
        return "open"
    return hashlib.sha256(authorization.strip().encode("utf-8", "replace")).hexdigest()[:32]


class FeedbackLog:
    """Writes feedback entries on its own thread and resolves each submission once its object is stored.

    Args:
        store: A store, or model name -> store (one per client); ``None``: feedback is not accepted.
        per_minute: Answers one token may send per minute (:attr:`limiter`).
        max_pending: Most entries waiting to be written (a store that stopped answering): beyond it, refused.
    """

    def __init__(
        self, store: ObjectStore | Callable[[str], ObjectStore] | None, per_minute: int = 120, max_pending: int = 10_000
    ) -> None:
        self.store = store
        self.limiter = RateLimiter(per_minute)
        self._store_of: Callable[[str], ObjectStore] = store if callable(store) else (lambda _model: store)
        self.max_pending = max_pending
        self._pending: list[tuple[str, list[dict[str, Any]], Future]] = []
        self._n_pending = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stop = threading.Event()
        self.files_written = 0
        self._thread: threading.Thread | None = None
        if store is not None:
            self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def submit(self, model: str, entries: list[dict[str, Any]]) -> Future:
        """Queue ``entries`` of ``model``; the future is resolved when they are in the store (or fails).

        Raises:
            RuntimeError: The log is closed or stores nothing.
            Overloaded: :attr:`max_pending` entries are already waiting for the store.
        """
        future: Future = Future()
        with self._lock:
            if self.store is None or self._stop.is_set():
                raise RuntimeError("feedback is not stored by this server")
            if self._n_pending + len(entries) > self.max_pending:
                raise Overloaded("feedback is waiting for the store; retry shortly", headers={"Retry-After": "5"})
            self._pending.append((model, entries, future))
            self._n_pending += len(entries)
        self._due.set()
        return future

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(1.0)
            self._due.clear()
            self.flush()

    def flush(self) -> int:
        """Write everything waiting, one object per model and month; returns the entries written."""
        with self._lock:
            batch, self._pending, self._n_pending = self._pending, [], 0
        groups: dict[tuple[str, str], list[tuple[list[dict[str, Any]], Future]]] = {}
        for model, entries, future in batch:
            groups.setdefault((model, entries[0]["ts"][:7]), []).append((entries, future))
        written = 0
        for (model, month), items in groups.items():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            key = validate_key(f"{PREFIX}/{model}/{month}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl")
            lines = [json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for entries, _ in items for e in entries]
            try:
                self._store_of(model).put_bytes(key, "".join(lines).encode("utf-8"), "application/x-ndjson")
            except Exception as exc:  # refused to the callers, who may send again (idempotent per pair)
                logger.error("feedback: could not write %d answers to %s: %s", len(lines), key, exc)
                for _, future in items:
                    _settle(future, exc=exc)
                continue
            self.files_written += 1
            written += len(lines)
            for _, future in items:
                _settle(future, result=key)
        return written

    def close(self) -> None:
        """Stop taking feedback, write what is waiting, stop the thread."""
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()


def _settle(future: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Resolve a submission unless its caller gave up waiting (a deadline cancelled it: the answer was written
    but never acknowledged, and sending it again is harmless)."""
    with contextlib.suppress(InvalidStateError):
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def feedback_entry(
    model: str, version: str, item: Feedback, query: dict[str, Any] | None, protocol: str
) -> dict[str, Any]:
    """The stored form of one answer (``query``: what the server remembers of the search, ``None`` if nothing)."""
    results = (query or {}).get("results", [])
    return {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "feedback_id": uuid.uuid4().hex,
        "model": model,
        "version": version,
        "query_id": item.query_id,
        "video_id": item.video_id,
        "relevant": item.relevant,
        "label": item.label,
        "query": (query or {}).get("query", ""),
        "query_known": query is not None,
        "rank": results.index(item.video_id) + 1 if item.video_id in results else None,
        "protocol": protocol,
    }


def read_feedback(store: ObjectStore, model: str, month: str, latest_only: bool = True) -> list[dict[str, Any]]:
    """The feedback of ``model`` received in ``month`` (``YYYY-MM``).

    Args:
        store: The client's artifacts store.
        model: ``clip-<client>``.
        month: ``YYYY-MM``.
        latest_only: Keep only the latest answer per ``(query_id, video_id)`` (by time, then write order).

    Returns:
        The entries, oldest first.
    """
    entries: list[dict[str, Any]] = []
    for key in sorted(store.list_keys(f"{PREFIX}/{model}/{month}/")):
        for line in store.get_bytes(key).decode("utf-8").splitlines():
            if line.strip():
                entries.append(json.loads(line))
    entries.sort(key=lambda e: e["ts"])  # stable: equal times keep the write order
    if not latest_only:
        return entries
    latest = {(e["query_id"], e["video_id"]): e for e in entries}
    return sorted(latest.values(), key=lambda e: e["ts"])


#: The columns of ``clipsync feedback export`` (CSV), in order.
CSV_COLUMNS = (
    "ts", "feedback_id", "query_id", "query", "video_id", "relevant", "label", "query_known", "rank", "version",
)  # fmt: skip


def write_csv(entries: list[dict[str, Any]], out: Any) -> int:
    """Write feedback entries as CSV (:data:`CSV_COLUMNS`) to the text stream ``out``; returns the rows written."""
    import csv

    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: "" if entry.get(k) is None else entry.get(k) for k in CSV_COLUMNS})
    return len(entries)


def feedback_store(config: Any) -> ObjectStore:
    """The store a client's feedback is in: ``serving.query_log_uri`` (its ``{client}`` replaced) or, when that is
    empty, the client's ``storage.artifacts_uri``; opened with the client's ``encryption`` settings, as the model
    server writes it."""
    return open_feedback_store(
        config.serving.query_log_uri, config.storage.artifacts_uri, config.client_id, config.encryption
    )


def open_feedback_store(query_log_uri: str, artifacts_uri: str, client_id: str, encryption: Any = None) -> ObjectStore:
    """:func:`feedback_store` from the settings themselves (a stage has its context, not the whole config).

    ``encryption``: the client config's ``encryption`` settings (a stage's ``ctx.encryption``): an SSE-C client's
    feedback and query log are readable only with its key.
    """
    from components.common.storage import open_store

    if not query_log_uri or query_log_uri == "off":
        return open_store(artifacts_uri, encryption)
    return open_store(query_log_uri.replace("{client}", client_id), encryption)

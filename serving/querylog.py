"""The query log: one JSON line per search query (model, query text, top score, confidence, latency).

No video content is logged. Entries are buffered and written as immutable JSON Lines objects
``querylog/<model>/<YYYY-MM>/<timestamp>-<uuid>.jsonl`` into the object store (a local folder or MinIO), when
``flush_entries`` are buffered, when the oldest buffered entry is ``flush_s`` old, and at shutdown. Monitoring
reads a month's files to pick its low-confidence queries for review and the next retrain.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from components.common.storage import ObjectStore, open_store, validate_key

logger = logging.getLogger("clipsync.serving.querylog")

PREFIX = "querylog"
CLIENT_PLACEHOLDER = "{client}"


class ClientStores:
    """One store per client for a server shared by many: ``{client}`` in the URI is the model's client.

    Model names are ``<model>-<client>`` (``clip-acme`` -> ``acme``); each client's store is opened on first use.
    """

    def __init__(self, uri_template: str, encryption: Any = None) -> None:
        self.uri_template = uri_template
        self.encryption = encryption
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> ObjectStore:
        client = model.split("-", 1)[1] if "-" in model else model
        with self._lock:
            if client not in self._stores:
                uri = self.uri_template.replace(CLIENT_PLACEHOLDER, client)
                self._stores[client] = open_store(uri, self.encryption)
            return self._stores[client]


def open_query_log_store(uri: str, encryption: Any = None) -> ObjectStore | ClientStores | None:
    """The store(s) of ``serving.query_log_uri``: ``None`` for ``""``/``"off"``, per client with ``{client}``.

    ``encryption``: the client config's ``encryption`` settings (a server started with ``--client_config`` or by
    ``clipsync serve``); the shared pools have none and rely on the buckets' default encryption.
    """
    if not uri or uri == "off":
        return None
    return ClientStores(uri, encryption) if CLIENT_PLACEHOLDER in uri else open_store(uri, encryption)


class QueryLog:
    """Thread-safe buffered writer of query-log entries into an object store."""

    def __init__(
        self,
        store: ObjectStore | Callable[[str], ObjectStore] | None,
        flush_entries: int = 100,
        flush_s: float = 60.0,
    ) -> None:
        """Args:
        store: Where the files go (a store, or model name -> store); ``None`` keeps nothing (logging disabled).
        flush_entries: Entries buffered before a file is written.
        flush_s: Longest an entry stays buffered (checked by the writer thread at least every second).
        """
        self.store = store
        self._store_of: Callable[[str], ObjectStore] = store if callable(store) else (lambda _model: store)
        self.flush_entries = flush_entries
        self.flush_s = flush_s
        self._buffer: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._count = 0
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._due = threading.Event()
        self._timer: threading.Thread | None = None
        self.files_written = 0
        if store is not None:
            self._timer = threading.Thread(target=self._tick, name="querylog-flush", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        """The writer thread: files are written here, never on the server's event loop (a store's PUT can take
        hundreds of milliseconds, and health checks wait behind anything the loop does)."""
        while not self._stop.is_set():
            self._due.wait(min(1.0, self.flush_s))
            aged = self._oldest is not None and time.monotonic() - self._oldest >= self.flush_s
            if self._due.is_set() or aged:
                self._due.clear()
                self.flush()

    def append(self, model: str, entry: dict[str, Any]) -> None:
        """Buffer one entry of ``model`` (a ``ts`` field is added when missing)."""
        if self.store is None:
            return
        now = datetime.now(UTC)
        entry = {"ts": now.isoformat(timespec="milliseconds"), "model": model, **entry}
        with self._lock:
            self._buffer.setdefault((model, now.strftime("%Y-%m")), []).append(entry)
            self._count += 1
            if self._oldest is None:
                self._oldest = time.monotonic()
            due = self._count >= self.flush_entries
        if due:
            self._due.set()  # the writer thread flushes

    def flush(self) -> int:
        """Write everything buffered (one object per model and month); returns the entries written."""
        if self.store is None:
            return 0
        with self._lock:
            buffer, self._buffer = self._buffer, {}
            self._count, self._oldest = 0, None
        written = 0
        for (model, month), entries in buffer.items():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            key = validate_key(f"{PREFIX}/{model}/{month}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl")
            body = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in entries)
            try:
                self._store_of(model).put_bytes(key, body.encode("utf-8"), content_type="application/x-ndjson")
            except Exception as exc:  # a full disk must not take the search down; the entries are lost
                logger.error("query log: could not write %d entries to %s: %s", len(entries), key, exc)
                continue
            written += len(entries)
            self.files_written += 1
        return written

    def close(self) -> None:
        """Stop the writer thread and write what is left."""
        self._stop.set()
        self._due.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        self.flush()


def read_month(store: ObjectStore, model: str, month: str) -> list[dict[str, Any]]:
    """All entries of ``model`` for ``month`` (``YYYY-MM``), in file order (for monitoring and tests)."""
    out: list[dict[str, Any]] = []
    for key in store.list_keys(f"{PREFIX}/{model}/{month}/"):
        for line in store.get_bytes(key).decode("utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out

"""Per-video results kept by content hash in the client's artifacts store, reused across runs and months.

A stage's result for one video depends only on what went in: the video's content (its SHA-256, which ingest
computes), the stage's settings that change the result, the library that does the work and this module's
:data:`CACHE_VERSION`. :meth:`ResultCache.key` hashes exactly those; a stage looks the key up before working on a
video and stores what it computed after. A second run on the same videos, or the next month with a few new ones,
then only works on what it has not seen (the stage's report counts ``computed`` and ``reused`` videos).

Objects live under ``cache/<stage>/v<CACHE_VERSION>/<key[:2]>/<key>.npz`` in ``storage.artifacts_uri`` (never in the
client's uploads), written with the client's ``encryption`` settings like every other object clipsync writes.
Each object is one ``.npz`` of plain arrays read with ``allow_pickle=False``, its small metadata a JSON array.
An unreadable object (truncated, another format) is a miss: the video is computed again and the object rewritten.
An unreachable store is not: it fails the stage like any other infrastructure fault.

Bump :data:`CACHE_VERSION` when a stage's output for the same input and settings changes (a fixed bug in a
decoder path, a new field): every earlier object is then ignored.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from components.common.encryption import EncryptionConfig
from components.common.retrain import fingerprint

#: Part of every key: raise it when a stage's result for the same input and settings changes.
CACHE_VERSION = 1
#: Key prefix of the cache inside the artifacts store.
CACHE_PREFIX = "cache"
_META = "__meta__"

logger = logging.getLogger("clipsync.result_cache")


@functools.cache
def package_version(name: str) -> str:
    """The installed version of a distribution (``""`` when absent): part of a key, as the library does the work."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


@dataclass(frozen=True)
class ResultCache:
    """One stage's per-video results in the artifacts store (picklable: worker processes open it themselves).

    Attributes:
        artifacts_uri: ``storage.artifacts_uri`` (a local folder or ``s3://``).
        stage: The stage whose results these are (part of the key and of the object's path).
        encryption: The client's ``encryption`` section, applied to every write and required of every read.
    """

    artifacts_uri: str
    stage: str
    encryption: EncryptionConfig | None = None

    def _store(self) -> Any:
        return _open(self.artifacts_uri, self.encryption)

    def key(self, **parts: Any) -> str:
        """The SHA-256 (hex) of the stage, :data:`CACHE_VERSION` and ``parts`` (JSON-able: hashes, settings)."""
        return fingerprint(stage=self.stage, cache_version=CACHE_VERSION, **parts)

    def object_key(self, key: str) -> str:
        """Where the result of ``key`` is kept in the artifacts store."""
        return f"{CACHE_PREFIX}/{self.stage}/v{CACHE_VERSION}/{key[:2]}/{key}.npz"

    def has(self, key: str) -> bool:
        """Whether a result is stored under ``key`` (it may still turn out unreadable: :meth:`get` says)."""
        return self._store().exists(self.object_key(key))

    def get(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The stored ``(meta, arrays)`` of ``key``, or ``None`` when there is none or it cannot be read.

        Raises:
            StorageError: The store failed (unreachable after its retries, refused the encryption); not a miss.
        """
        import numpy as np

        from components.common.storage import ObjectNotFoundError

        where = self.object_key(key)
        try:
            data = self._store().get_bytes(where)
        except ObjectNotFoundError:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(arrays.pop(_META).tobytes().decode("utf-8"))
        except (ValueError, KeyError, OSError, EOFError) as exc:
            logger.warning("%s: cached result %s is unreadable (%s): computing it again", self.stage, where, exc)
            return None
        return meta, arrays

    def put(self, key: str, meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
        """Store ``meta`` (JSON-able) and ``arrays`` (plain numpy arrays, no objects) under ``key``."""
        import numpy as np

        blob = np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode("utf-8"), dtype=np.uint8)
        with tempfile.TemporaryDirectory(prefix="clipsync-cache-") as tmp:
            path = Path(tmp) / "result.npz"
            np.savez(path, **{_META: blob}, **{name: np.asarray(a) for name, a in arrays.items()})
            self._store().put_file(self.object_key(key), path)


_STORES: dict[tuple[str, EncryptionConfig | None], Any] = {}


def _open(uri: str, encryption: EncryptionConfig | None) -> Any:
    # One store per process and location: opening an S3 store checks its bucket, not worth a request per video.
    from components.common.storage import open_store

    found = _STORES.get((uri, encryption))
    if found is None:
        found = _STORES[(uri, encryption)] = open_store(uri, encryption)
    return found

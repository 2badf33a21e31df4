"""Identical retrains register nothing: a fine-tune whose inputs equal an existing version's is not run again.

A fine-tune's **fingerprint** hashes what decides its result apart from where it starts: the training and
validation sets' content (each video's id, the hash of the arrays the trainer reads, its labels and the client's
feedback on it), the stage's settings that change the result (not device knobs) and the base model. It is recorded
on the registered version as the tag ``clipsync.fingerprint``, beside ``clipsync.started_from``: the version the
training started from (the champion, for a warm start), ``""`` from the base.

A version ``vN`` makes this month's training redundant when its fingerprint equals this one and training would
start where ``vN`` started, or from ``vN`` itself (training ``vN``'s data again on ``vN``). Then the stage trains
and registers nothing, writes ``identical to vN: nothing new to train`` as its no-challenger reason
(:mod:`components.common.no_challenger`) and the gate keeps the champion.

Standard library only at module level.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from components.common.config import TrackingConfig

FINGERPRINT_TAG = "clipsync.fingerprint"
STARTED_FROM_TAG = "clipsync.started_from"


def array_hash(array: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes (numpy or torch on CPU)."""
    import numpy as np

    data = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
    digest = hashlib.sha256(f"{data.dtype}{data.shape}".encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def fingerprint(**parts: Any) -> str:
    """SHA-256 (hex) of ``parts`` (JSON-able) as sorted JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def version_tags(fingerprint_value: str, started_from: str) -> dict[str, str]:
    """The tags that record a new version's fingerprint and starting point."""
    return {FINGERPRINT_TAG: fingerprint_value, STARTED_FROM_TAG: started_from}


def identical_version(tracking: TrackingConfig, name: str, fingerprint_value: str, started_from: str) -> str | None:
    """The newest version of ``name`` that this training would repeat, or ``None``.

    Args:
        tracking: Where MLflow lives.
        name: The registered model (``clip-<client>``).
        fingerprint_value: This month's :func:`fingerprint`.
        started_from: The version this training would start from (``""``: the base model).
    """
    from components.common.tracking import version_tags as registered_tags

    same = [
        version
        for version, tags in registered_tags(tracking, name).items()
        if tags.get(FINGERPRINT_TAG) == fingerprint_value
        and (version == started_from or tags.get(STARTED_FROM_TAG, "") == started_from)
    ]
    return max(same, key=int) if same else None


def identical_reason(version: str) -> str:
    """The no-challenger reason of an identical retrain (the summary shows it)."""
    return f"identical to v{version}: nothing new to train"

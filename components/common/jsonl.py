"""JSON Lines files of dataclass records: the ingest manifest and the frames and faces indexes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write dataclass records as one JSON object per line (keys sorted for stable diffs).

    Args:
        path: File to write; its folder is created.
        records: Dataclass instances, written in the given order.

    Returns:
        The number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path, build: Callable[[dict], T], what: str) -> list[T]:
    """Read a file written by :func:`write_jsonl`, turning each row into a record with ``build``.

    Args:
        path: File to read.
        build: Turns one decoded row (a dict) into a record; lists that the record keeps as tuples are
            converted here.
        what: Name of the format in error messages, e.g. ``"frames index"``.

    Returns:
        The records, in file order (blank lines skipped).

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: On a row that is not JSON or does not fit the record, with its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(build(json.loads(line)))
            except (json.JSONDecodeError, TypeError, AttributeError, KeyError) as exc:
                raise ValueError(f"{path}:{line_no}: not a {what} row: {exc}") from exc
    return records


def json_safe(obj: Any) -> Any:
    """``obj`` ready for ``json.dumps``: non-finite floats become ``None`` (JSON has no NaN), numpy scalars Python ones.

    Dicts, lists and tuples are converted recursively; anything else is returned as it is.
    """
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj

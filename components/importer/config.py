"""Settings of ``clipsync import`` (standard library only)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from components.common.errors import ConfigError, require

LAYOUTS = ("avlips", "lipsync-csv", "search")

_require = functools.partial(require, section="import")


@dataclass(frozen=True)
class ImportOptions:
    """What to import and how to name it.

    Attributes:
        layout: ``avlips`` (lip-sync: ``real/`` and ``fake/`` folders, or LipFD's ``0_real/`` and ``1_fake/``),
            ``lipsync-csv`` (lip-sync: a CSV of ``path,label`` with label ``real``/``fake``/``0``/``1``) or
            ``search`` (a CSV/TSV or JSON Lines file of ``video`` with ``caption`` and/or ``category``).
        labels_file: The CSV/TSV/JSONL file of ``lipsync-csv`` and ``search`` (relative to the source folder or
            absolute); unused by ``avlips``.
        name: The import's name: videos go under ``{videos_prefix}{name}/``, the label records into
            ``{labels_prefix}import-{name}.jsonl``. Empty: the source folder's name (lower case, safe characters).
        timestamp: Upload time written into each new label record (ISO date or datetime, UTC when naive); it
            decides which monthly window the videos fall in. Empty: the time of the import.
    """

    layout: str
    labels_file: str = ""
    name: str = ""
    timestamp: str = ""

    def __post_init__(self) -> None:
        _require(self.layout in LAYOUTS, f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        _require(
            self.layout == "avlips" or bool(self.labels_file),
            f"layout {self.layout} needs a labels file (--labels FILE)",
        )
        _require(
            not self.name or (self.name.replace("-", "").replace("_", "").isalnum() and self.name.isascii()),
            f"name must be letters, digits, '-' or '_', got {self.name!r}",
        )
        if self.timestamp:
            try:
                datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ConfigError(f"import: timestamp must be an ISO date or datetime, got {self.timestamp!r}") from exc

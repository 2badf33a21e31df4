"""importer: a folder of labelled videos in a public layout becomes a client's uploads and label records.

``clipsync import SRC --layout ...`` reads ``SRC`` (never writes to it) and writes into the client's store
(``storage.source_uri``: a local folder or ``s3://``): each accepted video as ``{videos_prefix}{name}/{path in
SRC}`` and one label file ``{labels_prefix}import-{name}.jsonl`` in the format ingest reads (README, "The
client's bucket"). Layouts:

- ``avlips`` (lip-sync, AVLips / LipFD style): ``SRC/real/**`` and ``SRC/fake/**`` (or ``0_real/``, ``1_fake/``);
  other files (LipFD's ``wav/`` folder, notes) are listed as ``ignored``;
- ``lipsync-csv``: a CSV/TSV with a header naming the video column (``path``, ``video``, ``video_path`` or
  ``file``) and the label column (``label``, ``authenticity`` or ``class``: ``real``/``fake``, or ``0``/``1`` as
  in LipFD), optionally a fake-type column (``fake_type``, ``type``, ``method`` or ``manipulation``: how a fake
  was made, e.g. ``wav2lip``; empty for reals), which evaluate reports figures for;
- ``search``: a CSV/TSV or JSON Lines file of the video and its ``caption`` (also ``text``, ``sentence``,
  ``captions`` or ``labels``, a list in JSON) and/or ``category`` (also ``class``); several rows of one video
  (MSR-VTT style: many captions each) add up to one record. A row with a category but no caption is
  labelled with the category's name.

Every row of the labels file and every file of the folder ends up in the report, with a status: ``imported``,
``already_imported`` (the same content is already at its key: a rerun imports nothing twice), ``rejected`` with
``code: detail`` (``bad_row``, ``bad_label``, ``no_label``, ``conflicting_label``, ``bad_name``, ``bad_link``,
``missing_file``, ``not_a_video``, ``empty_file``, ``duplicate``, ``exists``) or ``ignored`` (``not_in_layout``,
``not_listed``). Paths are object keys: validated (no ``..``, no absolute path, no backslash or control
character), and a symbolic link that leads out of ``SRC`` is refused. An object already at a key with other
content is never overwritten. The label file holds a record for every video of the import in the store, so a
rerun after an interruption completes it; records already there keep their timestamp.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.common.config import StorageConfig
from components.common.manifest import check_fake_type
from components.common.storage import (
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    OutsideStoreError,
    fetch_to_local,
    open_store,
    validate_key,
)
from components.importer.config import ImportOptions

logger = logging.getLogger("clipsync.import")

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg")
LIPSYNC_DIRS = {"real": "real", "0_real": "real", "fake": "fake", "1_fake": "fake"}
LIPSYNC_VALUES = {"real": "real", "0": "real", "fake": "fake", "1": "fake"}
VIDEO_COLUMNS = ("video", "video_path", "path", "file")
LABEL_COLUMNS = ("label", "authenticity", "class")
FAKE_TYPE_COLUMNS = ("fake_type", "type", "method", "manipulation")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "labels")
CATEGORY_COLUMNS = ("category", "class")


class ImportLayoutError(ValueError):
    """The folder or the labels file is not in the layout asked for; nothing was imported."""


@dataclass
class ImportRow:
    """What happened to one row of the labels file, or one file of the folder.

    Attributes:
        source: The path in the source folder (as listed, or as the row gives it).
        line: Line of the labels file (0: found by listing the folder).
        status: ``imported``, ``already_imported``, ``rejected`` or ``ignored``.
        reason: ``code: detail`` when rejected or ignored.
        key: The object key of the video in the client's store.
        authenticity: ``real`` / ``fake`` (lip-sync layouts).
        labels: The texts recorded for the video (search layout).
        category: The category recorded for the video.
        fake_type: How a fake was made (``lipsync-csv`` with a fake-type column), else empty.
    """

    source: str
    line: int
    status: str
    reason: str = ""
    key: str = ""
    authenticity: str = ""
    labels: list[str] = field(default_factory=list)
    category: str = ""
    fake_type: str = ""


@dataclass
class ImportReport:
    """The outcome of :func:`import_folder`: one row per labels-file row or folder file, nothing left out."""

    source_dir: str
    dest_uri: str
    layout: str
    name: str
    timestamp: str
    labels_key: str
    rows: list[ImportRow]

    def counts(self) -> dict[str, int]:
        """Rows per status, and ``rejected_<code>`` / ``ignored_<code>`` per reason code."""
        out = Counter(r.status for r in self.rows)
        out.update(f"{r.status}_{r.reason.split(':', 1)[0]}" for r in self.rows if r.reason)
        return dict(sorted(out.items()))

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"import {self.name} ({self.layout}) from {self.source_dir} into {self.dest_uri}",
            "  " + ", ".join(f"{k} {v}" for k, v in self.counts().items()),
            f"  label records: {self.labels_key or 'none written'}",
        ]
        lines += [f"  {r.status} {r.source!r} (line {r.line}): {r.reason}" for r in self.rows if r.reason][:20]
        return "\n".join(lines)

    def write(self, path: Path) -> Path:
        """Write the rows as JSON Lines (the whole report, for the record)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in self.rows), encoding="utf-8")
        return path


@dataclass
class _Video:
    """One video to import, and the rows that name it."""

    source: str
    lines: list[int]
    authenticity: str = ""
    labels: list[str] = field(default_factory=list)
    category: str = ""
    fake_type: str = ""
    status: str = ""
    reason: str = ""
    key: str = ""


def _slug(text: str) -> str:
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in text.lower()).strip("-")
    return slug or "import"


def _source_key(cell: str) -> str:
    """A path cell as a key of the source folder (``./`` dropped); raises InvalidKeyError."""
    text = cell.strip()
    while text.startswith("./"):
        text = text[2:]
    return validate_key(text)


def _column(fields: list[str], names: tuple[str, ...]) -> str | None:
    lower = {f.strip().lower(): f for f in fields}
    return next((lower[n] for n in names if n in lower), None)


def _cell(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The row's first non-empty value under one of ``names`` (JSON rows may each use another alias)."""
    lower = {str(k).strip().lower(): v for k, v in row.items()}
    return next((lower[n] for n in names if lower.get(n) not in (None, "")), None)


def _table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any] | None, str]]]:
    """Columns and rows ``(line, row or None, problem)`` of a CSV/TSV or JSON Lines file."""
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".jsonl", ".ndjson"):
        rows, columns = [], set()
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((line_no, None, f"bad_row: invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(row, dict):
                rows.append((line_no, None, f"bad_row: a row must be a JSON object, got {type(row).__name__}"))
                continue
            columns.update(row)
            rows.append((line_no, row, ""))
        return sorted(columns), rows
    if suffix not in (".csv", ".tsv"):
        raise ImportLayoutError(f"labels file {path.name}: expected .csv, .tsv or .jsonl")
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
    rows = []
    for row in reader:
        extra = row.pop(None, None)  # more cells than columns
        problem = f"bad_row: {len(extra)} cell(s) more than the header's columns" if extra else ""
        rows.append((reader.line_num, None if problem else row, problem))
    return list(reader.fieldnames or []), rows


def _needed(columns: list[str], names: tuple[str, ...], what: str, path: Path) -> str:
    found = _column(columns, names)
    if found is None:
        raise ImportLayoutError(
            f"labels file {path.name} has no {what} column (one of {', '.join(names)}); columns: {', '.join(columns)}"
        )
    return found


def _read_rows(options: ImportOptions, labels_path: Path, rows_out: list[ImportRow]) -> dict[str, _Video]:
    """The videos the labels file names (rows it cannot use go to ``rows_out`` as rejected)."""
    columns, rows = _table(labels_path)
    _needed(columns, VIDEO_COLUMNS, "video path", labels_path)
    if options.layout == "lipsync-csv":
        _needed(columns, LABEL_COLUMNS, "real/fake label", labels_path)
    elif _column(columns, CAPTION_COLUMNS) is None and _column(columns, CATEGORY_COLUMNS) is None:
        raise ImportLayoutError(
            f"labels file {labels_path.name} has neither a caption column ({', '.join(CAPTION_COLUMNS)}) nor a "
            f"category column ({', '.join(CATEGORY_COLUMNS)}); columns: {', '.join(columns)}"
        )
    videos: dict[str, _Video] = {}
    for line, row, problem in rows:
        source, fields = "", {}
        if row is not None and not problem:
            problem, source, fields = _parse_row(options, row)
        if problem:
            rows_out.append(ImportRow(source, line, "rejected", problem))
            continue
        video = videos.setdefault(fields["source"], _Video(fields["source"], []))
        video.lines.append(line)
        if options.layout == "lipsync-csv":
            if video.authenticity and video.authenticity != fields["authenticity"]:
                video.status, video.reason = "rejected", "conflicting_label: rows label it both real and fake"
            elif video.fake_type and fields["fake_type"] and video.fake_type != fields["fake_type"]:
                video.status, video.reason = "rejected", "conflicting_label: rows give it two fake types"
            video.authenticity = video.authenticity or fields["authenticity"]
            video.fake_type = video.fake_type or fields["fake_type"]
        else:
            video.labels = list(dict.fromkeys(video.labels + fields["labels"]))
            video.category = video.category or fields["category"]
    return videos


def _parse_row(options: ImportOptions, row: dict[str, Any]) -> tuple[str, str, dict]:
    """``(problem, source, fields)`` of one labels-file row (``problem`` empty when the row is usable)."""
    cell = _cell(row, VIDEO_COLUMNS)
    if not isinstance(cell, str) or not cell.strip():
        return f"bad_row: no video path ({'/'.join(VIDEO_COLUMNS)})", "", {}
    try:
        source = _source_key(cell)
    except InvalidKeyError as exc:
        return f"bad_name: {exc}", cell, {}
    if options.layout == "lipsync-csv":
        value = str(_cell(row, LABEL_COLUMNS) or "").strip().lower()
        if value not in LIPSYNC_VALUES:
            return f"bad_label: the label must be real, fake, 0 or 1, got {value!r}", source, {}
        authenticity = LIPSYNC_VALUES[value]
        fake_type = str(_cell(row, FAKE_TYPE_COLUMNS) or "").strip()
        if fake_type:
            try:
                check_fake_type(fake_type)
            except ValueError as exc:
                return f"bad_label: {exc}", source, {}
            if authenticity != "fake":
                return f"bad_label: fake type {fake_type!r} given for a real video", source, {}
        return "", source, {"source": source, "authenticity": authenticity, "fake_type": fake_type}
    captions: Any = _cell(row, CAPTION_COLUMNS)
    captions = captions if isinstance(captions, list) else [captions] if captions is not None else []
    if not all(isinstance(c, str) for c in captions):
        return f"bad_row: captions must be text, got {captions!r}", source, {}
    category = _cell(row, CATEGORY_COLUMNS)
    if category is not None and not isinstance(category, str):
        return f"bad_row: category must be text, got {category!r}", source, {}
    labels = [c.strip() for c in captions if c.strip()]
    category = (category or "").strip()
    if not labels and not category:
        return "no_label: the row has neither a caption nor a category", source, {}
    labels = labels or [category.replace("_", " ")]
    return "", source, {"source": source, "labels": labels, "category": category}


def _folder_videos(source: LocalStore, rows_out: list[ImportRow]) -> dict[str, _Video]:
    """AVLips layout: the videos under ``real/`` and ``fake/`` (other files go to ``rows_out`` as ignored)."""
    if not any((source.root / d).is_dir() for d in LIPSYNC_DIRS):
        raise ImportLayoutError(
            f"{source.root} has no real/ or fake/ folder (AVLips layout: SRC/real/*.mp4 and SRC/fake/*.mp4; "
            "LipFD's 0_real/ and 1_fake/ work too)"
        )
    videos: dict[str, _Video] = {}
    for info in source.list("", include_refused=True):
        top = info.key.split("/", 1)[0]
        if top not in LIPSYNC_DIRS or "/" not in info.key:
            rows_out.append(ImportRow(info.key, 0, "ignored", "not_in_layout: not inside real/ or fake/"))
            continue
        videos[info.key] = _Video(info.key, [0], authenticity=LIPSYNC_DIRS[top])
        if info.refused:
            videos[info.key].status, videos[info.key].reason = "rejected", info.refused
    return videos


def _import_video(video: _Video, source: LocalStore, dest: Any, prefix: str, cache: Path, seen: dict) -> None:
    """Validate one video and copy it to the store (sets its status, reason and key)."""
    from components.ingest.core import sha256_file

    if not video.source.lower().endswith(VIDEO_SUFFIXES):
        video.status, video.reason = "rejected", f"not_a_video: the name does not end in {'/'.join(VIDEO_SUFFIXES)}"
        return
    try:
        local = source.local_path(video.source)
        if local is None or not local.is_file():
            raise ObjectNotFoundError(f"no file {video.source!r} in {source.uri}")
    except OutsideStoreError:
        video.status, video.reason = "rejected", "bad_link: a symbolic link that leads outside the source folder"
        return
    except (ObjectNotFoundError, InvalidKeyError) as exc:
        video.status, video.reason = "rejected", f"missing_file: {exc}"
        return
    if local.stat().st_size == 0:
        video.status, video.reason = "rejected", "empty_file: the file is 0 bytes"
        return
    sha = sha256_file(local)
    if sha in seen:
        video.status, video.reason = "rejected", f"duplicate: same content as {seen[sha]!r}"
        return
    seen[sha] = video.source
    try:
        video.key = validate_key(prefix + video.source)
    except InvalidKeyError as exc:
        video.status, video.reason = "rejected", f"bad_name: {exc}"
        return
    if dest.exists(video.key):
        if sha256_file(fetch_to_local(dest, video.key, cache)) == sha:
            video.status = "already_imported"
        else:
            video.status, video.reason = "rejected", f"exists: {video.key} already holds other content (kept)"
        return
    dest.put_file(video.key, local)
    video.status = "imported"


def _record(video: _Video, timestamp: str) -> dict[str, Any]:
    record: dict[str, Any] = {"video_path": video.key, "labels": video.labels, "category": video.category}
    record["timestamp"] = timestamp
    if video.authenticity:
        record["authenticity"] = video.authenticity
    if video.fake_type:
        record["fake_type"] = video.fake_type
    return record


def import_folder(source_dir: Path, storage: StorageConfig, options: ImportOptions, cache_dir: Path) -> ImportReport:
    """Import the videos of ``source_dir`` with their labels into the client's store.

    Args:
        source_dir: The folder in the chosen layout (only read).
        storage: The client's storage settings (``source_uri``, ``videos_prefix``, ``labels_prefix``).
        options: Layout, labels file, import name and timestamp.
        cache_dir: Where objects of an ``s3://`` store are downloaded to compare them with a rerun's files.

    Returns:
        The report: one row per labels-file row or folder file.

    Raises:
        ImportLayoutError: The folder or labels file is not in the layout (nothing is imported).
        StorageError: The store cannot be written (after its bounded retries); what was copied stays and a
            rerun completes the import.
    """
    source_dir = Path(source_dir).expanduser().resolve()
    if not source_dir.is_dir():
        raise ImportLayoutError(f"source folder {source_dir} does not exist")
    source = LocalStore(source_dir)
    name = options.name or _slug(source_dir.name)
    timestamp = options.timestamp or datetime.now(UTC).isoformat(timespec="seconds")
    rows: list[ImportRow] = []
    labels_source = ""
    if options.layout == "avlips":
        videos = _folder_videos(source, rows)
    else:
        labels_path = Path(options.labels_file).expanduser()
        labels_path = (labels_path if labels_path.is_absolute() else source_dir / labels_path).resolve()
        if not labels_path.is_file():
            raise ImportLayoutError(f"labels file {labels_path} does not exist")
        if labels_path.is_relative_to(source_dir):
            labels_source = labels_path.relative_to(source_dir).as_posix()
        videos = _read_rows(options, labels_path, rows)
        for info in source.list("", include_refused=True):
            if info.key not in videos and info.key != labels_source:
                rows.append(ImportRow(info.key, 0, "ignored", "not_listed: no row of the labels file names it"))

    dest = open_store(storage.source_uri)
    prefix = f"{storage.videos_prefix}{name}/"
    seen: dict[str, str] = {}
    for video in sorted(videos.values(), key=lambda v: v.source):
        if not video.status:
            _import_video(video, source, dest, prefix, Path(cache_dir), seen)
        logger.info("import: %s %s %s", video.status, video.source, video.reason)

    labels_key = validate_key(f"{storage.labels_prefix}import-{name}.jsonl")
    records: dict[str, dict[str, Any]] = {}
    if dest.exists(labels_key):  # an earlier run of this import: keep its records and their timestamps
        for line in dest.get_bytes(labels_key).decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["video_path"]] = record
    before = dict(records)
    for video in videos.values():
        if video.status in ("imported", "already_imported"):
            stamp = records.get(video.key, {}).get("timestamp", timestamp)
            records[video.key] = _record(video, stamp)
    if records != before:
        body = "".join(json.dumps(records[k]) + "\n" for k in sorted(records))
        dest.put_bytes(labels_key, body.encode("utf-8"), "application/x-ndjson")
    for video in videos.values():
        for line in video.lines:
            rows.append(
                ImportRow(
                    video.source,
                    line,
                    video.status,
                    video.reason,
                    video.key,
                    video.authenticity,
                    video.labels,
                    video.category,
                    video.fake_type,
                )
            )
    rows.sort(key=lambda r: (r.line == 0, r.line, r.source))
    return ImportReport(str(source_dir), dest.uri, options.layout, name, timestamp, labels_key if records else "", rows)

"""Ingest: list the month's uploads, validate and deduplicate them, write the manifest.

The client's store is only read: videos under ``storage.videos_prefix``, label records (JSON Lines) under
``storage.labels_prefix``. Every object uploaded in the window under the videos prefix gets one manifest row:
``accepted``, ``rejected`` with a ``"code: detail"`` reason (an object the store refuses to read, such as a name
with a backslash or a control character, is rejected as ``bad_name``), or ``duplicate`` of an earlier upload
with the same content. An outage of the store is not a property of the videos: it fails the stage (after the
store's bounded retries) and nothing is recorded for the videos it did not reach.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from components.common.faults import is_infrastructure_error
from components.common.manifest import VideoRecord, check_fake_type, write_manifest
from components.common.stage import StageContext
from components.common.storage import (
    InvalidKeyError,
    LocalStore,
    ObjectInfo,
    ObjectNotFoundError,
    OutsideStoreError,
    StorageError,
    fetch_to_local,
    open_store,
    validate_key,
)
from components.ingest.config import IngestConfig

logger = logging.getLogger("clipsync.ingest")

#: Every rejection code ingest can give (each becomes an ``ingest_rejected_<code>`` metric, 0 when unused).
REJECT_CODES = (
    "bad_name",
    "bad_link",
    "empty_file",
    "too_large",
    "unreadable",
    "not_media",
    "no_video_stream",
    "undecodable",
    "too_short",
    "too_long",
    "resolution",
    "fps",
    "no_audio_for_lipsync",
)
LABEL_SUFFIXES = (".jsonl", ".ndjson")
_HASH_CHUNK = 1024 * 1024


class VideoRejected(Exception):
    """A video failed validation. ``str(exc)`` is the manifest reason ``"code: detail"``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class IngestReport:
    """Counts of one ingest run (also logged to MLflow through :meth:`as_metrics`).

    ``seen`` counts every object under the videos prefix; ``out_of_window`` of them were uploaded outside
    the window; the rest are ``accepted + duplicates + sum(rejected.values())``.

    Attributes:
        as_of: End of the window (ISO date, exclusive).
        window_start: Start of the window (ISO date, inclusive).
        seen: Objects found under the videos prefix.
        accepted: Videos accepted.
        duplicates: Videos whose content an earlier upload already has.
        rejected: Rejection code -> count.
        unlabeled: Accepted videos without a label record.
        out_of_window: Videos uploaded outside the window (not in the manifest).
        label_problems: ``file:line: problem`` for each skipped or suspicious label record.
    """

    as_of: str
    window_start: str
    seen: int
    accepted: int
    duplicates: int
    rejected: dict[str, int]
    unlabeled: int
    out_of_window: int
    label_problems: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow (every known rejection code is present, 0 when unused)."""
        metrics = {
            "ingest_seen": float(self.seen),
            "ingest_accepted": float(self.accepted),
            "ingest_duplicates": float(self.duplicates),
            "ingest_rejected": float(sum(self.rejected.values())),
            "ingest_unlabeled": float(self.unlabeled),
            "ingest_out_of_window": float(self.out_of_window),
            "ingest_label_problems": float(len(self.label_problems)),
        }
        for code in sorted(set(REJECT_CODES) | set(self.rejected)):
            metrics[f"ingest_rejected_{code}"] = float(self.rejected.get(code, 0))
        return metrics


@dataclass
class _Label:
    labels: list[str]
    category: str = ""
    authenticity: str = ""
    fake_type: str = ""
    timestamp: datetime | None = None
    where: str = ""


def _parse_timestamp(value: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (naive means UTC) as an aware UTC datetime."""
    text = value.strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_label_line(line: str, videos_prefix: str) -> tuple[str, _Label]:
    """Validate one JSON Lines record; raises ValueError with the problem."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"a record must be a JSON object, got {type(row).__name__}")
    path = row.get("video_path")
    if not isinstance(path, str):
        raise ValueError(f"video_path must be a string, got {path!r}")
    try:
        validate_key(path)
    except InvalidKeyError as exc:
        raise ValueError(f"unsafe video_path: {exc}") from None
    if not path.startswith(videos_prefix):
        # The guide's records name bare files ("client_video_001.mp4"): they live under the videos prefix.
        path = videos_prefix + path
    labels = row.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"labels must be a list of strings, got {labels!r}")
    labels = [x.strip() for x in labels if x.strip()]
    category = row.get("category", "") or ""
    if not isinstance(category, str):
        raise ValueError(f"category must be a string, got {category!r}")
    authenticity = row.get("authenticity", "") or ""
    if authenticity not in ("", "real", "fake"):
        raise ValueError(f"authenticity must be 'real' or 'fake', got {authenticity!r}")
    fake_type = row.get("fake_type", "") or ""
    if fake_type:
        check_fake_type(fake_type)
        if authenticity != "fake":
            raise ValueError(f"fake_type {fake_type!r} is only for a fake video, authenticity is {authenticity!r}")
    stamp = row.get("timestamp")
    timestamp = None
    if stamp not in (None, ""):
        if not isinstance(stamp, str):
            raise ValueError(f"timestamp must be an ISO date or datetime string, got {stamp!r}")
        try:
            timestamp = _parse_timestamp(stamp)
        except ValueError:
            raise ValueError(f"timestamp must be an ISO date or datetime, got {stamp!r}") from None
    return path, _Label(labels, category.strip(), authenticity, fake_type, timestamp)


def read_labels(store: Any, labels_prefix: str, videos_prefix: str) -> tuple[dict[str, _Label], list[str]]:
    """All label records under ``labels_prefix``: video key -> label, plus the problems found.

    A second record for the same video adds its labels; its other fields replace the earlier ones.
    """
    records: dict[str, _Label] = {}
    problems: list[str] = []
    for info in store.list(labels_prefix, include_refused=True):
        if info.refused:
            problems.append(f"{info.key!r}: {info.refused}; file ignored")
            continue
        if not info.key.endswith(LABEL_SUFFIXES):
            problems.append(f"{info.key}: not a JSON Lines file ({'/'.join(LABEL_SUFFIXES)}), ignored")
            continue
        try:
            text = store.get_bytes(info.key).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.append(f"{info.key}: not UTF-8 text ({exc.reason} at byte offset {exc.start}), file ignored")
            continue
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{info.key}:{line_no}"
            try:
                path, label = _parse_label_line(line, videos_prefix)
            except ValueError as exc:
                problems.append(f"{where}: {exc}; record skipped")
                continue
            label.where = where
            if path in records:
                first = records[path]
                problems.append(f"{where}: second record for {path!r} (first at {first.where}); labels merged")
                label.labels = list(dict.fromkeys(first.labels + label.labels))
                label.category = label.category or first.category
                label.authenticity = label.authenticity or first.authenticity
                label.fake_type = (label.fake_type or first.fake_type) if label.authenticity == "fake" else ""
                label.timestamp = label.timestamp or first.timestamp
            records[path] = label
    return records, problems


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def split_for(sha256: str, config: IngestConfig) -> str:
    """The split fixed by the content hash, so a video keeps its split from month to month."""
    u = int(sha256[:8], 16) / 2**32
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def probe_video(path: Path, config: IngestConfig, needs_audio: bool) -> dict:
    """Probe a video (:func:`components.common.media.probe_media`) and check it against the ingest bounds.

    Args:
        path: The local file.
        config: The bounds.
        needs_audio: The video is a lip-sync sample (authenticity set), so it must have an audio track.

    Returns:
        ``duration_s``, ``width``/``height`` (display size, after rotation), ``fps``, ``video_codec``,
        ``rotation`` (0/90/180/270), ``has_audio``, ``audio_sample_rate``.

    Raises:
        VideoRejected: With the first rule the video broke.
    """
    from components.common.media import MediaError, probe_media

    size = path.stat().st_size
    if size == 0:
        raise VideoRejected("empty_file", "the file is 0 bytes")
    if size > config.max_size_mb * 1024 * 1024:
        raise VideoRejected("too_large", f"{size / 2**20:.1f} MiB > max_size_mb {config.max_size_mb:g}")
    try:
        info = probe_media(path)
    except MediaError as exc:
        raise VideoRejected(exc.code, exc.detail) from None
    duration, width, height, fps = info.duration_s, info.width, info.height, info.fps

    if duration < config.min_duration_s:
        raise VideoRejected("too_short", f"{duration:.2f} s < min_duration_s {config.min_duration_s:g}")
    if duration > config.max_duration_s:
        raise VideoRejected("too_long", f"{duration:.2f} s > max_duration_s {config.max_duration_s:g}")
    if min(width, height) < config.min_side or max(width, height) > config.max_side:
        raise VideoRejected(
            "resolution", f"{width}x{height} outside {config.min_side}..{config.max_side} pixels per side"
        )
    if not config.min_fps <= fps <= config.max_fps:
        raise VideoRejected("fps", f"{fps:.2f} fps outside {config.min_fps:g}..{config.max_fps:g}")
    if needs_audio and not info.has_audio:
        raise VideoRejected("no_audio_for_lipsync", f"labelled for lip-sync but has no audio stream ({info.streams})")
    return {
        "duration_s": round(duration, 3),
        "width": width,
        "height": height,
        "fps": round(fps, 3),
        "video_codec": info.video_codec,
        "rotation": info.rotation,
        "has_audio": info.has_audio,
        "audio_sample_rate": info.audio_sample_rate,
    }


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def run_ingest(manifest_path: Path, cfg: IngestConfig, ctx: StageContext) -> IngestReport:
    """The ingest stage: the videos uploaded in the window ``[as_of - days, as_of)`` into the manifest.

    Nothing in the source store (``ctx.storage``) is modified. S3 objects are downloaded to
    ``{state_dir}/cache/videos`` (frame_extraction reads them there: one download per run); a local folder is read
    in place. Opens the stage run ``ingest`` and logs the counts and the label problems there.

    Args:
        manifest_path: Where to write the JSON Lines manifest (one row per in-window video).
        cfg: The ingest bounds and split fractions.
        ctx: The client's stores and window (``window.as_of``: the end, exclusive, midnight UTC; empty: today).

    Returns:
        The run's counts.

    Raises:
        StorageError: If the source store cannot be opened, listed or read (an outage after the bounded
            retries is a :class:`~components.common.storage.StorageUnavailableError`); no manifest is written.
    """
    params = {"as_of": ctx.window.as_of, "window_days": ctx.window.days, "source_uri": ctx.storage.source_uri}
    with ctx.stage_run("ingest", params) as run:
        report = _ingest_window(manifest_path, cfg, ctx, ctx.window.end())
        run.log_metrics(report.as_metrics())
        run.log_dict({"label_problems": report.label_problems}, "ingest/label_problems.json")
    return report


def _ingest_window(manifest_path: Path, rules: IngestConfig, ctx: StageContext, as_of: date) -> IngestReport:
    from tqdm import tqdm

    storage_cfg = ctx.storage
    store = open_store(storage_cfg.source_uri)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise StorageError(f"source folder {store.uri} does not exist (storage.source_uri)")
    # frame_extraction reads the same folder, so a remote video is downloaded once per run, not twice.
    cache_dir = Path(ctx.state_dir) / "cache" / "videos"
    end = _day_start(as_of)
    start = _day_start(as_of - timedelta(days=ctx.window.days))

    labels, problems = read_labels(store, storage_cfg.labels_prefix, storage_cfg.videos_prefix)
    objects: list[ObjectInfo] = list(store.list(storage_cfg.videos_prefix, include_refused=True))
    keys = {info.key for info in objects}
    for path in sorted(set(labels) - keys):
        problems.append(f"{labels[path].where}: video_path {path!r} not found in {store.uri}")

    in_window: list[tuple[ObjectInfo, datetime]] = []
    for info in objects:
        label = labels.get(info.key)
        uploaded = label.timestamp if label and label.timestamp else info.last_modified
        if start <= uploaded < end:
            in_window.append((info, uploaded))
    out_of_window = len(objects) - len(in_window)
    logger.info(
        "%d videos under %s, %d uploaded in [%s, %s)",
        len(objects),
        store.uri_for(storage_cfg.videos_prefix.rstrip("/")),
        len(in_window),
        start.date(),
        end.date(),
    )

    def base(info: ObjectInfo, uploaded: datetime, sha: str, **kw: Any) -> VideoRecord:
        label = labels.get(info.key)
        return VideoRecord(
            video_id=sha[:16],
            key=info.key,
            uri="" if info.refused else store.uri_for(info.key),
            sha256=sha,
            size_bytes=info.size,
            uploaded_at=uploaded.isoformat(),
            labels=tuple(label.labels) if label else (),
            category=label.category if label else "",
            authenticity=label.authenticity if label else "",  # type: ignore[arg-type]
            fake_type=label.fake_type if label else "",
            split=split_for(sha, rules) if sha else "train",  # type: ignore[arg-type]
            **kw,
        )

    records: list[VideoRecord] = []
    hashed: list[tuple[ObjectInfo, datetime, str, Path]] = []
    # Order by upload time then key, so the first upload of some content is the one that is kept.
    in_window.sort(key=lambda item: (item[1], item[0].key))
    for info, uploaded in tqdm(in_window, desc="ingest: hash", unit="video"):
        if info.refused:
            records.append(base(info, uploaded, "", status="rejected", reason=info.refused))
            continue
        if info.size == 0:
            records.append(base(info, uploaded, "", status="rejected", reason="empty_file: the file is 0 bytes"))
            continue
        if info.size > rules.max_size_mb * 1024 * 1024:
            reason = f"too_large: {info.size / 2**20:.1f} MiB > max_size_mb {rules.max_size_mb:g}"
            records.append(base(info, uploaded, "", status="rejected", reason=reason))
            continue
        try:
            local = fetch_to_local(store, info.key, cache_dir)
            sha = sha256_file(local)
        except (ObjectNotFoundError, OutsideStoreError, OSError) as exc:
            if is_infrastructure_error(exc):  # a failing disk or mount, not the video
                raise
            records.append(base(info, uploaded, "", status="rejected", reason=f"unreadable: {exc}"))
            continue
        hashed.append((info, uploaded, sha, local))

    for record in records:
        logger.warning("rejected %r: %s", record.key, record.reason)

    first_of: dict[str, str] = {}
    for info, uploaded, sha, local in tqdm(hashed, desc="ingest: validate", unit="video"):
        if sha in first_of:
            records.append(base(info, uploaded, sha, status="duplicate", duplicate_of=sha[:16]))
            logger.info("%s duplicates %s", info.key, first_of[sha])
            continue
        first_of[sha] = info.key
        label = labels.get(info.key)
        try:
            meta = probe_video(local, rules, needs_audio=bool(label and label.authenticity))
        except VideoRejected as exc:
            logger.warning("rejected %s: %s", info.key, exc)
            records.append(base(info, uploaded, sha, status="rejected", reason=str(exc)))
            continue
        records.append(base(info, uploaded, sha, status="accepted", **meta))

    write_manifest(manifest_path, records)
    rejected = Counter(r.reason.split(":", 1)[0] for r in records if r.status == "rejected")
    accepted = [r for r in records if r.status == "accepted"]
    report = IngestReport(
        as_of=as_of.isoformat(),
        window_start=start.date().isoformat(),
        seen=len(objects),
        accepted=len(accepted),
        duplicates=sum(r.status == "duplicate" for r in records),
        rejected=dict(sorted(rejected.items())),
        unlabeled=sum(r.key not in labels for r in accepted),
        out_of_window=out_of_window,
        label_problems=problems,
    )
    for problem in problems:
        logger.warning("label problem: %s", problem)
    logger.info(
        "ingest: %d accepted, %d duplicates, %d rejected %s, %d unlabeled, %d out of window",
        report.accepted,
        report.duplicates,
        sum(rejected.values()),
        dict(rejected),
        report.unlabeled,
        report.out_of_window,
    )
    return report

"""frame_extraction's per-video results kept in the artifacts store (:mod:`components.common.result_cache`).

A video's frames and audio depend on its content (the manifest's ``sha256``), whether it gets a dense clip (an
authenticity label or ``dense_all``), the stage's settings other than ``workers`` and ``shard_max_videos``, and
the PyAV (FFmpeg) version that decodes it: that is the key. Only ``ok`` results (partial ones included) are kept;
a rejection is worked out again next time (it is cheap, and a fault may have caused it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator

from components.common.manifest import VideoRecord
from components.common.result_cache import ResultCache, package_version
from components.frame_extraction.config import FrameExtractionConfig

#: Settings that change how the work is done, not its result.
NOT_IN_KEY = ("workers", "shard_max_videos")
_ARRAYS = ("search_frames", "dense_frames", "audio")


def result_key(cache: ResultCache, record: VideoRecord, fx: FrameExtractionConfig) -> str:
    """The cache key of ``record``'s extraction with ``fx``; ``""`` (not cached) without a content hash."""
    if not record.sha256:
        return ""
    settings = {k: v for k, v in dataclasses.asdict(fx).items() if k not in NOT_IN_KEY}
    dense = bool(record.authenticity) or fx.dense_all
    return cache.key(
        video_id=record.video_id, sha256=record.sha256, dense=dense, settings=settings, av=package_version("av")
    )


def save(cache: ResultCache, key: str, video) -> None:
    """Keep an ``ok`` :class:`~components.frame_extraction.core.ExtractedVideo` under ``key``."""
    meta = {f.name: getattr(video, f.name) for f in dataclasses.fields(video) if f.name not in _ARRAYS}
    arrays = {"search_frames": video.search_frames, "dense_frames": video.dense_frames}
    if video.audio is not None:
        arrays["audio"] = video.audio
    cache.put(key, meta, arrays)


def load(cache: ResultCache, key: str, video_type: type):
    """The ``video_type`` (:class:`~components.frame_extraction.core.ExtractedVideo`) kept under ``key``
    (``reused`` set, nothing decoded this run), or ``None``."""
    started = time.perf_counter()
    found = cache.get(key)
    if found is None:
        return None
    meta, arrays = found
    known = {f.name for f in dataclasses.fields(video_type)}
    video = video_type(**{k: v for k, v in meta.items() if k in known})
    video.search_frames, video.dense_frames = arrays["search_frames"], arrays["dense_frames"]
    video.audio = arrays.get("audio")
    video.reused, video.decoded_frames = True, 0
    video.seconds = time.perf_counter() - started
    return video


def reuse_or_compute(
    records: list[VideoRecord],
    cache: ResultCache,
    fx: FrameExtractionConfig,
    compute: Callable[[list[VideoRecord]], Iterable[tuple[VideoRecord, object]]],
    video_type: type,
) -> Iterator[tuple[VideoRecord, object]]:
    """``compute``'s results in ``records`` order, with what ``cache`` holds taken from it instead.

    Only the videos without a kept result go to ``compute`` (so an all-cached run starts no worker process); a
    kept result is loaded when its turn comes (memory stays bounded), and one that turns out unreadable is
    computed on its own. New ``ok`` results are kept.
    """
    keys = {r.video_id: result_key(cache, r, fx) for r in records}
    kept = {vid for vid, key in keys.items() if key and cache.has(key)}
    computed = iter(compute([r for r in records if r.video_id not in kept]))
    for record in records:
        key = keys[record.video_id]
        video = load(cache, key, video_type) if record.video_id in kept else None
        if video is None:
            record, video = next(computed) if record.video_id not in kept else next(iter(compute([record])))
            if key and video.status == "ok":
                save(cache, key, video)
        yield record, video

"""Ingest on tiny real videos (PyAV, H.264 + AAC): each rejection reason, dedup, window, splits, S3."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from test_storage import ACCESS, SECRET, make_bucket, moto_endpoint, s3_env  # noqa: F401  (fixtures reused)

from components.common.manifest import read_manifest
from components.common.storage import StorageError, open_store
from components.config import from_dict
from components.ingest.config import IngestConfig
from components.ingest.core import REJECT_CODES, IngestReport, VideoRejected, probe_video, run_ingest, split_for

AS_OF = date(2026, 12, 1)  # window [2026-11-01, 2026-12-01) with the default 30 days


def make_video(path: Path, *, w=64, h=64, seconds=1.0, fps=10, audio=True, video=True, rotation=0, seed=0) -> Path:
    """A tiny mp4: H.264 noise that scrolls, plus a 16 kHz mono AAC tone (contents differ by seed)."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        # All streams must exist before the first packet is muxed (the header is written then).
        if video:
            vs = container.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            if rotation:
                vs.set_display_rotation(rotation)
        if audio:
            aus = container.add_stream("aac", rate=16000)
            aus.layout = "mono"
        if video:
            base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for i in range(round(seconds * fps)):
                frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
                container.mux(vs.encode(frame))
            container.mux(vs.encode())
        if audio:
            n = int(16000 * seconds)
            sig = (0.3 * np.sin(2 * np.pi * (220 + 10 * seed) * np.arange(n) / 16000)).astype(np.float32)
            for s in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(sig[None, s : s + 1024], format="fltp", layout="mono")
                frame.sample_rate = 16000
                container.mux(aus.encode(frame))
            container.mux(aus.encode())
    return path


def _set_mtime(path: Path, day: str) -> None:
    stamp = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
    os.utime(path, (stamp, stamp))


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def bucket(tmp_path: Path) -> Path:
    """A client folder with one video of every kind and two label files."""
    root = tmp_path / "bucket"
    v = root / "videos"
    make_video(v / "good_a.mp4", seed=1)
    make_video(v / "good_b.mp4", seed=2)
    shutil.copyfile(v / "good_a.mp4", v / "copy_of_a.mp4")
    (v / "empty.mp4").write_bytes(b"")
    good = (v / "good_a.mp4").read_bytes()
    (v / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (v / "notes.mp4").write_text("this is not a video\n")
    make_video(v / "audio_only.mp4", video=False, seed=3)
    make_video(v / "silent_real.mp4", audio=False, seed=4)
    make_video(v / "silent_search.mp4", audio=False, seed=5)
    make_video(v / "old.mp4", seed=6)
    make_video(v / "rotated.mp4", w=64, h=48, rotation=90, seed=7)
    make_video(v / "short.mp4", seconds=0.3, seed=8)
    make_video(v / "tiny.mp4", w=16, h=16, seed=9)
    make_video(v / "slow.mp4", fps=2, seconds=2.0, seed=10)
    broken = bytearray(make_video(v / "undecodable.mp4", seed=11).read_bytes())
    start, end = broken.index(b"mdat") + 4, broken.index(b"moov") - 4
    broken[start:end] = bytes(end - start)  # container intact, coded frames zeroed
    (v / "undecodable.mp4").write_bytes(bytes(broken))
    for p in v.iterdir():
        _set_mtime(p, "2026-11-10")
    _set_mtime(v / "good_b.mp4", "2026-11-30T23:59:59")  # unlabeled, in window by its mtime

    lines = [
        {"video_path": "videos/good_a.mp4", "labels": ["surgical procedure", "laparoscopic surgery"],
         "category": "medical", "timestamp": "2026-11-02", "authenticity": "real"},
        {"video_path": "videos/copy_of_a.mp4", "labels": ["copy"], "timestamp": "2026-11-20T10:00:00Z"},
        {"video_path": "videos/silent_real.mp4", "labels": ["talking head"], "authenticity": "real"},
        {"video_path": "videos/silent_search.mp4", "labels": ["city at night"], "category": "b-roll"},
        {"video_path": "videos/old.mp4", "labels": ["old"], "timestamp": "2026-10-31T23:59:59"},
        {"video_path": "videos/rotated.mp4", "labels": ["phone video"], "timestamp": "2026-11-05T12:00:00+02:00"},
    ]  # fmt: skip
    text = "\n".join(json.dumps(x) for x in lines)
    text += '\n{"video_path": "videos/good_b.mp4", "labels": [\n'  # invalid JSON (line 7)
    text += json.dumps({"video_path": "../etc/passwd", "labels": ["x"]}) + "\n"  # unsafe (line 8)
    text += json.dumps({"video_path": "videos/tiny.mp4", "labels": "not a list"}) + "\n"  # wrong type (line 9)
    text += "\n" + json.dumps({"video_path": "videos/gone.mp4", "labels": ["missing"]}) + "\n"  # line 11
    (root / "labels").mkdir()
    (root / "labels" / "batch1.jsonl").write_text(text)
    (root / "labels" / "more.jsonl").write_text(
        json.dumps({"video_path": "videos/good_a.mp4", "labels": ["medical operation"]}) + "\n"
    )
    return root


def _ingest(config, as_of: date, manifest: Path) -> IngestReport:
    """The ingest stage for ``config``'s client, its window ending at ``as_of`` (no MLflow)."""
    window = replace(config.window, as_of=as_of.isoformat())
    return run_ingest(manifest, config.ingest, replace(config, window=window).context(track=False))


def _config(tmp_path: Path, source_uri: str, **ingest):
    return from_dict(
        {"state_dir": str(tmp_path / "state"), "storage": {"source_uri": source_uri}, "ingest": ingest or {}}
    )


def test_run_ingest_local(bucket, tmp_path):
    before = _snapshot(bucket)
    config = _config(tmp_path, str(bucket))
    manifest = tmp_path / "out" / "manifest.jsonl"
    report = _ingest(config, AS_OF, manifest)
    rows = {r.key.removeprefix("videos/"): r for r in read_manifest(manifest)}

    reasons = {name: r.reason.split(":", 1)[0] for name, r in rows.items() if r.status == "rejected"}
    assert reasons == {
        "empty.mp4": "empty_file",
        "truncated.mp4": "not_media",
        "notes.mp4": "not_media",
        "audio_only.mp4": "no_video_stream",
        "silent_real.mp4": "no_audio_for_lipsync",
        "short.mp4": "too_short",
        "tiny.mp4": "resolution",
        "slow.mp4": "fps",
        "undecodable.mp4": "undecodable",
    }
    assert "InvalidDataError" in rows["truncated.mp4"].reason  # names PyAV's error
    assert "audio(aac)" in rows["audio_only.mp4"].reason
    assert rows["tiny.mp4"].reason == "resolution: 16x16 outside 32..4096 pixels per side"
    assert rows["slow.mp4"].reason == "fps: 2.00 fps outside 5..120"

    accepted = {name for name, r in rows.items() if r.status == "accepted"}
    assert accepted == {"good_a.mp4", "good_b.mp4", "silent_search.mp4", "rotated.mp4"}
    assert "old.mp4" not in rows  # out of window: not in the manifest

    a, dup = rows["good_a.mp4"], rows["copy_of_a.mp4"]
    assert dup.status == "duplicate" and dup.duplicate_of == a.video_id and dup.sha256 == a.sha256
    assert a.sha256 == hashlib.sha256((bucket / "videos" / "good_a.mp4").read_bytes()).hexdigest()
    assert a.video_id == a.sha256[:16] and a.uri == str(bucket / "videos" / "good_a.mp4")
    assert a.labels == ("surgical procedure", "laparoscopic surgery", "medical operation")  # merged
    assert (a.category, a.authenticity, a.uploaded_at) == ("medical", "real", "2026-11-02T00:00:00+00:00")
    assert (a.width, a.height, a.fps, a.video_codec, a.has_audio, a.audio_sample_rate) == (
        64, 64, 10.0, "h264", True, 16000,
    )  # fmt: skip
    assert 0.9 <= a.duration_s <= 1.2

    search = rows["silent_search.mp4"]
    assert (search.has_audio, search.audio_sample_rate, search.category) == (False, 0, "b-roll")
    rot = rows["rotated.mp4"]
    assert (rot.rotation, rot.width, rot.height) == (90, 48, 64)  # display size: coded 64x48 turned
    assert rot.uploaded_at == "2026-11-05T10:00:00+00:00"
    b = rows["good_b.mp4"]
    assert b.labels == () and b.uploaded_at == "2026-11-30T23:59:59+00:00"

    for r in rows.values():
        if r.sha256:
            assert r.split == split_for(r.sha256, config.ingest)
    assert rows["empty.mp4"].video_id == ""

    assert report == IngestReport(
        as_of="2026-12-01",
        window_start="2026-11-01",
        seen=15,
        accepted=4,
        duplicates=1,
        rejected={
            "empty_file": 1,
            "fps": 1,
            "no_audio_for_lipsync": 1,
            "no_video_stream": 1,
            "not_media": 2,
            "resolution": 1,
            "too_short": 1,
            "undecodable": 1,
        },
        unlabeled=1,
        out_of_window=1,
        label_problems=report.label_problems,
    )
    problems = "\n".join(report.label_problems)
    assert len(report.label_problems) == 5, problems
    assert "labels/batch1.jsonl:7: invalid JSON" in problems
    assert "labels/batch1.jsonl:8: unsafe video_path" in problems and "'..'" in problems
    assert "labels/batch1.jsonl:9: labels must be a list of strings" in problems
    assert "labels/batch1.jsonl:11: video_path 'videos/gone.mp4' not found" in problems
    assert "labels/more.jsonl:1: second record for 'videos/good_a.mp4'" in problems

    metrics = report.as_metrics()
    assert metrics["ingest_accepted"] == 4.0 and metrics["ingest_rejected_not_media"] == 2.0
    assert metrics["ingest_rejected"] == 9.0 and metrics["ingest_label_problems"] == 5.0
    assert all(f"ingest_rejected_{code}" in metrics for code in REJECT_CODES)
    assert metrics["ingest_rejected_too_large"] == 0.0

    # The client's folder is untouched, byte for byte (and nothing was cached for a local store).
    assert _snapshot(bucket) == before
    assert not (tmp_path / "state" / "cache").exists()

    # A second run (next month's view of the same files) gives the same rows and splits.
    again = tmp_path / "out" / "again.jsonl"
    _ingest(config, AS_OF, again)
    assert again.read_text() == manifest.read_text()


def test_split_is_deterministic_and_follows_fractions():
    config = IngestConfig(val_fraction=0.15, test_fraction=0.25)
    assert split_for("00000000" + "f" * 56, config) == "test"
    assert split_for("3fffffff" + "0" * 56, config) == "test"  # u just below 0.25
    assert split_for("40000000" + "0" * 56, config) == "val"  # u == 0.25
    assert split_for("66666666" + "0" * 56, config) == "val"  # u just below 0.40
    assert split_for("66666667" + "0" * 56, config) == "train"
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_for(h, config) for h in hashes]
    assert splits == [split_for(h, config) for h in hashes]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.25) < 0.03 and abs(share["val"] - 0.15) < 0.03


def test_probe_video_bounds(tmp_path):
    clip = make_video(tmp_path / "c.mp4", seed=1)
    meta = probe_video(clip, IngestConfig(), needs_audio=True)
    assert meta["has_audio"] and (meta["width"], meta["height"]) == (64, 64)
    cases = {
        "too_large": IngestConfig(max_size_mb=0.001),
        "too_long": IngestConfig(min_duration_s=0.1, max_duration_s=0.5),
        "too_short": IngestConfig(min_duration_s=2.0),
        "resolution": IngestConfig(max_side=48),
        "fps": IngestConfig(min_fps=20.0),
    }
    for code, config in cases.items():
        with pytest.raises(VideoRejected) as info:
            probe_video(clip, config, needs_audio=False)
        assert info.value.code == code and str(info.value).startswith(f"{code}: ")


def test_too_large_is_rejected_without_download(bucket, tmp_path):
    config = _config(tmp_path, str(bucket), max_size_mb=0.001)
    report = _ingest(config, AS_OF, tmp_path / "m.jsonl")
    assert report.accepted == 0 and report.rejected["too_large"] == 12
    assert report.rejected["empty_file"] == 1 and report.rejected["not_media"] == 1  # notes.mp4: 20 bytes


def test_run_ingest_against_s3(s3_env, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    make_video(src / "a.mp4", seed=1)
    make_video(src / "audio.mp4", video=False, seed=2)
    (src / "text.mp4").write_text("not a video")
    bucket = make_bucket(s3_env)
    store = open_store(f"s3://{bucket}/client")
    for name in ("a.mp4", "audio.mp4", "text.mp4"):
        store.put_file(f"videos/{name}", src / name, content_type="video/mp4")
    store.put_file("videos/a_again.mp4", src / "a.mp4")
    labels = json.dumps({"video_path": "videos/a.mp4", "labels": ["demo"], "authenticity": "fake"})
    bare = json.dumps({"video_path": "audio.mp4", "labels": ["sound"]})  # the guide's bare file name
    store.put_bytes("labels/l.jsonl", (labels + "\nnot json\n" + bare + "\n").encode())
    before = {i.key: (i.etag, i.size, i.last_modified) for i in store.list()}

    config = _config(tmp_path, f"s3://{bucket}/client")
    manifest = tmp_path / "m.jsonl"
    today = datetime.now(UTC).date()
    report = _ingest(config, date.fromordinal(today.toordinal() + 1), manifest)
    rows = {r.key: r for r in read_manifest(manifest)}
    assert rows["videos/a.mp4"].status == "accepted"
    assert rows["videos/a.mp4"].uri == f"s3://{bucket}/client/videos/a.mp4"
    assert rows["videos/a.mp4"].labels == ("demo",) and rows["videos/a.mp4"].authenticity == "fake"
    assert rows["videos/a_again.mp4"].status == "duplicate"
    assert rows["videos/audio.mp4"].reason.startswith("no_video_stream: ")
    assert rows["videos/audio.mp4"].labels == ("sound",)
    assert rows["videos/text.mp4"].reason.startswith("not_media: ")
    assert (report.seen, report.accepted, report.duplicates, report.unlabeled) == (4, 1, 1, 0)
    assert report.label_problems == ["labels/l.jsonl:2: invalid JSON (Expecting value at column 1); record skipped"]
    cached = tmp_path / "state" / "cache" / "videos" / "videos" / "a.mp4"
    assert cached.read_bytes() == (src / "a.mp4").read_bytes()
    # frame_extraction reads ingest's download: the video is fetched once per run (a new download would replace
    # the file, a new inode).
    from components.frame_extraction.core import _local_video

    inode = cached.stat().st_ino
    assert _local_video(rows["videos/a.mp4"], config.storage.source_uri, cached.parents[1]) == cached
    assert cached.stat().st_ino == inode
    assert {i.key: (i.etag, i.size, i.last_modified) for i in store.list()} == before


def test_missing_source_and_bad_label_file(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        _ingest(_config(tmp_path, str(tmp_path / "nope")), AS_OF, tmp_path / "m.jsonl")
    assert not (tmp_path / "nope").exists()
    root = tmp_path / "b"
    make_video(root / "videos" / "v.mp4")
    _set_mtime(root / "videos" / "v.mp4", "2026-11-15")
    (root / "labels").mkdir()
    (root / "labels" / "latin1.jsonl").write_bytes(b'{"video_path": "videos/v.mp4", "labels": ["caf\xe9"]}\n')
    (root / "labels" / "readme.txt").write_text("hi")
    report = _ingest(_config(tmp_path, str(root)), AS_OF, tmp_path / "m.jsonl")
    assert report.accepted == 1 and report.unlabeled == 1
    assert report.label_problems == [
        "labels/latin1.jsonl: not UTF-8 text (invalid continuation byte at byte offset 46), file ignored",
        "labels/readme.txt: not a JSON Lines file (.jsonl/.ndjson), ignored",
    ]


def test_every_upload_gets_a_row_even_with_a_bad_name_or_a_link_out(tmp_path):
    """A name the store refuses and a symlink into another client's folder are rejected rows, never silent."""
    other = tmp_path / "other-client" / "videos"
    make_video(other / "theirs.mp4", seed=21)
    root = tmp_path / "mine"
    v = root / "videos"
    make_video(v / "ok.mp4", seed=22)
    make_video(v / "back\\slash.mp4", seed=23)
    make_video(v / "ctl\x07bell.mp4", seed=24)
    (v / "stolen.mp4").symlink_to(other / "theirs.mp4")
    (v / "nowhere.mp4").symlink_to(v / "gone.mp4")
    (root / "labels").mkdir()
    (root / "labels" / "odd\\name.jsonl").write_text(json.dumps({"video_path": "videos/ok.mp4", "labels": ["x"]}))
    for p in (*v.iterdir(), other / "theirs.mp4"):
        stamp = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
        os.utime(p, (stamp, stamp), follow_symlinks=False)
    before, theirs = _snapshot(root), _snapshot(tmp_path / "other-client")

    manifest = tmp_path / "m.jsonl"
    report = _ingest(_config(tmp_path, str(root)), AS_OF, manifest)
    rows = {r.key: r for r in read_manifest(manifest)}
    assert set(rows) == {
        f"videos/{n}" for n in ("ok.mp4", "back\\slash.mp4", "ctl\x07bell.mp4", "stolen.mp4", "nowhere.mp4")
    }
    assert rows["videos/ok.mp4"].status == "accepted"
    assert (
        rows["videos/back\\slash.mp4"].reason.startswith("bad_name: object key")
        and "backslash" in rows["videos/back\\slash.mp4"].reason
    )
    assert "control character" in rows["videos/ctl\x07bell.mp4"].reason
    assert rows["videos/stolen.mp4"].reason == "bad_link: a symbolic link that leads outside the store"
    assert rows["videos/nowhere.mp4"].reason == "bad_link: a symbolic link to nothing"
    bad = [r for r in rows.values() if r.status == "rejected"]
    assert all(r.uri == "" and r.sha256 == "" for r in bad)  # nothing was read through them
    theirs_sha = hashlib.sha256((other / "theirs.mp4").read_bytes()).hexdigest()
    assert all(r.sha256 != theirs_sha for r in rows.values())
    assert (report.seen, report.accepted, report.rejected) == (5, 1, {"bad_link": 2, "bad_name": 2})
    metrics = report.as_metrics()
    assert metrics["ingest_rejected_bad_name"] == 2.0 and metrics["ingest_rejected_bad_link"] == 2.0
    assert report.label_problems[0].startswith("'labels/odd\\\\name.jsonl': bad_name: ")
    assert _snapshot(root) == before and _snapshot(tmp_path / "other-client") == theirs


def test_bad_names_on_s3_get_rows(s3_env, tmp_path):  # noqa: F811
    import io

    from minio import Minio

    src = make_video(tmp_path / "a.mp4", seed=31)
    bucket = make_bucket(s3_env)
    store = open_store(f"s3://{bucket}")
    store.put_file("videos/a.mp4", src)
    raw = Minio(s3_env.split("://")[1], access_key=ACCESS, secret_key=SECRET, secure=False)
    for name in ("videos/win\\path.mp4", "videos/tab\there.mp4", "videos/x//y.mp4"):
        raw.put_object(bucket, name, io.BytesIO(src.read_bytes()), src.stat().st_size)

    manifest = tmp_path / "m.jsonl"
    today = datetime.now(UTC).date()
    report = _ingest(_config(tmp_path, f"s3://{bucket}"), date.fromordinal(today.toordinal() + 1), manifest)
    rows = {r.key: r for r in read_manifest(manifest)}
    assert rows["videos/a.mp4"].status == "accepted"
    assert {k for k, r in rows.items() if r.reason.startswith("bad_name: ")} == {
        "videos/win\\path.mp4",
        "videos/tab\there.mp4",
        "videos/x//y.mp4",
    }
    assert report.rejected == {"bad_name": 3} and report.seen == 4


def test_fake_type_travels_from_the_label_records_into_the_manifest(tmp_path):
    root = tmp_path / "bucket"
    for i, name in enumerate(("offset.mp4", "real.mp4", "untyped.mp4", "bad_type.mp4", "typed_real.mp4")):
        make_video(root / "videos" / name, seed=20 + i)
        _set_mtime(root / "videos" / name, "2026-11-10")
    records = [
        {"video_path": "offset.mp4", "authenticity": "fake", "fake_type": "offset"},
        {"video_path": "real.mp4", "authenticity": "real"},
        {"video_path": "untyped.mp4", "authenticity": "fake"},
        {"video_path": "bad_type.mp4", "authenticity": "fake", "fake_type": "../wav2lip"},
        {"video_path": "typed_real.mp4", "authenticity": "real", "fake_type": "offset"},
        {"video_path": "untyped.mp4", "authenticity": "fake", "fake_type": "wav2lip"},  # merged into the first
    ]
    (root / "labels").mkdir()
    (root / "labels" / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = tmp_path / "manifest.jsonl"
    report = _ingest(_config(tmp_path, str(root)), AS_OF, manifest)
    rows = {r.key.removeprefix("videos/"): r for r in read_manifest(manifest)}
    assert {name: (r.authenticity, r.fake_type) for name, r in rows.items()} == {
        "offset.mp4": ("fake", "offset"),
        "real.mp4": ("real", ""),
        "untyped.mp4": ("fake", "wav2lip"),
        "bad_type.mp4": ("", ""),  # its record was refused: unlabelled
        "typed_real.mp4": ("", ""),
    }
    problems = "\n".join(report.label_problems)
    assert "labels/r.jsonl:4: fake_type must be a short name" in problems and "'../wav2lip'" in problems
    assert "labels/r.jsonl:5: fake_type 'offset' is only for a fake video, authenticity is 'real'" in problems
    assert "labels/r.jsonl:6: second record for 'videos/untyped.mp4'" in problems and len(report.label_problems) == 3

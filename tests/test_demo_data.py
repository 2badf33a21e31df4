"""The demo client library: layout, decodability, broken uploads, timestamps, truth geometry, lip sync, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import numpy as np
import pytest

from components.common.config import ConfigError
from components.demo_data.core import DemoConfig, DemoSummary, _plan, generate_demo_data
from components.demo_data.scenes import CATEGORIES

AS_OF = "2026-11-01"
SMALL = {"clips_per_category": 1, "talking_real": 3, "talking_fake": 4, "two_face": 1, "no_face": 1}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[DemoSummary, list[dict], list[dict]]:
    root = tmp_path_factory.mktemp("demo")
    summary = generate_demo_data(root / "bucket", root / "truth", DemoConfig(seed=5, as_of=AS_OF, workers=1, **SMALL))
    return summary, _read_jsonl(summary.records_path), _read_jsonl(summary.truth_path)


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {r["video_path"]: r for r in rows}


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, dict]:
    """RGB frames, 16 kHz mono int16 audio (or None) and stream facts of an mp4."""
    facts: dict = {}
    with av.open(str(path)) as container:
        facts["video_codecs"] = [s.codec_context.name for s in container.streams.video]
        facts["audio_codecs"] = [s.codec_context.name for s in container.streams.audio]
        frames = []
        if container.streams.video:
            facts["fps"] = float(container.streams.video[0].average_rate)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    audio = None
    if facts["audio_codecs"]:
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
            chunks = [o.to_ndarray()[0] for f in container.decode(audio=0) for o in resampler.resample(f)]
            chunks += [o.to_ndarray()[0] for o in resampler.resample(None)]
            audio = np.concatenate(chunks)
    return frames, audio, facts


def test_config_is_validated():
    with pytest.raises(ConfigError, match="as_of"):
        DemoConfig(as_of="01/11/2026")
    with pytest.raises(ConfigError, match="talking_real"):
        DemoConfig(talking_real=-1)
    with pytest.raises(ConfigError, match="size"):
        DemoConfig(size=255)
    with pytest.raises(ConfigError, match="fake_shift_s"):
        DemoConfig(fake_shift_s=(0.8, 0.3))
    with pytest.raises(ConfigError, match="window_days"):
        DemoConfig(window_days=90, span_days=60)


def test_default_plan_counts_and_window():
    jobs = _plan(DemoConfig(as_of=AS_OF))
    kinds = [j.kind for j in jobs]
    assert kinds.count("search") == 7 * 10
    assert kinds.count("talking_head") == 40
    assert kinds.count("two_face") == 6 and kinds.count("no_face") == 4 and kinds.count("broken") == 6
    assert len({j.name for j in jobs}) == len(jobs)
    end = datetime(2026, 11, 1, tzinfo=UTC)
    ages = np.array([(end - datetime.fromisoformat(j.timestamp)).total_seconds() / 86400 for j in jobs])
    assert ages.min() > 0 and ages.max() > 60
    assert 0.7 <= np.mean(ages < 30) <= 0.82
    # Empty as_of means today (UTC): everything lies in the 90 days before it.
    today = datetime.now(UTC)
    stamps = [datetime.fromisoformat(j.timestamp) for j in _plan(DemoConfig(clips_per_category=1))]
    assert all(today - timedelta(days=91) < s < today for s in stamps)


def test_bucket_layout_and_records(library):
    summary, records, truth = library
    bucket = summary.bucket_dir
    assert summary.truth_path.parent != bucket and bucket not in summary.truth_path.parents
    files = sorted(p.relative_to(bucket).as_posix() for p in (bucket / "videos").iterdir())
    assert sorted(r["video_path"] for r in records) == files == [t["video_path"] for t in truth]
    assert [p.relative_to(bucket).as_posix() for p in (bucket / "labels").iterdir()] == ["labels/records.jsonl"]
    assert summary.videos == len(records) == 7 + 3 + 4 + 1 + 1 + 6 and summary.broken == 6
    search_categories = {r["category"] for r, t in zip(records, truth, strict=True) if t["kind"] == "search"}
    assert len(search_categories) >= 7 and len(summary.categories) >= 7
    queries = {c.name: c.query for c in CATEGORIES}
    for record, row in zip(records, truth, strict=True):
        assert 3 <= len(record["labels"]) <= 4 and len(set(record["labels"])) == len(record["labels"])
        if row["kind"] == "search":
            assert record["labels"][0] == queries[record["category"]]
        talking = row["kind"] in ("talking_head", "two_face", "no_face") or row["broken_kind"] == "no_audio"
        assert ("authenticity" in record) == talking
    authenticity = [r.get("authenticity") for r, t in zip(records, truth, strict=True) if t["kind"] == "talking_head"]
    assert authenticity.count("real") == 3 and authenticity.count("fake") == 4


def test_valid_files_decode_as_h264_and_aac(library):
    summary, _, truth = library
    checked = 0
    for row in truth:
        if row["kind"] == "broken" and row["broken_kind"] not in ("no_audio", "duplicate"):
            continue
        frames, audio, facts = _decode(summary.bucket_dir / row["video_path"])
        assert facts["video_codecs"] == ["h264"]
        assert len(frames) == row["n_frames"] > 0
        assert frames[0].shape == (row["height"], row["width"], 3)
        assert facts["fps"] == pytest.approx(row["fps"])
        assert 10 <= row["fps"] <= 25 and 2.0 <= row["n_frames"] / row["fps"] <= 4.0
        if row["has_audio"]:
            assert facts["audio_codecs"] == ["aac"]
            assert abs(len(audio) / 16000 - row["n_frames"] / row["fps"]) < 0.1
        else:
            assert facts["audio_codecs"] == []
        checked += 1
    assert checked == len(truth) - 4
    sizes = {(r["width"], r["height"]) for r in truth if r["kind"] == "search"}
    assert len(sizes) >= 2


def test_broken_uploads_are_what_they_claim(library):
    summary, records, truth = library
    bucket = summary.bucket_dir
    broken = {r["broken_kind"]: r for r in truth if r["kind"] == "broken"}
    assert set(broken) == {"empty", "truncated", "not_media", "audio_only", "no_audio", "duplicate"}
    assert (bucket / broken["empty"]["video_path"]).stat().st_size == 0
    text = bucket / broken["not_media"]["video_path"]
    assert text.read_text().startswith("Meeting notes")
    with pytest.raises(av.FFmpegError):
        av.open(str(text))
    truncated = broken["truncated"]
    data = (bucket / truncated["video_path"]).read_bytes()
    assert len(data) == truncated["transform"]["kept_bytes"] == int(0.4 * truncated["transform"]["full_bytes"])
    assert data[4:8] == b"ftyp"
    with pytest.raises(av.FFmpegError), av.open(str(bucket / truncated["video_path"])) as container:
        for _ in container.decode(video=0):
            pass
    _, audio, facts = _decode(bucket / broken["audio_only"]["video_path"])
    assert facts["video_codecs"] == [] and facts["audio_codecs"] == ["aac"] and len(audio) > 16000
    frames, _, facts = _decode(bucket / broken["no_audio"]["video_path"])
    assert facts["audio_codecs"] == [] and len(frames) == 75 and broken["no_audio"]["faces"]
    assert _by_path(records)[broken["no_audio"]["video_path"]]["authenticity"] == "real"
    dup = broken["duplicate"]
    original = dup["transform"]["duplicate_of"]
    assert original != dup["video_path"] and _by_path(truth)[original]["kind"] == "search"
    assert (bucket / dup["video_path"]).read_bytes() == (bucket / original).read_bytes()


def test_timestamps_span_months_and_window_holds_most(library):
    summary, records, truth = library
    end = datetime.fromisoformat(AS_OF).replace(tzinfo=UTC)
    stamps = {r["video_path"]: datetime.fromisoformat(r["timestamp"]) for r in records}
    ages = {k: (end - v).total_seconds() / 86400 for k, v in stamps.items()}
    assert min(ages.values()) > 0 and max(ages.values()) - min(ages.values()) > 31
    in_window = [a < 30 for a in ages.values()]
    assert 0.5 < np.mean(in_window) < 1.0
    assert summary.in_window == sum(in_window)
    for row in truth:
        if row["kind"] == "broken":
            assert ages[row["video_path"]] < 30, row
        assert row["in_window"] == (ages[row["video_path"]] < 30)
        mtime = os.stat(summary.bucket_dir / row["video_path"]).st_mtime
        assert mtime == pytest.approx(stamps[row["video_path"]].timestamp())


def test_truth_geometry(library):
    _, _, truth = library
    faced = [r for r in truth if r["faces"]]
    assert len(faced) == 3 + 4 + 1 + 1
    for row in faced:
        w, h = row["width"], row["height"]
        for face in row["faces"]:
            assert len(face["boxes"]) == len(face["mouth_centers"]) == row["n_frames"]
            for box, mouth in zip(face["boxes"], face["mouth_centers"], strict=True):
                if box is None:
                    assert mouth is None
                    continue
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                assert 0.15 * w < x1 - x0 < 0.6 * w
                assert x0 < mouth[0] < x1 and y0 < mouth[1] < y1
    two = next(r for r in truth if r["kind"] == "two_face")
    assert [f["speaking"] for f in two["faces"]].count(True) == 1
    occluded = [r for r in truth if r["transform"].get("occluded_frames")]
    assert len(occluded) == 1
    hidden = [i for i, b in enumerate(occluded[0]["faces"][0]["boxes"]) if b is None]
    assert len(hidden) == 5 and hidden == list(range(hidden[0], hidden[0] + 5))
    fakes = [r for r in truth if r["kind"] == "talking_head" and r["authenticity"] == "fake"]
    assert {r["fake_kind"] for r in fakes} == {"shifted", "other_audio"}
    for row in fakes:
        if row["fake_kind"] == "shifted":
            assert 0.3 <= abs(row["av_offset_s"]) <= 0.8
        else:
            assert row["transform"]["other_audio_of"] in _by_path(truth)
    assert all(r["av_offset_s"] == 0 for r in truth if r["authenticity"] == "real")


def _mouth_audio_correlation(path: Path, row: dict) -> float:
    """Pearson correlation of mouth darkness (decoded frames, at the truth mouth) with per-frame audio RMS."""
    frames, audio, _ = _decode(path)
    face = next(f for f in row["faces"] if f["speaking"])
    fps, n = row["fps"], row["n_frames"]
    darkness, rms = [], []
    for k in range(n):
        box, mouth = face["boxes"][k], face["mouth_centers"][k]
        if box is None:
            continue
        r = max(2, round(0.1 * (box[2] - box[0])))
        x, y = round(mouth[0]), round(mouth[1])
        patch = frames[k][y - r : y + r + 1, x - r : x + r + 1].astype(np.float32)
        darkness.append(-patch.mean())
        seg = audio[round(k / fps * 16000) : round((k + 1) / fps * 16000)].astype(np.float64)
        rms.append(np.sqrt(np.mean(seg**2)) if len(seg) else 0.0)
    return float(np.corrcoef(darkness, rms)[0, 1])


def test_mouth_opening_follows_audio_only_for_real_clips(library):
    summary, _, truth = library
    corr: dict[str, list[float]] = {"real": [], "shifted": [], "other_audio": [], "two_face": []}
    for row in truth:
        if row["kind"] == "talking_head":
            key = "real" if row["authenticity"] == "real" else row["fake_kind"]
        elif row["kind"] == "two_face":
            key = "two_face"
        else:
            continue
        corr[key].append(_mouth_audio_correlation(summary.bucket_dir / row["video_path"], row))
    assert len(corr["real"]) == 3 and len(corr["shifted"]) == 2 and len(corr["other_audio"]) == 2
    assert min(corr["real"] + corr["two_face"]) > 0.6, corr
    assert max(corr["shifted"]) < 0.5 and max(corr["other_audio"]) < 0.5, corr
    assert np.mean(corr["real"]) - np.mean(corr["shifted"] + corr["other_audio"]) > 0.5, corr


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_and_date_give_identical_bytes(library, tmp_path):
    summary = library[0]
    # The same (seed, as_of) again, rendered by two worker processes this time: the very same bytes.
    config = DemoConfig(seed=5, as_of=AS_OF, workers=2, **SMALL)
    again = generate_demo_data(tmp_path / "bucket", tmp_path / "truth", config)
    first = {**_hashes(summary.bucket_dir), **_hashes(summary.truth_path.parent)}
    second = {**_hashes(again.bucket_dir), **_hashes(again.truth_path.parent)}
    assert len(first) == summary.videos + 2
    assert first == second
    # Another seed or date plans other clips and other upload times.
    plan = [(j.name, j.kind, j.timestamp) for j in _plan(config)]
    assert plan != [(j.name, j.kind, j.timestamp) for j in _plan(dataclasses.replace(config, seed=6))]
    assert plan != [(j.name, j.kind, j.timestamp) for j in _plan(dataclasses.replace(config, as_of="2026-11-02"))]


def test_regenerating_replaces_the_library(tmp_path):
    bucket, truth = tmp_path / "bucket", tmp_path / "truth"
    none = {"talking_real": 0, "talking_fake": 0, "two_face": 0, "no_face": 0, "broken": False, "workers": 1}
    first = generate_demo_data(bucket, truth, DemoConfig(as_of=AS_OF, clips_per_category=1, **none))
    (bucket / "videos" / "client_own.mp4").write_bytes(b"kept")
    second = generate_demo_data(bucket, truth, DemoConfig(as_of=AS_OF, clips_per_category=0, **{**none, "no_face": 1}))
    assert first.videos == 7 and second.videos == 1
    assert sorted(p.name for p in (bucket / "videos").iterdir()) == ["client_own.mp4", "clip_001.mp4"]
    assert len(_read_jsonl(second.records_path)) == 1
    with pytest.raises(ValueError, match="inside the bucket"):
        generate_demo_data(bucket, bucket / "truth", DemoConfig(as_of=AS_OF))


def test_demo_plan_is_unchanged():
    """The demo profile's plan (names, labels, upload times) is pinned: `make run` and its tests rely on it."""
    jobs = _plan(DemoConfig(as_of=AS_OF))
    rows = [[j.name, j.kind, j.category, j.labels, j.authenticity, j.timestamp] for j in jobs]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    assert digest == "4364ce40e100ca1f9ad01829a3fda960df1c3e33febe3007cc05de0deb44848a"


# ------------------------------------------------------------------------------------------- benchmark


def test_benchmark_plan_counts_labels_and_queries():
    from components.demo_data.benchmark import BENCH_CATEGORIES, GROUPS, _plan_benchmark, held_out_queries
    from components.demo_data.config import FAKE_TYPES, BenchmarkConfig

    jobs = _plan_benchmark(BenchmarkConfig(as_of=AS_OF))
    search = [j for j in jobs if j.kind == "search"]
    talking = [j for j in jobs if j.kind != "search"]
    assert len(BENCH_CATEGORIES) == 21 and len(search) == 525 and len(talking) == 400
    assert sum(j.kind == "two_face" for j in talking) == 80
    assert sum(c.client for c in BENCH_CATEGORIES) == 7 and {c.group for c in BENCH_CATEGORIES} == set(GROUPS)
    fakes = [j.params["fake_type"] for j in talking if j.authenticity == "fake"]
    assert len(fakes) == 200 and sorted(Counter(fakes).values()) == [66, 67, 67] and set(fakes) == set(FAKE_TYPES)
    assert all(j.params["fake_type"] == "" for j in talking if j.authenticity == "real")
    # Version 2's occlusions and low-resolution clips, drawn independently of the label (REALISM: 12 %, 15 %).
    assert sum(j.params["occluded"] for j in talking) == 38 and sum(j.params["low_res"] for j in talking) == 55
    for flaw in ("occluded", "low_res"):
        shares = [sum(j.params[flaw] for j in talking if j.authenticity == a) for a in ("real", "fake")]
        assert abs(shares[0] - shares[1]) <= 12, (flaw, shares)
    assert all(j.labels == [] for j in talking)  # lip-sync data only
    queries = held_out_queries()
    assert len(queries) == 21 * 3 + 7 * 2
    held_out = {q["query"] for q in queries}
    by_name = {c.name: c for c in BENCH_CATEGORIES}
    for job in search:
        cat = by_name[job.category]
        assert job.labels[0] == cat.query and job.labels[-1] in GROUPS[cat.group][0] and 4 <= len(job.labels) <= 5
        assert not held_out & set(job.labels)  # test queries are never training labels
    assert {len(q["categories"]) for q in queries if q["kind"] == "multi_label"} == {3}
    end = datetime(2026, 11, 1, tzinfo=UTC)
    assert all(timedelta(0) < end - datetime.fromisoformat(j.timestamp) < timedelta(days=30) for j in jobs)


def test_benchmark_scene_variants_render_other_scenes():
    from components.demo_data.benchmark import BENCH_CATEGORIES

    frames = {}
    for c in BENCH_CATEGORIES:
        frames[c.name] = c.render(np.random.default_rng(3), 120, 160, 2, 10)
        assert frames[c.name].shape == (2, 120, 160, 3) and frames[c.name].dtype == np.uint8
    for c in BENCH_CATEGORIES:  # a near distractor: the same seed draws the same kind of scene with another subject
        if not c.client:
            client = next(o for o in BENCH_CATEGORIES if o.group == c.group and o.client)
            assert np.abs(frames[c.name].astype(int) - frames[client.name]).mean() > 2, c.name


def test_benchmark_tiny_library_is_reproducible_and_documented(tmp_path):
    from components.demo_data.benchmark import BENCHMARK_FILE, generate_benchmark
    from components.demo_data.config import BenchmarkConfig

    config = BenchmarkConfig(seed=2, as_of=AS_OF, clips_per_category=0, talking_heads=6, two_face_fraction=0.34)
    first = generate_benchmark(
        tmp_path / "a" / "bucket", tmp_path / "a" / "truth", dataclasses.replace(config, workers=1)
    )
    second = generate_benchmark(tmp_path / "b" / "bucket", tmp_path / "b" / "truth", config)
    assert _hashes(first.bucket_dir) == _hashes(second.bucket_dir)
    assert first.truth_path.read_bytes() == second.truth_path.read_bytes()
    truth = _read_jsonl(first.truth_path)
    records = _read_jsonl(first.records_path)
    assert [r["authenticity"] for r in records] == [t["authenticity"] for t in truth]
    assert sorted(t["kind"] for t in truth) == ["talking_head"] * 4 + ["two_face"] * 2
    fakes = {t["fake_type"]: t for t in truth if t["authenticity"] == "fake"}
    assert set(fakes) == {"offset", "partial", "other_speaker"}
    assert 1 <= abs(fakes["offset"]["offset_frames"]) <= 3
    assert fakes["offset"]["av_offset_s"] == pytest.approx(fakes["offset"]["offset_frames"] / 25)
    start, stop = fakes["partial"]["manipulated_frames"]
    assert 0 < start < stop < 75 and 25 <= stop - start <= 38
    assert fakes["other_speaker"]["manipulated_frames"] == [0, 75] and fakes["other_speaker"]["envelope_corr"] > 0
    assert {r["video_path"]: r.get("fake_type") for r in records if r["authenticity"] == "fake"} == {
        t["video_path"]: t["fake_type"] for t in truth if t["authenticity"] == "fake"
    }  # the label records carry the fake type, as a client's may
    assert all("fake_type" not in r for r in records if r["authenticity"] == "real")
    # Version 2: real mouths follow their voice imperfectly (lead, jitter, coarticulation, silent moves).
    from components.demo_data.benchmark import REALISM, _plan_benchmark
    from components.demo_data.core import _syllables
    from components.demo_data.speech import frame_envelope

    voice = {job.name: job.params["env"] for job in _plan_benchmark(config)}
    for row in truth:
        assert row["version"] == 2 and REALISM["lead_s"][0] <= row["lead_s"] <= REALISM["lead_s"][1]
        if row["authenticity"] == "real":
            own = frame_envelope(_syllables(config, voice[row["video_path"]]), 75, 25)
            corr = np.corrcoef(own, row["mouth_opening"])[0, 1]
            assert 0.2 < corr < 0.98, (row["video_path"], corr)  # related, never exact (v1: 1.0)
    for row in truth:
        assert row["crf"] in config.crf_levels and row["bitrate_kbps"] > 0
        assert [f["speaking"] for f in row["faces"]].count(True) == 1
        assert len(row["faces"]) == (2 if row["scene"] == "two_face" else 1)
    doc = json.loads((first.truth_path.parent / BENCHMARK_FILE).read_text())
    assert {k: v["count"] for k, v in doc["lipsync"]["fake_types"].items()} == {
        "offset": 1,
        "other_speaker": 1,
        "partial": 1,
    }
    assert all(v["description"] for v in doc["lipsync"]["fake_types"].values())
    assert doc["lipsync"]["scenes"]["two_face"]["count"] == 2 and len(doc["search"]["test_queries"]) == 77
    assert doc["version"] == 2 and doc["lipsync"]["realism"]["occluded_fraction"] == 0.12
    for flaw in ("occluded", "low_res"):
        n = sum(t[flaw] for t in truth)
        assert doc["lipsync"][flaw].get("true", {"count": 0})["count"] == n

"""frame_extraction: tiny H.264 + AAC videos written with PyAV here, extracted, checked frame by frame."""

from __future__ import annotations

import dataclasses
import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from offline import offline_context

av = pytest.importorskip("av")

from components.common.config import ConfigError  # noqa: E402
from components.common.manifest import VideoRecord, write_manifest  # noqa: E402
from components.frame_extraction import core  # noqa: E402
from components.frame_extraction.config import FrameExtractionConfig  # noqa: E402
from components.frame_extraction.dataset import (  # noqa: E402
    FrameRecord,
    ShardWriter,
    load_audio,
    load_dense_frames,
    load_search_frames,
    read_frame_index,
    write_frame_index,
)

RATE = 16000
BITS = 6  # frame index coded as horizontal black/white bands (survives scaling, cropping and x264)


def code_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame whose ``BITS`` horizontal bands spell ``index`` in binary (band 0 = lowest bit, at the top)."""
    image = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, height, BITS + 1).round().astype(int)
    for bit in range(BITS):
        if (index >> bit) & 1:
            image[edges[bit] : edges[bit + 1]] = 255
    return image


def read_code(image: np.ndarray) -> int:
    """Inverse of :func:`code_frame` on a (scaled, cropped) frame: sample the middle row of each band."""
    height = image.shape[0]
    rows = ((np.arange(BITS) + 0.5) * height / BITS).astype(int)
    return sum(1 << bit for bit, row in enumerate(rows) if image[row].mean() > 128)


def tone(seconds: float, loud: tuple[float, float] | None = None) -> np.ndarray:
    """A quiet 440 Hz tone, loud inside ``loud`` (seconds)."""
    t = np.arange(int(seconds * RATE)) / RATE
    amp = np.full_like(t, 0.02)
    if loud:
        amp[(t >= loud[0]) & (t < loud[1])] = 0.8
    return (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write_video(
    path: Path,
    n_frames: int,
    width: int = 64,
    height: int = 48,
    fps: int = 25,
    audio: np.ndarray | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    pts_ms: list[int] | None = None,
    gop: int | None = None,
    faststart: bool = False,
    frame_fn=code_frame,
    preset: str = "ultrafast",
) -> Path:
    """Write an H.264 (+ AAC mono) mp4; ``pts_ms`` gives irregular frame times (variable frame rate)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        codec_options = {"preset": preset}
        if gop:
            codec_options.update({"g": str(gop), "keyint_min": str(gop)})
        vstream = container.add_stream("libx264", rate=fps, options=codec_options)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
        vstream.thread_count = 1
        if pts_ms is not None:
            vstream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            vstream.set_display_rotation(rotation)
        astream = container.add_stream("aac", rate=RATE, layout="mono") if audio is not None else None
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_fn(i, width, height), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        if astream is not None:
            for i in range(0, len(audio), 1024):
                chunk = av.AudioFrame.from_ndarray(audio[None, i : i + 1024], format="flt", layout="mono")
                chunk.sample_rate = RATE
                container.mux(astream.encode(chunk))
            container.mux(astream.encode())
    return path


def record(video_id: str, key: str = "", authenticity: str = "", status: str = "accepted", **kw) -> VideoRecord:
    key = key or f"videos/{video_id}.mp4"
    return VideoRecord(
        video_id=video_id, key=key, uri="", sha256="0" * 64, size_bytes=1, uploaded_at="2026-11-01T00:00:00",
        status=status, authenticity=authenticity, labels=("a label",), category="cat", **kw,
    )  # fmt: skip


FX = FrameExtractionConfig(search_size=32, dense_max_side=40, workers=1, dense_seconds=1.0)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "bad",
    [
        {"search_fps": 0},
        {"search_size": 8},
        {"resize_mode": "stretch"},
        {"max_search_frames": 0},
        {"dense_seconds": 0.0},
        {"dense_max_side": 4},
        {"dense_all": 1},
        {"min_frames": 0},
        {"audio_rate": 100},
        {"workers": 0},
        {"shard_max_videos": 0},
        {"search_size": 22.5},
    ],
)
def test_config_rejects(bad):
    with pytest.raises(ConfigError, match="frame_extraction"):
        FrameExtractionConfig(**bad)


def test_config_defaults():
    fx = FrameExtractionConfig()
    assert (fx.search_fps, fx.search_size, fx.resize_mode, fx.max_search_frames) == (1.0, 224, "center_crop", 32)
    assert (fx.dense_seconds, fx.dense_max_side, fx.dense_all, fx.min_frames) == (3.0, 320, False, 2)
    assert (fx.audio_rate, fx.workers, fx.shard_max_videos) == (16000, 2, 64)


# ------------------------------------------------------------------------------------------------ one video


def test_normal_video_frames_times_audio_and_dense_window(tmp_path):
    audio = tone(6.0, loud=(3.5, 4.5))
    path = write_video(tmp_path / "a.mp4", 150, 64, 48, fps=25, audio=audio)
    video = core.extract_video(path, record("a", authenticity="real"), FX)
    assert video.status == "ok" and not video.partial and video.reason == ""
    assert (video.width, video.height, video.rotation) == (64, 48, 0)
    assert video.native_fps == pytest.approx(25.0) and video.duration_s == pytest.approx(6.0, abs=0.05)
    # 1 frame/s: exactly the frames at 0, 1, ..., 5 s (frame index 25 k).
    assert video.search_frames.shape == (6, 32, 32, 3) and video.search_frames.dtype == np.uint8
    assert video.search_times == pytest.approx([0, 1, 2, 3, 4, 5], abs=1e-6)
    assert [read_code(f) for f in video.search_frames] == [(25 * k) % 64 for k in range(6)]
    # Audio: the whole track at 16 kHz mono, loud where it was written loud.
    assert video.has_audio and video.audio.dtype == np.float32
    assert abs(video.audio.size - 6 * RATE) < 0.1 * RATE  # AAC priming + end padding
    loud = np.abs(video.audio[int(3.6 * RATE) : int(4.4 * RATE)]).max()
    assert loud > 0.5 and np.abs(video.audio[int(1 * RATE) : int(2 * RATE)]).max() < 0.1
    # Dense clip: 1 s of consecutive frames at 25 fps starting at the loud part, longer side 40.
    assert video.dense_start_s == pytest.approx(3.5, abs=0.1)
    assert video.dense_frames.shape == (25, 30, 40, 3) and video.dense_fps == pytest.approx(25.0)
    first = round(video.dense_start_s * 25)
    assert [read_code(f) for f in video.dense_frames] == [(first + i) % 64 for i in range(25)]


def test_resize_modes_pad_vs_crop(tmp_path):
    # A wide frame: a white left quarter, black elsewhere.
    def quarter(i, w, h):
        image = np.zeros((h, w, 3), np.uint8)
        image[:, : w // 4] = 255
        return image

    path = write_video(tmp_path / "wide.mp4", 5, 128, 32, frame_fn=quarter)
    crop = core.extract_video(path, record("w"), dataclasses.replace(FX, resize_mode="center_crop"))
    pad = core.extract_video(path, record("w"), dataclasses.replace(FX, resize_mode="pad"))
    c, p = crop.search_frames[0].astype(int), pad.search_frames[0].astype(int)
    assert c.shape == p.shape == (32, 32, 3)
    # Crop: the middle 32 of 128 (scaled) columns, all black; the white quarter is cut away.
    assert c.max() < 40
    # Pad: the whole frame scaled to 32x8 between black bars; the white quarter is on the left.
    assert p[:10].max() < 40 and p[-10:].max() < 40
    band = p[13:19]
    assert band[:, :6].mean() > 200 and band[:, 10:].mean() < 40


def test_variable_frame_rate_times_come_from_pts(tmp_path):
    pts = [0, 40, 80, 700, 740, 1500, 2100, 2140, 2900, 3000]
    path = write_video(tmp_path / "vfr.mp4", len(pts), pts_ms=pts)
    video = core.extract_video(path, record("v"), dataclasses.replace(FX, search_fps=2.0))
    # Wanted 0, .5, 1, ... 3.0: first frame at or after each (repeats dropped).
    expected = [0.0, 0.7, 1.5, 2.1, 2.9, 3.0]
    assert video.search_times == pytest.approx(expected, abs=1e-3)
    assert [read_code(f) for f in video.search_frames] == [0, 3, 5, 6, 8, 9]


def test_rotation_metadata_makes_frames_upright(tmp_path):
    # Coded 64x32 landscape, top half red, stored with a 90 degree display matrix: shown as portrait with
    # the red half on the left (what `ffmpeg` CLI's autorotate shows, checked by hand).
    def red_top(i, w, h):
        image = np.zeros((h, w, 3), np.uint8)
        image[: h // 2, :, 0] = 255
        return image

    path = write_video(tmp_path / "rot.mp4", 5, 64, 32, rotation=90, frame_fn=red_top)
    video = core.extract_video(path, record("r", authenticity="fake"), dataclasses.replace(FX, resize_mode="pad"))
    assert (video.width, video.height, video.rotation) == (32, 64, 90)
    dense = video.dense_frames
    assert dense.shape == (5, 40, 20, 3)  # portrait, longer side 40
    red = dense[0, :, :, 0].astype(int)
    assert red[:, :8].mean() > 200 and red[:, 12:].mean() < 40
    search = video.search_frames[0, :, :, 0].astype(int)  # padded left and right of the portrait image
    assert search[:, 8:14].mean() > 200 and search[:, 18:24].mean() < 40 and search[:, :6].max() < 40


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "n_frames"),
    [(99, 64, "yuv444p", 10), (34, 20, "yuv420p", 10), (3840, 2160, "yuv420p", 2)],
    ids=["odd-width", "tiny", "4k"],
)
def test_odd_sizes(tmp_path, width, height, pix_fmt, n_frames):
    path = write_video(tmp_path / "s.mp4", n_frames, width, height, pix_fmt=pix_fmt, fps=5)
    fx = dataclasses.replace(FX, search_fps=5.0, dense_all=True, dense_seconds=5.0)
    video = core.extract_video(path, record("s"), fx)
    assert video.status == "ok" and (video.width, video.height) == (width, height)
    assert video.search_frames.shape == (n_frames, 32, 32, 3)
    assert [read_code(f) for f in video.search_frames] == list(range(n_frames))
    dense_h = round(height * 40 / width)
    assert video.dense_frames.shape == (n_frames, dense_h, 40, 3)
    assert not video.has_audio


def test_missing_audio_dense_starts_at_zero(tmp_path):
    path = write_video(tmp_path / "mute.mp4", 75, fps=25)
    video = core.extract_video(path, record("m", authenticity="real"), FX)
    assert video.status == "ok" and not video.has_audio and video.audio is None
    assert video.dense_start_s == 0.0 and video.dense_frames.shape[0] == 25
    assert read_code(video.dense_frames[0]) == 0


def test_short_video_gives_whole_clip_as_dense(tmp_path):
    path = write_video(tmp_path / "short.mp4", 12, fps=25, audio=tone(0.48))
    video = core.extract_video(path, record("s", authenticity="fake"), dataclasses.replace(FX, dense_seconds=3.0))
    assert video.dense_frames.shape[0] == 12 and video.dense_start_s == 0.0
    assert video.search_frames.shape[0] == 1


def _noise(i, w, h):
    # Incompressible frames: the packets are large, so cutting the file cuts the video mid-stream.
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("min_frames", "status"), [(2, "ok"), (50, "rejected")])
def test_truncated_mid_stream_partial_or_rejected(tmp_path, min_frames, status):
    # faststart puts the index first, so the header survives the cut and decoding fails part-way.
    full = write_video(tmp_path / "full.mp4", 100, 64, 48, fps=10, faststart=True, frame_fn=_noise)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    fx = dataclasses.replace(FX, search_fps=2.0, min_frames=min_frames, max_search_frames=100)
    video = core.extract_video(cut, record("c"), fx)
    assert video.status == status
    if status == "ok":
        assert video.partial and video.reason.startswith("decode_error: ")
        assert 2 <= video.search_frames.shape[0] < 20  # 20 wanted (10 s at 2/s), only the first part decodes
        assert max(video.search_times) < 6.0
    else:
        assert video.reason.startswith("decode_error: ") and "min_frames 50" in video.reason
        assert video.search_frames.shape[0] == 0


def test_unreadable_and_missing_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    assert core.extract_video(junk, record("j"), FX).reason.startswith("open_error: ")
    assert core.extract_video(tmp_path / "nope.mp4", record("n"), FX).reason.startswith("missing_file: ")
    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(0.1)[None, :1024], format="flt", layout="mono")
        frame.sample_rate = RATE
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert core.extract_video(audio_only, record("o"), FX).reason.startswith("no_video_stream: ")


def test_sparse_sampling_decodes_far_fewer_frames_than_a_full_decode(tmp_path):
    fx = dataclasses.replace(FX, max_search_frames=1000)
    one_s_gop = write_video(tmp_path / "g25.mp4", 500, 32, 32, fps=25, gop=25)
    video = core.extract_video(one_s_gop, record("g"), fx)
    assert video.search_frames.shape[0] == 20
    assert [read_code(f) for f in video.search_frames] == [(25 * k) % 64 for k in range(20)]
    assert video.decoded_frames <= 30  # one frame per keyframe seek (+ decoder latency), not 500
    # Keyframes every 5 s: sampling every 1 s decodes sequentially, never more than a full decode.
    long_gop = write_video(tmp_path / "g125.mp4", 500, 32, 32, fps=25, gop=125)
    video = core.extract_video(long_gop, record("g"), fx)
    assert [read_code(f) for f in video.search_frames] == [(25 * k) % 64 for k in range(20)]
    assert video.decoded_frames <= 500
    # max_search_frames spreads the frames evenly over the video.
    video = core.extract_video(one_s_gop, record("g"), dataclasses.replace(FX, max_search_frames=5))
    assert video.search_times == pytest.approx([0, 5, 10, 14, 19], abs=1e-6)


def test_sparse_sampling_with_b_frames_skips_non_reference_frames(tmp_path):
    # x264 "veryfast" uses B-frames: far from a wanted time they are not decoded, near it they all are.
    def moving(i, w, h):
        image = code_frame(i, w, h)
        image[:, (i * 3) % (w - 8) :][:, :8, 1] = 200
        return image

    path = write_video(tmp_path / "b.mp4", 250, 64, 48, fps=25, gop=250, preset="veryfast", frame_fn=moving)
    with av.open(str(path)) as container:
        kinds = [str(f.pict_type) for f in container.decode(video=0)]
    assert kinds.count("B") > 50 or kinds.count("3") > 50  # the file really has B-frames
    video = core.extract_video(path, record("b"), dataclasses.replace(FX, max_search_frames=100))
    assert video.search_times == pytest.approx(list(range(10)), abs=1e-6)
    assert [read_code(f) for f in video.search_frames] == [(25 * k) % 64 for k in range(10)]
    assert video.decoded_frames < 250
    sparse = core.extract_video(path, record("b"), dataclasses.replace(FX, search_fps=0.25))
    assert [read_code(f) for f in sparse.search_frames] == [0, 100 % 64, 200 % 64]
    assert sparse.decoded_frames < 250 - 0.5 * (kinds.count("B") + kinds.count("3"))


@pytest.mark.parametrize(("gop", "preset"), [(25, "ultrafast"), (125, "veryfast")])
def test_frame_threads_give_the_same_frames_and_times_as_one_thread(tmp_path, gop, preset):
    # Frame threading delays the decoder's output by a frame per thread while the reader seeks and switches
    # non-reference skipping on and off: keyframes every 1 s (seeks) and every 5 s with B-frames (skipping).
    def moving(i, w, h):
        image = code_frame(i, w, h)
        image[:, (i * 3) % (w - 8) :][:, :8, 1] = 200
        return image

    path = write_video(
        tmp_path / "t.mp4", 300, 64, 48, gop=gop, preset=preset, frame_fn=moving, audio=tone(12.0, loud=(6.0, 7.0))
    )
    fx = dataclasses.replace(FX, max_search_frames=100)
    one = core.extract_video(path, record("t", authenticity="real"), fx, threads=1)
    assert 5.5 < one.dense_start_s < 6.5  # the dense clip sits mid-stream, after seeks
    assert [read_code(f) for f in one.search_frames] == [(25 * k) % 64 for k in range(12)]
    for threads in (2, 5):
        many = core.extract_video(path, record("t", authenticity="real"), fx, threads=threads)
        assert many.status == "ok" and not many.partial
        assert many.search_times == one.search_times
        assert np.array_equal(many.search_frames, one.search_frames)
        assert many.dense_start_s == one.dense_start_s and many.dense_fps == one.dense_fps
        assert np.array_equal(many.dense_frames, one.dense_frames)


def test_decoder_threads_default_to_a_worker_share_of_the_cpus(tmp_path, monkeypatch):
    from components.common import cpus
    from components.frame_extraction import decode

    seen = []
    real = decode.set_decoder_threads
    monkeypatch.setattr(decode, "set_decoder_threads", lambda *a: seen.append(real(*a)) or seen[-1])
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("400000 100000")
    monkeypatch.setattr(cpus, "CPU_MAX", cpu_max)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))  # a 4-CPU container, 64 cores
    path = write_video(tmp_path / "d.mp4", 25)
    core.extract_video(path, record("d"), dataclasses.replace(FX, workers=2))
    core.extract_video(path, record("d"), FX, threads=3)
    assert seen == [2, 3]


def test_loudest_window():
    from components.frame_extraction import decode

    audio = np.zeros(5 * RATE, np.float32)
    audio[int(2.2 * RATE) : int(3.2 * RATE)] = 1.0
    assert decode.loudest_window(audio, RATE, 1.0, 4.0) == pytest.approx(2.2, abs=0.011)
    assert decode.loudest_window(audio, RATE, 1.0, 1.5) == pytest.approx(1.5, abs=0.011)  # capped by the video
    assert decode.loudest_window(audio[:RATE], RATE, 2.0, 3.0) == 0.0


# ------------------------------------------------------------------------------------------------ dataset


def test_index_and_readers_round_trip(tmp_path):
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    with ShardWriter(tmp_path, "search", max_videos=2) as writer:
        shards = [writer.add(f"v{i}", frames + i) for i in range(3)]
    assert shards == ["search-00000.npz", "search-00000.npz", "search-00001.npz"]
    (tmp_path / "audio").mkdir()
    np.save(tmp_path / "audio" / "v0.npy", np.ones(10, np.float32))
    records = [
        FrameRecord("v0", labels=("x", "y"), search_shard=shards[0], n_search=2, search_times=(0.0, 1.0),
                    audio_file="audio/v0.npy", has_audio=True),
        FrameRecord("v2", search_shard=shards[2], n_search=2, search_times=(0.5, 1.5)),
        FrameRecord("bad", status="rejected", reason="decode_error: x"),
    ]  # fmt: skip
    assert write_frame_index(tmp_path, records) == 3
    back = read_frame_index(tmp_path)
    assert back == records
    np.testing.assert_array_equal(load_search_frames(tmp_path, back[1]), frames + 2)
    np.testing.assert_array_equal(load_audio(tmp_path, back[0]), np.ones(10, np.float32))
    assert load_audio(tmp_path, back[1]).shape == (0,) and load_dense_frames(tmp_path, back[2]).shape[0] == 0
    with pytest.raises(KeyError, match="v9"):
        load_search_frames(tmp_path, dataclasses.replace(back[0], video_id="v9"))
    with pytest.raises(FileNotFoundError):
        read_frame_index(tmp_path / "none")


# ------------------------------------------------------------------------------------------------ the stage


def test_run_frame_extraction_over_a_manifest(tmp_path):
    source = tmp_path / "bucket"
    (source / "videos").mkdir(parents=True)
    write_video(source / "videos" / "talk.mp4", 50, fps=25, audio=tone(2.0, loud=(1.0, 2.0)))
    write_video(source / "videos" / "plain.mp4", 75, 48, 64, fps=25)
    write_video(source / "videos" / "odd.mp4", 20, 99, 64, fps=10, pix_fmt="yuv444p")
    (source / "videos" / "broken.mp4").write_bytes(b"\x00" * 2000)
    rows = [
        record("talk", key="videos/talk.mp4", authenticity="real"),
        record("plain", key="videos/plain.mp4"),
        record("odd", key="videos/odd.mp4", authenticity="fake"),
        record("broken", key="videos/broken.mp4"),
        record("gone", key="videos/gone.mp4"),
        record("skipped", key="videos/skipped.mp4", status="rejected", reason="too_short: x"),
    ]
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, rows)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    out = tmp_path / "frames"
    fx = dataclasses.replace(FX, workers=2, shard_max_videos=2)
    ctx = offline_context(tmp_path / "state", storage={"source_uri": str(source)})
    report = core.run_frame_extraction(manifest, out, fx, ctx)

    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before  # source untouched
    assert (report.videos, report.ok, report.rejected, report.partial) == (5, 3, 2, 0)
    assert report.rejected_by_reason == {"open_error": 1, "missing_file": 1}
    assert report.search_frames == 2 + 3 + 2 and report.dense_frames == 25 + 10
    metrics = report.as_metrics()
    assert metrics["videos_ok"] == 3.0 and metrics["rejected_open_error"] == 1.0 and metrics["frames_written"] == 42.0
    assert all(isinstance(v, float) for v in metrics.values()) and metrics["frames_per_s"] > 0

    index = {r.video_id: r for r in read_frame_index(out)}
    assert sorted(index) == ["broken", "gone", "odd", "plain", "talk"]  # manifest order is by key
    assert [r.video_id for r in read_frame_index(out)] == ["broken", "gone", "odd", "plain", "talk"]
    talk, plain, odd = index["talk"], index["plain"], index["odd"]
    assert talk.status == "ok" and talk.labels == ("a label",) and talk.has_audio
    assert talk.search_times == (0.0, 1.0) and talk.n_dense == 25 and talk.dense_start_s == pytest.approx(1.0, abs=0.1)
    assert load_search_frames(out, talk).shape == (2, 32, 32, 3)
    assert load_dense_frames(out, talk).shape == (25, 30, 40, 3)
    assert abs(load_audio(out, talk).size - 2 * RATE) < 0.1 * RATE and talk.audio_file == "audio/talk.npy"
    assert (plain.width, plain.height, plain.n_search, plain.dense_shard, plain.audio_file) == (48, 64, 3, "", "")
    assert load_dense_frames(out, plain).shape[0] == 0 and load_audio(out, plain).size == 0
    assert load_dense_frames(out, odd).shape == (10, 26, 40, 3) and odd.dense_fps == pytest.approx(10.0)
    # shard_max_videos=2: talk and odd's dense arrays share one shard, three search arrays need two.
    assert sorted(p.name for p in out.glob("*.npz")) == ["dense-00000.npz", "search-00000.npz", "search-00001.npz"]
    broken = index["broken"]
    assert broken.status == "rejected" and broken.reason.startswith("open_error: ") and broken.search_shard == ""
    assert index["gone"].reason.startswith("missing_file: ")
    rows_on_disk = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert set(rows_on_disk[0]) == {f.name for f in dataclasses.fields(FrameRecord)}


# ------------------------------------------------------------------------------------------------ kfp wrapper


def test_component_compiles_and_imports_no_heavy_module(tmp_path):
    import subprocess
    import sys

    import yaml
    from kfp import compiler

    from components.common.images import MEDIA_IMAGE
    from components.frame_extraction.component import frame_extraction

    out = tmp_path / "c.yaml"
    compiler.Compiler().compile(frame_extraction, str(out))
    spec = yaml.safe_load(out.read_text())
    inputs = spec["root"]["inputDefinitions"]
    assert set(inputs["parameters"]) == {"config", "parent_run_id"} and set(inputs["artifacts"]) == {"manifest"}
    outputs = spec["root"]["outputDefinitions"]
    assert set(outputs["artifacts"]) == {"frames"}
    assert set(outputs["parameters"]) == {"videos_ok", "videos_rejected", "frames_written"}
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == MEDIA_IMAGE
    code = (
        "import sys, components.frame_extraction.component, components.frame_extraction.config\n"
        "print(sorted(m for m in ('numpy', 'av', 'torch', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def crashing_worker(record, source_uri, cache_dir, config):
    """Stands in for core._process in a spawned worker: the video ``crash`` kills its process."""
    import os

    if record.video_id == "crash":
        Path(cache_dir, "crashed").touch()
        os._exit(3)
    return core.ExtractedVideo(video_id=record.video_id, search_times=[0.0])


def test_a_crashing_worker_rejects_only_its_video(tmp_path):
    records = [record(v) for v in ("a", "b", "crash", "c", "d")]
    fx = dataclasses.replace(FX, workers=2)
    results = []
    for item in core._results(records, str(tmp_path), tmp_path, fx, worker=crashing_worker):
        results.append(item)
        if len(results) == 1:
            # Let the worker die before the next video is submitted: the pool is already broken then (a race
            # a loaded CI machine hit; submit itself raised).
            for _ in range(600):
                if (tmp_path / "crashed").exists():
                    break
                time.sleep(0.1)
            time.sleep(0.5)
    by_id = {r.video_id: v for r, v in results}
    assert sorted(by_id) == ["a", "b", "c", "crash", "d"] and len(results) == 5
    assert by_id["crash"].status == "rejected" and by_id["crash"].reason.startswith("worker_error: ")
    assert all(by_id[v].status == "ok" for v in "abcd")


def test_a_rerun_reuses_kept_results_and_writes_the_same_dataset(tmp_path):
    source = tmp_path / "bucket"
    (source / "videos").mkdir(parents=True)
    write_video(source / "videos" / "talk.mp4", 50, fps=25, audio=tone(2.0, loud=(1.0, 2.0)))
    write_video(source / "videos" / "plain.mp4", 30, 48, 64, fps=25)
    (source / "videos" / "broken.mp4").write_bytes(b"\x00" * 2000)
    rows = [record("talk", authenticity="real"), record("plain"), record("broken")]
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, rows)
    ctx = offline_context(tmp_path / "state", storage={"source_uri": str(source)})
    first = core.run_frame_extraction(manifest, tmp_path / "one", FX, ctx)
    assert (first.computed, first.reused, first.as_metrics()["videos_reused"]) == (3, 0, 0.0)
    kept = sorted((tmp_path / "state" / "artifacts").rglob("*.npz"))
    assert len(kept) == 2  # the two ok videos; a rejection is not kept
    assert not list(source.rglob("*.npz"))  # nothing is written into the client's uploads

    # Same videos and settings (workers and sharding do not count): nothing is decoded, the Dataset is the same.
    second = core.run_frame_extraction(manifest, tmp_path / "two", dataclasses.replace(FX, shard_max_videos=1), ctx)
    assert (second.computed, second.reused, second.decoded_frames) == (1, 2, 0)  # broken is tried again
    assert {v["video_id"]: v["reused"] for v in second.per_video} == {"broken": False, "plain": True, "talk": True}
    one, two = read_frame_index(tmp_path / "one"), read_frame_index(tmp_path / "two")
    strip = ("search_shard", "dense_shard")
    assert [dataclasses.replace(r, **dict.fromkeys(strip, "")) for r in one] == [
        dataclasses.replace(r, **dict.fromkeys(strip, "")) for r in two
    ]
    for a, b in zip(one[1:], two[1:], strict=True):
        assert np.array_equal(load_search_frames(tmp_path / "one", a), load_search_frames(tmp_path / "two", b))
        assert np.array_equal(load_dense_frames(tmp_path / "one", a), load_dense_frames(tmp_path / "two", b))
        assert np.array_equal(load_audio(tmp_path / "one", a), load_audio(tmp_path / "two", b))

    # A setting that changes the frames is a new key; a kept object that cannot be read is computed again.
    third = core.run_frame_extraction(manifest, tmp_path / "three", dataclasses.replace(FX, search_size=16), ctx)
    assert (third.computed, third.reused) == (3, 0)
    kept[0].write_bytes(b"not an npz")
    fourth = core.run_frame_extraction(manifest, tmp_path / "four", FX, ctx)
    assert (fourth.computed, fourth.reused) == (2, 1) and fourth.ok == 2
    assert core.run_frame_extraction(manifest, tmp_path / "five", FX, ctx).reused == 2  # and kept again

"""frame_extraction speed against the ffmpeg command line and against a full decode.

Prints, as medians of ``--repeats`` runs over the same generated files:

A. Throughput (output frames/s) on ``--files`` generated H.264 + AAC videos (640x360, 25 fps, ``--seconds``
   long, a keyframe every ``--gop`` frames), each ours against ``ffmpeg`` decoding and scaling the same files
   in the same run (the ratio is ours / ffmpeg; > 1 means faster than ffmpeg):
   1. search frames (1 frame/s, 224x224 centre crop): ``extract_video`` against
      ``ffmpeg -threads 1 -i f -vf fps=1,scale=...,crop=224:224 -f rawvideo -``, one process each;
   2. every frame scaled to 320 on its longer side (the dense path over the whole file): ``extract_video``
      with a dense clip covering the file against ``ffmpeg -threads 1 -i f -vf scale=320:180 -f rawvideo -``;
   3. the whole stage, ``run_frame_extraction`` (2 workers, search frames + audio, each file listed
      ``--stage-copies`` times), against two ``ffmpeg -threads 1`` search-frame commands running at once
      over the same list.
B. Sampled extraction at 1 frame/s on a generated 10-minute video (``--long-seconds``) for three encodings
   (a keyframe every 1 s, like a phone camera's; every 10 s, x264's default 250 frames; every 10 s with
   B-frames, whose non-reference frames the reader skips far from a wanted time), against a full PyAV
   decode of the same file (every frame decoded, none converted) and a naive full extraction (every frame
   decoded and scaled to 224): seconds, frames decoded, ratio.

C. Full decode of a generated ``--hd-seconds`` 1280x720 H.264 clip (B-frames) to 224-high RGB: PyAV with one
   thread (the stage's old ``SLICE`` setting: no threads for a one-slice stream) and with frame threads from the
   CPUs available, against the ffmpeg CLI (default threads) writing the same RGB to a pipe, on the same cores;
   then the 1 frame/s sampler's decoded-frame share on the same clip with a keyframe every 1 s and every 10 s.

Generated files are cached in ``--workdir`` (default ``/tmp/clipsync-bench-frame-extraction``).
Needs the ``ffmpeg`` command for part A (Debian: ``apt-get install -y ffmpeg``); part B runs without it.

Run: ``.venv/bin/python benchmarks/frame_extraction.py [--repeats 3] [--files 4] [--seconds 20] [--long-seconds 600]``
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.common.cpus import thread_count
from components.common.manifest import VideoRecord, write_manifest
from components.config import from_dict
from components.frame_extraction import core, decode
from components.frame_extraction.config import FrameExtractionConfig

RATE = 16000
FPS = 25
# Part B files: (keyframe interval in frames, x264 preset).
LONG_VARIANTS = ((FPS, "ultrafast"), (10 * FPS, "ultrafast"), (10 * FPS, "veryfast"))


def _frame(i: int, width: int, height: int, base: np.ndarray) -> np.ndarray:
    """A moving gradient with a moving box: compressible like camera footage, changing every frame."""
    image = np.roll(base, i * 3, axis=1)
    x = (i * 5) % (width - 40)
    image[height // 3 : height // 3 + 40, x : x + 40] = (255, 255 - (i % 255), 0)
    return image


def write_video(
    path: Path, seconds: float, width: int, height: int, gop: int, audio: bool, preset: str = "ultrafast"
) -> Path:
    """An H.264 (+ AAC mono) mp4 with a keyframe every ``gop`` frames. Kept if it already exists.

    x264 ``ultrafast`` writes no B-frames (like most phone encoders); ``veryfast`` writes B-frames.
    """
    import av

    if path.is_file():
        return path
    tmp = path.with_suffix(".part.mp4")
    n = int(seconds * FPS)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    samples = np.zeros(0, np.float32)
    if audio:
        t = np.arange(int(seconds * RATE)) / RATE
        samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(t))).astype(np.float32)
    with av.open(str(tmp), "w", format="mp4") as container:
        vstream = container.add_stream(
            "libx264", rate=FPS, options={"preset": preset, "g": str(gop), "keyint_min": str(gop)}
        )
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = container.add_stream("aac", rate=RATE, layout="mono") if audio else None
        done = 0  # audio samples muxed, kept level with the video so the file is interleaved
        for i in range(n):
            container.mux(vstream.encode(av.VideoFrame.from_ndarray(_frame(i, width, height, base), format="rgb24")))
            while astream is not None and done < min(len(samples), (i + 1) * RATE // FPS):
                frame = av.AudioFrame.from_ndarray(samples[None, done : done + 1024], format="flt", layout="mono")
                frame.sample_rate = RATE
                container.mux(astream.encode(frame))
                done += 1024
        container.mux(vstream.encode())
        if astream is not None:
            container.mux(astream.encode())
    tmp.rename(path)
    return path


def _record(path: Path, copy: int = 0) -> VideoRecord:
    # A hash of its own for each listed copy: the stage keeps results by content hash and would reuse one for the rest.
    video_id = f"{path.stem}-{copy}"
    digest = hashlib.sha256(video_id.encode()).hexdigest()
    return VideoRecord(
        video_id=video_id, key=f"videos/{path.name}", uri=str(path), sha256=digest,
        size_bytes=path.stat().st_size, uploaded_at="2026-11-01T00:00:00", status="accepted",
    )  # fmt: skip


def _median(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _ffmpeg_frames(path: Path, vf: str, width: int, height: int, threads: int = 1) -> int:
    cmd = ["ffmpeg", "-v", "error", "-threads", str(threads), "-i", str(path), "-an", "-vf", vf, "-pix_fmt", "rgb24"]
    out = subprocess.run([*cmd, "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    return len(out) // (width * height * 3)


def _search_vf(size: int) -> str:
    return f"fps=1,scale={size}:{size}:force_original_aspect_ratio=increase,crop={size}:{size}"


def part_a(files: list[Path], seconds: float, repeats: int, workdir: Path, stage_copies: int) -> None:
    size = 224
    search_cfg = FrameExtractionConfig(search_size=size, max_search_frames=100_000, workers=1)
    # One search frame and a dense clip over the whole file: every frame decoded and scaled to 320x180.
    dense_cfg = dataclasses.replace(search_cfg, search_fps=0.01, dense_all=True, dense_seconds=min(60.0, seconds + 1))

    def ours(cfg: FrameExtractionConfig) -> int:
        total = 0
        for f in files:
            video = core.extract_video(f, _record(f), cfg)
            total += video.search_frames.shape[0] + video.dense_frames.shape[0]
        return total

    def ffmpeg(vf: str, w: int, h: int) -> int:
        return sum(_ffmpeg_frames(f, vf, w, h) for f in files)

    print(f"A. throughput over {len(files)} files (640x360, 25 fps, median of {repeats})")
    rows = [
        ("search 1 fps 224 crop", lambda: ours(search_cfg), lambda: ffmpeg(_search_vf(size), size, size)),
        ("every frame to 320x180", lambda: ours(dense_cfg), lambda: ffmpeg("scale=320:180", 320, 180)),
    ]
    for name, mine, theirs in rows:
        t_ours, n_ours = _median(mine, repeats)
        t_ff, n_ff = _median(theirs, repeats)
        fps_ours, fps_ff = n_ours / t_ours, n_ff / t_ff
        print(
            f"  {name:24s} ours {n_ours:5d} frames {t_ours:6.2f} s {fps_ours:8.1f} f/s | "
            f"ffmpeg {n_ff:5d} frames {t_ff:6.2f} s {fps_ff:8.1f} f/s | ratio {fps_ours / fps_ff:5.2f}"
        )

    # The stage starts its worker processes (spawn) once per run: list each file several times so that this
    # start-up cost weighs as it would over a month's library rather than four clips.
    manifest = workdir / "manifest.jsonl"
    write_manifest(manifest, [_record(f, c) for c in range(stage_copies) for f in files])
    stage_cfg = dataclasses.replace(search_cfg, workers=2)

    def stage() -> int:
        # A fresh state folder each time: a first run's work (the kept results of the last would be reused).
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            ctx = from_dict({"state_dir": tmp, "storage": {"source_uri": str(workdir)}}).context(track=False)
            report = core.run_frame_extraction(manifest, Path(tmp) / "frames", stage_cfg, ctx)
            assert report.reused == 0, report
        return report.frames_written

    def ffmpeg_2() -> int:
        with ThreadPoolExecutor(2) as pool:
            return sum(pool.map(lambda f: _ffmpeg_frames(f, _search_vf(size), size, size), files * stage_copies))

    t_stage, n_stage = _median(stage, repeats)
    t_ff, n_ff = _median(ffmpeg_2, repeats)
    print(
        f"  {f'stage, 2 workers, x{stage_copies}':24s} "
        f"ours {n_stage:5d} frames {t_stage:6.2f} s {n_stage / t_stage:8.1f} f/s | "
        f"ffmpeg {n_ff:5d} frames {t_ff:6.2f} s {n_ff / t_ff:8.1f} f/s | "
        f"ratio {(n_stage / t_stage) / (n_ff / t_ff):5.2f}"
    )


def _full_decode(path: Path, scale: int = 0) -> int:
    """Decode every frame; with ``scale``, also turn each into RGB of that height the way the stage does."""
    import av

    n = 0
    scaler = decode.Scaler()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if scale:
                scaler(frame, scale * frame.width // frame.height, scale)
            n += 1
    return n


def part_b(workdir: Path, long_seconds: float, repeats: int) -> None:
    print(f"B. 1 frame/s on a {long_seconds / 60:.0f}-minute 640x360 25 fps video (median of {repeats})")
    cfg = FrameExtractionConfig(search_fps=1.0, max_search_frames=100_000, workers=1)
    for gop, preset in LONG_VARIANTS:
        path = write_video(workdir / f"long_g{gop}_{preset}.mp4", long_seconds, 640, 360, gop, False, preset)
        kind = "no B-frames" if preset == "ultrafast" else "B-frames   "
        t_sparse, video = _median(lambda p=path: core.extract_video(p, _record(p), cfg), repeats)
        t_full, n_full = _median(lambda p=path: _full_decode(p), repeats)
        t_naive, _ = _median(lambda p=path: _full_decode(p, scale=224), repeats)
        print(
            f"  keyframe every {gop / FPS:2.0f} s, {kind}: "
            f"sampled {video.search_frames.shape[0]} frames in {t_sparse:6.2f} s "
            f"({video.decoded_frames} decoded) | full decode {n_full} frames {t_full:6.2f} s "
            f"-> {t_full / t_sparse:5.1f}x "
            f"| decode+scale all {t_naive:6.2f} s -> {t_naive / t_sparse:5.1f}x"
        )


def _decode_all(path: Path, threads: int, size: int) -> int:
    """Every frame of ``path`` decoded and scaled to ``size`` high RGB the way the stage does, with ``threads``."""
    import av

    n = 0
    scaler = decode.Scaler()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decode.set_decoder_threads(stream, threads)
        for frame in container.decode(stream):
            scaler(frame, size * frame.width // frame.height, size)
            n += 1
    return n


def part_c(workdir: Path, seconds: float, repeats: int) -> None:
    """Full decode of a 720p H.264 clip to 224 high RGB: slice threads (the old setting), frame threads from
    the available CPUs (the stage's setting), and the ffmpeg CLI with its default threads, on the same cores."""
    size = 224
    path = write_video(workdir / f"hd_{seconds:.0f}s.mp4", seconds, 1280, 720, 2 * FPS, False, "veryfast")
    threads = thread_count()
    width = size * 1280 // 720
    print(f"C. full decode of a {seconds:.0f} s 1280x720 H.264 clip to {width}x{size} RGB ({threads} CPUs, ", end="")
    print(f"median of {repeats})")
    t_ff, n_ff = _median(
        lambda: _ffmpeg_frames(path, f"scale={width}:{size}:flags=bilinear", width, size, threads=0), repeats
    )
    print(f"  ffmpeg CLI (threads auto)       {n_ff:5d} frames {t_ff:6.2f} s")
    for name, n_threads in (("PyAV 1 thread (old: SLICE)", 1), (f"PyAV {threads} threads (AUTO)", threads)):
        t, n = _median(lambda k=n_threads: _decode_all(path, k, size), repeats)
        print(f"  {name:31s} {n:5d} frames {t:6.2f} s -> {t / t_ff:5.2f}x ffmpeg wall")
    cfg = FrameExtractionConfig(search_fps=1.0, max_search_frames=100_000, workers=1)
    for gop in (FPS, 10 * FPS):
        long = write_video(workdir / f"hd_{seconds:.0f}s_g{gop}.mp4", seconds, 1280, 720, gop, False, "veryfast")
        video = core.extract_video(long, _record(long), cfg)
        total = int(seconds * FPS)  # write_video writes exactly this many frames
        print(
            f"  1 fps sampler, keyframe every {gop / FPS:2.0f} s: {video.decoded_frames} of {total} frames decoded "
            f"({video.decoded_frames / total:.0%})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gop", type=int, default=50, help="keyframe interval of the part A files (frames)")
    parser.add_argument("--long-seconds", type=float, default=600.0)
    parser.add_argument("--stage-copies", type=int, default=4, help="times each file is listed for the stage run")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "clipsync-bench-frame-extraction"))
    parser.add_argument("--hd-seconds", type=float, default=30.0, help="length of the part C 720p clip")
    parser.add_argument("--skip-a", action="store_true")
    parser.add_argument("--skip-b", action="store_true")
    parser.add_argument("--skip-c", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    (workdir / "videos").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = [
        write_video(workdir / "videos" / f"clip{i}_g{args.gop}.mp4", args.seconds, 640, 360, args.gop, audio=True)
        for i in range(args.files)
    ]
    if args.long_seconds and not args.skip_b:
        for gop, preset in LONG_VARIANTS:
            write_video(workdir / f"long_g{gop}_{preset}.mp4", args.long_seconds, 640, 360, gop, False, preset)
    print(f"files ready in {time.perf_counter() - started:.1f} s ({workdir})")
    if not args.skip_a:
        if shutil.which("ffmpeg") is None:
            print("A. skipped: the `ffmpeg` command is not installed (Debian/Ubuntu: apt-get install -y ffmpeg)")
        else:
            version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
            print(f"reference: {version}")
            part_a(files, args.seconds, args.repeats, workdir, args.stage_copies)
    if not args.skip_b:
        part_b(workdir, args.long_seconds, args.repeats)
    if not args.skip_c and shutil.which("ffmpeg") is not None:
        part_c(workdir, args.hd_seconds, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Incremental months (issue 15.5): what a rerun and a month with N new videos cost against the first run.

Drives the per-video stages' cores (ingest -> frame_extraction -> face_tracking, MLflow off) on a demo library:

1. **first**: every video is new (the baseline);
2. **rerun**: the same window again, nothing new;
3. **+N**: N new talking heads (from a second demo library) added to the uploads.

Work is counted as **frames decoded** (frame_extraction) **+ dense frames tracked** (face_tracking), the units the
stages spend their time on; the per-video stage time (frame_extraction's per-video seconds of computed videos, plus
face_tracking's wall time) is printed beside it. Identical retrains (no training steps at all) are covered by
tests/test_finetune_*.py and tests/test_pipeline_local.py, not timed here.

    PYTHONPATH=. nice -n 10 python -P benchmarks/incremental.py --new 3   # -P: benchmarks/serving.py is not serving

Goals: rerun <= 5 % of the first run's work; +N costs about N / (first run's videos) of it (the ratio is printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from components.config import from_dict
from components.demo_data.core import DemoConfig, generate_demo_data
from components.face_tracking.core import run_face_tracking
from components.frame_extraction.core import run_frame_extraction
from components.ingest.core import run_ingest

AS_OF = "2026-11-01"


def _month(ctx, work: Path, name: str, config) -> dict[str, float]:
    started = time.perf_counter()
    run_ingest(work / f"{name}.jsonl", config.ingest, ctx)
    fx = run_frame_extraction(work / f"{name}.jsonl", work / f"{name}-frames", config.frame_extraction, ctx)
    faces = run_face_tracking(work / f"{name}-frames", work / f"{name}-faces", config.face_tracking, ctx)
    tracked = sum(v["n_frames"] for v in faces.per_video if not v["reused"])
    decoded = {v["video_id"]: v["decoded_frames"] for v in fx.per_video}
    # Work per talking head (a video face_tracking tracked this run): the kind every new video of +N is.
    heads = [decoded[v["video_id"]] + v["n_frames"] for v in faces.per_video if not v["reused"]]
    fx_seconds = sum(v["seconds"] for v in fx.per_video if not v["reused"])
    return {
        "videos": fx.videos,
        "computed": fx.computed,
        "reused": fx.reused,
        "frames_decoded": fx.decoded_frames,
        "frames_tracked": tracked,
        "work": fx.decoded_frames + tracked,
        "stage_seconds": fx_seconds + faces.seconds,
        "wall_seconds": time.perf_counter() - started,
        "per_head": sum(heads) / len(heads) if heads else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=3, help="new videos of the third month")
    parser.add_argument("--talking", type=int, default=4, help="real and fake talking heads each, first library")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="clipsync-incremental-") as tmp:
        root = Path(tmp)
        config = from_dict(
            {
                "state_dir": str(root / "state"),
                "client_id": "bench",
                "cache_dir": os.environ.get("CLIPSYNC_MODEL_CACHE", ""),
                "window": {"as_of": AS_OF, "days": 3650},
                "frame_extraction": {"workers": 1},
            }
        )
        ctx = config.context(track=False)
        bucket = Path(config.storage.source_uri)
        small = dict(clips_per_category=1, two_face=0, no_face=0, broken=False, workers=1)
        generate_demo_data(
            bucket,
            root / "truth1",
            DemoConfig(seed=1, as_of=AS_OF, talking_real=args.talking, talking_fake=args.talking, **small),
        )
        rows = {"first": _month(ctx, root, "first", config), "rerun": _month(ctx, root, "rerun", config)}

        other = root / "other"
        generate_demo_data(
            other, root / "truth2", DemoConfig(seed=2, as_of=AS_OF, talking_real=args.new, talking_fake=0, **small)
        )
        records = [json.loads(line) for line in (other / "labels" / "records.jsonl").read_text().splitlines()]
        talking = [r for r in records if r.get("authenticity")][: args.new]
        for record in talking:
            target = bucket / record["video_path"].replace("clip_", "new_clip_")
            shutil.copy(other / record["video_path"], target)
            record["video_path"] = str(target.relative_to(bucket))
        (bucket / "labels" / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in talking))
        rows[f"+{len(talking)}"] = _month(ctx, root, "plus", config)

    first = rows["first"]
    print(f"{'run':<8}{'videos':>8}{'computed':>10}{'reused':>8}{'decoded':>9}{'tracked':>9}{'work':>8}"
          f"{'work/first':>12}{'stage s':>9}{'stage/first':>13}{'wall s':>8}")  # fmt: skip
    for name, row in rows.items():
        print(
            f"{name:<8}{row['videos']:>8}{row['computed']:>10}{row['reused']:>8}{row['frames_decoded']:>9}"
            f"{row['frames_tracked']:>9}{row['work']:>8}{row['work'] / first['work']:>12.3f}"
            f"{row['stage_seconds']:>9.2f}{row['stage_seconds'] / first['stage_seconds']:>13.3f}"
            f"{row['wall_seconds']:>8.1f}"
        )
    plus = rows[f"+{len(talking)}"]
    per_new = plus["per_head"] / first["per_head"]
    print(f"rerun work share: {rows['rerun']['work'] / first['work']:.3%} (goal <= 5%)")
    print(
        f"+{plus['computed']} new videos: work {plus['work'] / first['work']:.3f} of the first run's "
        f"({plus['computed']}/{first['computed']} = {plus['computed'] / first['computed']:.3f} of its videos); "
        f"work per new talking head / per first-run talking head = {per_new:.2f} "
        f"({plus['per_head']:.0f} / {first['per_head']:.0f} frames decoded + tracked)"
    )


if __name__ == "__main__":
    main()

"""What the TrainJob path costs over training in the task's own process (issue 17.3), on a tiny finetune_clip.

Both arms are a fresh Python process, as a kfp task is, that runs the finetune_clip stage on the same small frames
Dataset (``tests/synthetic_frames.py``) and a tiny demo base CLIP, tracking into a fresh sqlite MLflow:

* ``in-process`` (the baseline): ``run_finetune_clip`` trains in that process;
* ``trainjob``: ``run_as_trainjob`` with ``distributed.backend: torchrun`` and one process: the inputs are staged
  in the artifacts store, ``torchrun --nproc_per_node 1 -m pipelines.trainjob_entry`` trains, rank 0 publishes, the
  task picks the model up (the Kubernetes backend adds the API round trips of its polls on top).

The arms alternate; it prints each run's wall time and the medians, and the TrainJob arm's median over the
baseline's. The difference is a fixed start-up cost (a second interpreter, torch and MLflow imports, staging),
independent of the training's length.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/trainjob_overhead.py --repeats 3``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(arm: str, root: Path, state: Path) -> None:
    """One run of the stage in this process (``arm``: ``in-process`` or ``trainjob``)."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from components.common.config import DistributedConfig
    from components.common.trainjob import run_as_trainjob
    from components.config import from_dict

    settings = {"base_model": str(root / "base"), "epochs": 2, "batch_size": 4, "frames_per_video": 2}
    settings.update(device="cpu", lora_r=4, lora_alpha=8, num_threads=1)
    config = from_dict({"state_dir": str(state), "client_id": "acme", "finetune_clip": settings})
    out, frames = state / "model", root / "frames"
    if arm == "in-process":
        from components.finetune_clip.core import run_finetune_clip  # the task's process imports torch only here

        run_finetune_clip(frames, out, config.finetune_clip, config.context())
    else:
        run_as_trainjob(
            "finetune_clip", config.to_json(), {"frames": frames}, out, DistributedConfig(), config.context()
        )
    assert (out / "card.json").is_file()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--child", nargs=3, metavar=("ARM", "ROOT", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from serving_assets import make_base
    from synthetic_frames import make_frames

    times: dict[str, list[float]] = {"in-process": [], "trainjob": []}
    with tempfile.TemporaryDirectory(prefix="trainjob-overhead-") as tmp:
        root = Path(tmp)
        make_base(root / "base")  # a 1-layer demo base CLIP at 32 px
        make_frames(root / "frames", args.videos)
        for i in range(args.repeats):
            for arm in times:
                state = root / f"{arm}-{i}"
                started = time.perf_counter()
                cmd = [sys.executable, __file__, "--child", arm, str(root), str(state)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=900)
                times[arm].append(time.perf_counter() - started)
                print(f"{arm:>10} run {i + 1}: {times[arm][-1]:.1f} s", flush=True)
    base, job = statistics.median(times["in-process"]), statistics.median(times["trainjob"])
    print(f"median in-process (baseline) {base:.1f} s, trainjob (torchrun, 1 process) {job:.1f} s")
    print(f"trainjob / in-process = {job / base:.2f}x; overhead {job - base:.1f} s per fine-tune")
    return 0


if __name__ == "__main__":
    sys.exit(main())

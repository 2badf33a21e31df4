"""DAG overhead (issue 15.6): how much of a local monthly_retrain run is the stages' own work, and how much is
process start-up and imports around it.

Runs the DAG once with kfp.local (the tiny demo library of tests/test_pipeline_local.py, generated under --home
when missing; a second call on the same --home is a rerun of the same window, where the stages reuse every video's
result and train nothing) in a child process with ``PYTHONPROFILEIMPORTTIME=1``, which every task process inherits,
and reads what each task printed. Per task:

- **wall**: from kfp's ``Executing task`` line to its ``finished`` line, as the lines arrive;
- **stage**: the task's MLflow stage run (start to end), the stage's own work; tasks without one (start_run,
  summary, the gate's branches' plumbing) count as overhead entirely;
- **imports**: the top-level imports' cumulative time the task process reported (kfp's executor, the wrapper's
  body, and lazy imports inside the stage such as torch, which then also count in **stage**).

Prints the per-task split, the load average, and the **overhead share** = 1 - sum(stage) / DAG wall (goal <= 15 %
on a quiet machine).

    PYTHONPATH=. nice -n 10 python -P benchmarks/dag_overhead.py --home /tmp/clipsync-dag

(``-P``: ``benchmarks/serving.py`` would otherwise shadow the ``serving`` package.)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

AS_OF = "2026-11-01"
FAST = {
    "finetune_clip": {"epochs": 3, "early_stopping_patience": 0, "frames_per_video": 2},
    "finetune_lipsync": {"epochs": 3, "freeze_epochs": 1},
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IMPORT = re.compile(r"^\s*import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _config(home: Path):
    from components.config import load_config

    cache = os.environ.get("CLIPSYNC_MODEL_CACHE", "")
    return load_config(state_dir=str(home / "state"), client_id="tiny", cache_dir=cache, **FAST)


def _prepare(home: Path) -> None:
    from components.demo_data.core import DemoConfig, generate_demo_data
    from components.finetune_clip.base_model import build_demo_base_clip

    config = _config(home)
    if (home / "state" / "demo" / "tiny" / "truth.jsonl").is_file():
        return
    build_demo_base_clip(home / "state" / "models" / "base-clip", seed=1, time_budget_s=10, max_steps=40)
    generate_demo_data(
        Path(config.storage.source_uri),
        home / "state" / "demo" / "tiny",
        DemoConfig(seed=1, as_of=AS_OF, clips_per_category=2, talking_real=6, talking_fake=6, two_face=1, no_face=1),
    )


def _child(home: Path) -> None:
    """Run the DAG (this process's imports are not a task's: the profile lines before the first task are skipped)."""
    from pipelines.local import run_local

    report = run_local(_config(home), as_of=AS_OF)
    parent = re.search(r"MLflow parent run (\w+)", report).group(1)
    print(f"BENCH parent run {parent}", flush=True)


def _stage_runs(home: Path, parent_id: str) -> list[tuple[str, float, float]]:
    from mlflow.tracking import MlflowClient

    config = _config(home)
    client = MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=200
    )
    return [(r.info.run_name, r.info.start_time / 1000, (r.info.end_time or r.info.start_time) / 1000) for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="where the demo client lives (kept between runs)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.home)
        return
    _prepare(args.home)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-P", __file__, "--home", str(args.home), "--child"]
    tasks: list[dict] = []
    current: dict | None = None
    parent_id = ""
    load_before = os.getloadavg()
    started = time.time()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        for raw in child.stdout:
            now, line = time.time(), _ANSI.sub("", raw.rstrip("\n"))
            if m := re.search(r"Executing task '([^']+)'", line):
                current = {"task": m.group(1), "start": now, "end": now, "imports_us": 0}
                tasks.append(current)
            elif (m := re.search(r"Task '([^']+)' finished", line)) and current is not None:
                current["end"], current = now, None
            elif (m := _IMPORT.match(line)) and current is not None and not m.group(3):
                current["imports_us"] += int(m.group(2))
            elif line.startswith("BENCH parent run "):
                parent_id = line.split()[-1]
    wall = time.time() - started
    load_after = os.getloadavg()
    if child.returncode != 0 or not parent_id:
        raise SystemExit(f"the DAG run failed (exit {child.returncode})")

    stages = _stage_runs(args.home, parent_id)
    total_stage = 0.0
    print(f"{'task':<28}{'wall s':>8}{'stage s':>9}{'overhead s':>12}{'imports s':>11}  stage run")
    for task in tasks:
        inside = [s for s in stages if task["start"] - 1 <= s[1] and s[2] <= task["end"] + 1]
        stage_s = sum(end - start for _, start, end in inside)
        total_stage += stage_s
        task_wall = task["end"] - task["start"]
        print(
            f"{task['task']:<28}{task_wall:>8.1f}{stage_s:>9.1f}{task_wall - stage_s:>12.1f}"
            f"{task['imports_us'] / 1e6:>11.1f}  {', '.join(s[0] for s in inside) or '-'}"
        )
    tasks_wall = sum(t["end"] - t["start"] for t in tasks)
    imports = sum(t["imports_us"] for t in tasks) / 1e6
    print(f"DAG wall {wall:.1f} s ({len(tasks)} tasks, {tasks_wall:.1f} s inside tasks), stages {total_stage:.1f} s")
    print(f"task imports {imports:.1f} s ({imports / wall:.1%} of the DAG wall; lazy ones inside stages included)")
    print(f"overhead share: {1 - total_stage / wall:.1%} (goal <= 15% on a quiet machine)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

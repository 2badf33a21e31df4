"""DAG overhead (issue 15.6): how much of a local monthly_retrain run is the stages' own work, and how much is
process start-up and imports around it.

Runs the DAG once with kfp.local (``--library tiny``: the tiny demo library of tests/test_pipeline_local.py with
3-epoch training; ``--library demo``: what ``make run`` runs, the demo library of ``clipsync demo-data`` with
``configs/demo.yaml``; generated under --home when missing; a second call on the same --home is a rerun of the same
window, where the stages reuse every video's result and train nothing) in a child process with
``PYTHONPROFILEIMPORTTIME=1``, which every task process inherits, and reads what each task printed. Per task:

- **wall**: from kfp's ``Executing task`` line to its ``finished`` line, as the lines arrive;
- **stage**: the task's MLflow stage run (start to end), the stage's own work; tasks without one (start_run,
  summary, the gate's branches' plumbing) count as overhead entirely;
- **imports**: the top-level imports' cumulative time the task process reported (kfp's executor, the wrapper's
  body, and lazy imports inside the stage such as torch, which then also count in **stage**), and its split by
  package: the MLflow client (``mlflow`` and, with a sqlite tracking URI, its SQLAlchemy store: sqlalchemy,
  alembic), the torch stack (torch, transformers, peft, safetensors), kfp, clipsync's own modules, the rest.

``--probe N`` (after a run on the same --home) measures one task's start-up alone, in the same session for both
tracking paths: kfp.local's SubprocessRunner runs the ``keep`` task (its config, its MLflow stage run and the champion
lookup, nothing else: a task that is all start-up) N times against the sqlite file and N times through
``run_local``'s server, alternating; it prints the medians of the task's wall time and of its process's CPU time
(the CPU time, unlike the wall time, hardly depends on what else the machine runs), and how long the server took to
answer.

``--server off`` runs the DAG the way it ran before ``run_local`` served the sqlite file to the tasks with a local
``mlflow server`` (every task opens the sqlite store itself); run both on copies of the same prepared --home for a
before/after pair.

Prints the per-task split, the load average, and the **overhead share** = 1 - sum(stage) / DAG wall (goal <= 15 %
on a quiet machine).

    PYTHONPATH=. nice -n 10 python -P benchmarks/dag_overhead.py --home /tmp/clipsync-dag [--server off]
    PYTHONPATH=. python -P benchmarks/dag_overhead.py --home /tmp/clipsync-demo --library demo   # make run's DAG
    PYTHONPATH=. nice -n 10 python -P benchmarks/dag_overhead.py --home /tmp/clipsync-dag --probe 5

(``-P``: ``benchmarks/serving.py`` would otherwise shadow the ``serving`` package.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

AS_OF = "2026-11-01"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
FAST = {
    "finetune_clip": {"epochs": 3, "early_stopping_patience": 0, "frames_per_video": 2},
    "finetune_lipsync": {"epochs": 3, "freeze_epochs": 1},
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IMPORT = re.compile(r"^\s*import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")
#: Import groups of the per-task split (the first dotted name of a top-level import); the rest is "other".
GROUPS = {
    "mlflow": "mlflow",
    "sqlalchemy": "mlflow",
    "alembic": "mlflow",
    "torch": "torch",
    "transformers": "torch",
    "peft": "torch",
    "safetensors": "torch",
    "kfp": "kfp",
    "components": "clipsync",
    "serving": "clipsync",
    "pipelines": "clipsync",
}
SPLIT = ("mlflow", "torch", "kfp", "clipsync", "other")


def _config(home: Path, library: str = "tiny"):
    from components.config import load_config

    cache = os.environ.get("CLIPSYNC_MODEL_CACHE", "")
    if library == "demo":
        return load_config(DEMO_CONFIG, state_dir=str(home / "state"), client_id="acme", cache_dir=cache)
    return load_config(state_dir=str(home / "state"), client_id="tiny", cache_dir=cache, **FAST)


def _prepare(home: Path, library: str) -> None:
    """Generate the library and the demo base CLIP under ``home`` unless they are there (as ``clipsync demo-data``)."""
    from components.demo_data.core import DemoConfig, generate_demo_data
    from components.finetune_clip.base_model import build_demo_base_clip
    from components.finetune_clip.model import resolve_base_ref

    config = _config(home, library)
    truth = Path(config.state_dir) / "demo" / config.client_id
    if (truth / "truth.jsonl").is_file():
        return
    base = Path(resolve_base_ref("", config.state_dir))
    if library == "demo":
        generate_demo_data(Path(config.storage.source_uri), truth, DemoConfig(seed=0, as_of=AS_OF))
        build_demo_base_clip(base, seed=0)
        return
    build_demo_base_clip(base, seed=1, time_budget_s=10, max_steps=40)
    generate_demo_data(
        Path(config.storage.source_uri),
        truth,
        DemoConfig(seed=1, as_of=AS_OF, clips_per_category=2, talking_real=6, talking_fake=6, two_face=1, no_face=1),
    )


def _child(home: Path, server: bool, warm: bool, library: str) -> None:
    """Run the DAG (this process's imports are not a task's: the profile lines before the first task are skipped)."""
    from pipelines.local import run_local

    report = run_local(_config(home, library), as_of=AS_OF, server=server, warm=warm)
    parent = re.search(r"MLflow parent run (\w+)", report).group(1)
    print(f"BENCH parent run {parent}", flush=True)


def _probe(home: Path, repeats: int, library: str) -> None:
    """One task's start-up, the sqlite file vs run_local's server (see the module docstring)."""
    from kfp import local

    from components.deploy.component import keep
    from pipelines.local import tracking_server

    config = _config(home, library)
    runs = sorted(Path(config.pipeline_root).glob("monthly-retrain-*/ab-gate/executor_output.json"))
    if not runs:
        raise SystemExit(f"no DAG run under {config.pipeline_root}: run this benchmark once on --home first")
    run_dir = runs[-1].parents[1]
    outputs = {t: json.loads((run_dir / t / "executor_output.json").read_text()) for t in ("start-run", "ab-gate")}
    parent = outputs["start-run"]["parameterValues"]["parent_run_id"]
    decision = outputs["ab-gate"]["parameterValues"]["decision"]
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(home / "probe-root"))
    figures: dict[str, list[tuple[float, float]]] = {"sqlite file": [], "local server": []}
    started = time.monotonic()
    with tracking_server(config) as server:
        served = server.task_config(config)
        ready = time.monotonic() - started
        if served is config:
            raise SystemExit("the local mlflow server did not come up")
        for _ in range(repeats):
            for name, task_config in (("sqlite file", config), ("local server", served)):
                cpu, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
                keep(config=task_config.to_json(), parent_run_id=parent, model="clip", decision=decision)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
                figures[name].append((time.monotonic() - wall, used))
    print(f"local mlflow server answered after {ready:.1f} s (nothing else started beside it)")
    for name, values in figures.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"keep task through the {name}: median wall {wall:.2f} s, median CPU {cpu:.2f} s ({repeats} runs)")
    ratio = statistics.median(v[1] for v in figures["local server"]) / statistics.median(
        v[1] for v in figures["sqlite file"]
    )
    print(f"CPU ratio local server / sqlite file: {ratio:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")


def _stage_runs(home: Path, parent_id: str, library: str) -> list[tuple[str, float, float]]:
    from mlflow.tracking import MlflowClient

    config = _config(home, library)
    client = MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=200
    )
    return [(r.info.run_name, r.info.start_time / 1000, (r.info.end_time or r.info.start_time) / 1000) for r in runs]


def _owner(tasks: list[dict], start: float, end: float) -> int:
    """The task a stage run belongs to: the one its time overlaps most (the line timestamps of a task and the
    run's own clock differ by a few tens of milliseconds, so short runs of neighbouring tasks can touch both)."""
    return max(range(len(tasks)), key=lambda n: min(end, tasks[n]["end"]) - max(start, tasks[n]["start"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="where the demo client lives (kept between runs)")
    parser.add_argument(
        "--server", choices=("on", "off"), default="on", help="run_local's local mlflow server for the tasks"
    )
    parser.add_argument(
        "--warm",
        choices=("on", "off", "both"),
        default="on",
        help="tasks forked from run_local's preloader (pipelines/warm_start.py) or fresh processes; both: off, then "
        "on, each on a fresh copy of --home",
    )
    parser.add_argument(
        "--library", choices=("tiny", "demo"), default="tiny", help="the tests' tiny DAG or make run's demo"
    )
    parser.add_argument("--probe", type=int, default=0, metavar="N", help="time one task's start-up N times each way")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        _probe(args.home, args.probe, args.library)
        return
    if args.child:
        _child(args.home, args.server == "on", args.warm == "on", args.library)
        return
    _prepare(args.home, args.library)
    if args.warm != "both":
        _measure(args.home, args.server, args.warm, args.library)
        return
    results = {}
    for warm in ("off", "on"):
        copy = args.home.with_name(f"{args.home.name}-warm-{warm}")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.home, copy, symlinks=True)
        print(f"\n## warm start {warm} ({copy})", flush=True)
        results[warm] = _measure(copy, args.server, warm, args.library)
    off, on = results["off"], results["on"]
    print(
        f"\nwarm start off -> on: DAG wall {off['wall']:.1f} -> {on['wall']:.1f} s ({on['wall'] / off['wall']:.2f}x), "
        f"outside the stages {off['wall'] - off['stages']:.1f} -> {on['wall'] - on['stages']:.1f} s, "
        f"overhead share {off['share']:.1%} -> {on['share']:.1%} (goal <= 15% on a quiet machine)"
    )


def _measure(home: Path, server: str, warm: str, library: str) -> dict[str, float]:
    """Run the DAG once in a child process, print the per-task split and return the DAG's wall time, the sum of
    its stage runs and the overhead share."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-P", __file__, "--home", str(home), "--server", server, "--warm", warm]
    command += ["--library", library, "--child"]
    tasks: list[dict] = []
    cold: list[str] = []  # tasks that did not fork from the preloader, and why
    current: dict | None = None
    parent_id = ""
    load_before = os.getloadavg()
    started = time.time()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        for raw in child.stdout:
            now, line = time.time(), _ANSI.sub("", raw.rstrip("\n"))
            if m := re.search(r"Executing task '([^']+)'", line):
                current = {"task": m.group(1), "start": now, "end": now, "imports_us": 0, **dict.fromkeys(SPLIT, 0)}
                tasks.append(current)
            elif (m := re.search(r"Task '([^']+)' finished", line)) and current is not None:
                current["end"], current = now, None
            elif (m := _IMPORT.match(line)) and current is not None and not m.group(3):
                current["imports_us"] += int(m.group(2))
                current[GROUPS.get(m.group(4).split(".")[0], "other")] += int(m.group(2))
            elif line.startswith("BENCH parent run "):
                parent_id = line.split()[-1]
            elif "clipsync warm start: starting cold" in line:
                cold.append(line.strip())
    wall = time.time() - started
    load_after = os.getloadavg()
    if child.returncode != 0 or not parent_id:
        raise SystemExit(f"the DAG run failed (exit {child.returncode})")

    stages = _stage_runs(home, parent_id, library)
    total_stage = 0.0
    split = "".join(f"{name:>9}" for name in SPLIT)
    print(f"{'task':<22}{'wall s':>8}{'stage s':>9}{'overhead s':>12}{'imports s':>11}{split}  stage run")
    owner = [_owner(tasks, start, end) for _, start, end in stages]
    for n, task in enumerate(tasks):
        inside = [s for s, o in zip(stages, owner, strict=True) if o == n]
        stage_s = sum(end - start for _, start, end in inside)
        total_stage += stage_s
        task_wall = task["end"] - task["start"]
        print(
            f"{task['task']:<22}{task_wall:>8.1f}{stage_s:>9.1f}{task_wall - stage_s:>12.1f}"
            f"{task['imports_us'] / 1e6:>11.1f}{''.join(f'{task[name] / 1e6:>9.1f}' for name in SPLIT)}"
            f"  {', '.join(s[0] for s in inside) or '-'}"
        )
    tasks_wall = sum(t["end"] - t["start"] for t in tasks)
    imports = sum(t["imports_us"] for t in tasks) / 1e6
    print(f"DAG wall {wall:.1f} s ({len(tasks)} tasks, {tasks_wall:.1f} s inside tasks), stages {total_stage:.1f} s")
    print(f"task imports {imports:.1f} s ({imports / wall:.1%} of the DAG wall; lazy ones inside stages included)")
    print("  by package: " + ", ".join(f"{name} {sum(t[name] for t in tasks) / 1e6:.1f} s" for name in SPLIT))
    print(f"overhead share: {1 - total_stage / wall:.1%} (goal <= 15% on a quiet machine)")
    print(f"tracking for the tasks: {'local mlflow server' if server == 'on' else 'the sqlite file'}")
    if warm == "on":
        print(
            f"tasks forked from the preloader: {len(tasks) - len(cold)} of {len(tasks)}"
            + "".join(f"\n  {line}" for line in cold[:3])
        )
    else:
        print("tasks: fresh processes")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    return {"wall": wall, "stages": total_stage, "share": 1 - total_stage / wall}


if __name__ == "__main__":
    main()

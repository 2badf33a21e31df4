"""The `clipsync` command line: demo data, model files, local DAG runs and the pipeline package.

Only the standard library is imported at module level so that ``clipsync --help`` and ``clipsync compile``
stay fast and need nothing beyond kfp; each subcommand imports what it needs.

Why this file is long: it is the one parser of every client-facing command, each a thin function over a core.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("clipsync.cli")


def _load(args: argparse.Namespace):
    from components.config import load_config

    return load_config(args.config, client_id=args.client)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="client YAML config (default: embedded defaults)")
    parser.add_argument("--client", help="client id (overrides the config's client_id; default acme)")


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate the demo (or benchmark) client library, and the small base CLIP the embedded default starts from."""
    from components.demo_data.core import DemoConfig, generate_demo_data
    from components.finetune_clip.base_model import build_demo_base_clip
    from components.finetune_clip.model import resolve_base_ref

    config = _load(args)
    if config.storage.source_uri.startswith("s3://"):
        logger.error("demo-data writes a local folder; storage.source_uri is %s", config.storage.source_uri)
        return 2
    bucket = Path(config.storage.source_uri)
    truth_dir = Path(config.state_dir) / "demo" / config.client_id
    if (bucket / "labels" / "records.jsonl").exists() and not args.force:
        print(f"demo data already present in {bucket} (use --force to regenerate)")
    elif args.profile == "benchmark":
        from components.demo_data.benchmark import BENCHMARK_FILE, BenchmarkConfig, generate_benchmark

        summary = generate_benchmark(bucket, truth_dir, BenchmarkConfig(seed=args.seed, as_of=args.as_of or ""))
        print(
            f"benchmark data for {config.client_id}: {summary.videos} videos {summary.kinds}, "
            f"{len(summary.categories)} categories, timestamps up to {summary.as_of}, {summary.seconds:.0f} s\n"
            f"  bucket: {summary.bucket_dir}\n  ground truth: {summary.truth_path}\n"
            f"  fake types, conditions and test queries: {summary.truth_path.parent / BENCHMARK_FILE}"
        )
    else:
        summary = generate_demo_data(bucket, truth_dir, DemoConfig(seed=args.seed, as_of=args.as_of or ""))
        print(
            f"demo data for {config.client_id}: {summary.videos} videos ({summary.broken} broken on purpose), "
            f"{len(summary.categories)} categories, timestamps up to {summary.as_of}\n"
            f"  bucket: {summary.bucket_dir}\n  ground truth (for tests): {summary.truth_path}"
        )
    if not config.finetune_clip.base_model:
        base_dir = Path(resolve_base_ref("", config.state_dir))
        if (base_dir / "model.safetensors").exists() and not args.force:
            print(f"demo base CLIP already present in {base_dir}")
        else:
            print("pretraining the demo base CLIP on generic shapes (about a minute)...")
            print(f"  demo base CLIP: {build_demo_base_clip(base_dir, seed=args.seed)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a folder of labelled videos in a public layout into the client's uploads and label records."""
    from datetime import UTC, datetime

    from components.importer.config import ImportOptions
    from components.importer.core import ImportLayoutError, import_folder

    config = _load(args)
    options = ImportOptions(args.layout, args.labels or "", args.name or "", args.timestamp or "")
    try:
        report = import_folder(args.source, config.storage, options, Path(config.state_dir) / "cache" / "import")
    except ImportLayoutError as exc:
        print(f"clipsync: nothing imported: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.report or Path(config.state_dir) / "imports" / config.client_id / f"{report.name}-{stamp}.jsonl"
    print(report.summary())
    print(f"  every row and file with its status: {report.write(path)}")
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    """Fetch the MediaPipe face model files into the cache (package registry, setup time only)."""
    from components.face_tracking.models import fetch_face_models

    config = _load(args)
    paths = fetch_face_models(Path(config.cache_dir))
    for field in dataclasses.fields(paths):
        print(f"{field.name}: {getattr(paths, field.name)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Write the pipeline package (YAML) for the Kubeflow UI or API."""
    from pipelines.package import compile_pipeline

    config_yaml = args.config.read_text() if args.config else ""
    out = compile_pipeline(args.output, client_id=args.client or "acme", config_yaml=config_yaml)
    print(f"wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run monthly_retrain locally with kfp.local's SubprocessRunner and print the summary (exit 1 if it failed)."""
    from pipelines.local import RunFailedError, run_local

    config = _load(args)
    try:
        report = run_local(config, as_of=args.as_of or "", window_days=args.window_days or 0, warm=not args.cold_tasks)
    except RunFailedError as exc:
        print(exc)
        print("clipsync: the run failed; the summary above says what failed and why", file=sys.stderr)
        return 1
    print(report)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Serve an earlier version again (``--to-version``, default the registry alias ``previous``)."""
    from components.deploy.core import DeployError, rollback_model

    config = _load(args)
    try:
        result = rollback_model(
            config.tracking,
            config.client_id,
            Path(config.state_dir),
            args.model,
            config.deploy,
            to_version=args.to_version,
            serving=config.serving,
            cache_dir=config.cache_dir,
            encryption=config.encryption,
        )
    except DeployError as exc:
        print(f"clipsync: rollback failed, nothing changed: {exc}", file=sys.stderr)
        return 1
    print(result.to_markdown(), end="")
    return 0


def _fleet_dir(args: argparse.Namespace) -> Path:
    from components.common.config import default_state_dir
    from pipelines.fleet import default_fleet_dir

    return args.fleet_dir or default_fleet_dir(default_state_dir())


def cmd_schedule(args: argparse.Namespace) -> int:
    """Upload the pipeline and create the client's recurring run, or list the fleet's plan (``--list``)."""
    from pipelines.fleet import format_plan, load_fleet, planned_cron, schedule_plan
    from pipelines.schedule import ScheduleError, schedule

    if args.list:
        fleet = _fleet_dir(args)
        configs = load_fleet(fleet)
        print(format_plan(schedule_plan(configs)) if configs else f"no client onboarded in {fleet}")
        return 0
    if not args.host:
        print("clipsync: schedule needs --host (or --list)", file=sys.stderr)
        return 2
    config_yaml = args.config.read_text() if args.config else ""
    config = _load(args)
    cron = args.cron or planned_cron(config.client_id, config.fleet)[0]
    try:
        result = schedule(args.host, config.client_id, config_yaml, cron=cron, replace=args.replace)
    except ScheduleError as exc:
        print(f"clipsync: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Launch one run of monthly_retrain now on a Kubeflow Pipelines server."""
    from pipelines.schedule import ScheduleError, submit

    config_yaml = args.config.read_text() if args.config else ""
    try:
        run_id = submit(
            args.host, args.client or "acme", config_yaml, as_of=args.as_of or "", window_days=args.window_days or 0
        )
    except ScheduleError as exc:
        print(f"clipsync: {exc}", file=sys.stderr)
        return 2
    print(f"submitted run {run_id}")
    return 0


def cmd_onboard(args: argparse.Namespace) -> int:
    """Set a client up: folders, config, token, and in a cluster its buckets, objects, MLflow names, schedule."""
    from pipelines.fleet import onboard

    plan = onboard(
        args.client,
        config_text=args.config.read_text() if args.config else "",
        fleet_dir=args.fleet_dir,
        cluster=True if args.cluster else None,
        dry_run=args.dry_run,
    )
    print(plan.to_text(args.dry_run))
    return 0


def cmd_offboard(args: argparse.Namespace) -> int:
    """Remove what clipsync created for a client (never its uploads); needs ``--confirm <client>``."""
    from pipelines.fleet import offboard

    plan = offboard(args.client, confirm=args.confirm or "", fleet_dir=_fleet_dir(args), dry_run=args.dry_run)
    print(plan.to_text(args.dry_run))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """List every endpoint the client's config would contact; exit 1 if one is outside the cluster."""
    from components.config import load_config
    from pipelines.fleet import CONFIG_FILE

    onboarded = _fleet_dir(args) / (args.client or "acme") / CONFIG_FILE
    if args.config is None and onboarded.is_file():
        config = load_config(onboarded, client_id=args.client)
    else:
        config = _load(args)
    from pipelines.doctor import report

    text, ok = report(config)
    print(text)
    return 0 if ok else 1


def cmd_render_manifests(args: argparse.Namespace) -> int:
    """Write the Kubernetes manifests (the same objects deploy creates)."""
    from components.deploy.manifests import render_manifests

    config = _load(args)
    for path in render_manifests(args.output, config):
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the client's champion models (or explicit folders) with one KServe model server on localhost."""
    from serving.server import serve_main

    return serve_main(
        _load(args),
        args.http_port,
        args.grpc_port,
        args.clip_dir,
        args.lipsync_dir,
        tokens_env=args.tokens_env,
        tokens_file=args.tokens_file,
        admin_token_env=args.admin_token_env,
    )


def cmd_index(args: argparse.Namespace) -> int:
    """Build a CLIP model's search index (and confidence calibrator) from a frames Dataset."""
    from serving.index_build import index_main

    config = _load(args)
    return index_main(
        args.model_dir,
        args.frames_dir,
        args.output,
        settings=config.serving,
        relevance=config.finetune_clip.eval_relevance,
    )


def cmd_feedback_export(args: argparse.Namespace) -> int:
    """Write a month of the client's search feedback as CSV (the latest answer per query and video)."""
    from serving.feedback import feedback_store, read_feedback, write_csv

    config = _load(args)
    entries = read_feedback(feedback_store(config), f"clip-{config.client_id}", args.month, not args.all_answers)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            write_csv(entries, out)
        print(f"{len(entries)} feedback answers of {args.month} -> {args.output}", file=sys.stderr)
    else:
        write_csv(entries, sys.stdout)
    return 0


def cmd_feedback_review(args: argparse.Namespace) -> int:
    """Write the client's review queue of a month so far (CSV + HTML): searches whose right answer nobody gave."""
    from components.feedback.core import review_for_month
    from serving.feedback import feedback_store

    config = _load(args)
    out = args.output or Path(config.state_dir) / "review" / config.client_id / args.month
    model = f"clip-{config.client_id}"
    items = review_for_month(feedback_store(config), model, args.month, out, config.feedback.max_review)
    print(f"{len(items)} searches to review in {args.month} -> {out}", file=sys.stderr)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Accuracy over months: each monthly run's champion metrics, the production proxies, promote or keep."""
    from components.monitor.core import accuracy_markdown, accuracy_over_months, write_accuracy_report
    from serving.feedback import feedback_store

    config = _load(args)
    rows = accuracy_over_months(config, args.months, feedback_store(config))
    if not rows:
        print(f"no monthly run of {config.client_id} in {config.tracking.tracking_uri}", file=sys.stderr)
        return 1
    title = f"{config.client_id}: accuracy over the last {len(rows)} monthly runs"
    print(accuracy_markdown(rows, title))
    out = args.output or Path(config.state_dir) / "monitor" / config.client_id
    files = write_accuracy_report(rows, out, title)
    print(f"plot: {files['png']}\nreport: {files['html']}")
    return 0


def _month(text: str) -> str:
    import re

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"expected a month YYYY-MM, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `clipsync` command."""
    parser = argparse.ArgumentParser(
        prog="clipsync",
        description="Monthly adaptation of video AI models to a client's own videos, on Kubeflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="generate a demo client library (videos, labels, broken uploads)")
    _add_config_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed and as-of: same library)")
    p.add_argument("--as-of", help="timestamps are spread over the ~3 months before this ISO date (default today)")
    p.add_argument("--force", action="store_true", help="regenerate even if the client's folder has data")
    p.add_argument(
        "--profile",
        choices=["demo", "benchmark"],
        default="demo",
        help="demo: the small library `make run` uses (126 files); benchmark: the hard benchmark (925 files, "
        "about 6 min on 2 cores; see README 'Model quality')",
    )
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "import", help="import labelled videos from a folder in a public layout (AVLips, CSV/JSONL) into the client"
    )
    _add_config_args(p)
    p.add_argument("source", type=Path, help="the folder to import (only read)")
    p.add_argument(
        "--layout",
        required=True,
        choices=["avlips", "lipsync-csv", "search"],
        help="avlips: real/ and fake/ folders; lipsync-csv: a CSV of path,label; search: a CSV/TSV/JSONL of "
        "video with caption and/or category (README 'Importing labelled data')",
    )
    p.add_argument("--labels", help="the CSV/TSV/JSONL file (relative to SOURCE or absolute)")
    p.add_argument("--name", help="videos go under videos/NAME/ (default: the folder's name)")
    p.add_argument("--timestamp", help="upload time recorded for the new videos, ISO (default: now, UTC)")
    p.add_argument("--report", type=Path, help="where the per-row report goes (default: under the state folder)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("fetch-models", help="fetch the MediaPipe face model files into the cache folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("run", help="run the monthly_retrain DAG locally (kfp.local) and print a summary")
    _add_config_args(p)
    p.add_argument("--as-of", help="end of the retrain window, ISO date, exclusive (default: today UTC)")
    p.add_argument("--window-days", type=int, help="window length in days (default: the config's, 30)")
    p.add_argument(
        "--cold-tasks",
        action="store_true",
        help="start every task as a fresh Python process, as in a cluster (default: fork each from a process that "
        "has imported MLflow and torch once, pipelines/warm_start.py)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="write the pipeline package YAML for the Kubeflow UI / API")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=Path, default=Path("monthly_retrain.yaml"), help="output file")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("schedule", help="create the client's monthly recurring run on a Kubeflow Pipelines server")
    _add_config_args(p)
    p.add_argument("--host", help="KFP API URL, e.g. http://ml-pipeline-ui.kubeflow")
    p.add_argument(
        "--cron",
        help="6-field KFP cron (seconds first); default: the client's slot (fleet.cron, else a stable hash of its id "
        "within the fleet.schedule_* window)",
    )
    p.add_argument("--replace", action="store_true", help="replace an existing recurring run of this client")
    p.add_argument("--list", action="store_true", help="print the fleet's plan: every onboarded client's start")
    p.add_argument("--fleet-dir", type=Path, help="the fleet folder (default: $CLIPSYNC_HOME/fleet)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("onboard", help="set a client up (idempotent; --dry-run prints the plan)")
    p.add_argument("--client", required=True, help="the client id (normalised: Acme_Corp -> acme-corp)")
    p.add_argument("--config", type=Path, help="the client's YAML config (default: the onboarded one, or defaults)")
    p.add_argument(
        "--cluster", action="store_true", help="also the cluster side (default: when deploy.target is kserve)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--fleet-dir", type=Path, help="the fleet folder (default: $CLIPSYNC_HOME/fleet)")
    p.set_defaults(func=cmd_onboard)

    p = sub.add_parser("offboard", help="remove what clipsync created for a client (never its uploads)")
    p.add_argument("--client", required=True, help="the client id")
    p.add_argument("--confirm", metavar="CLIENT", help="repeat the client id: nothing is removed without it")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--fleet-dir", type=Path, help="the fleet folder (default: $CLIPSYNC_HOME/fleet)")
    p.set_defaults(func=cmd_offboard)

    p = sub.add_parser("doctor", help="list the endpoints a client's config would contact; fail on any outside")
    _add_config_args(p)
    p.add_argument("--fleet-dir", type=Path, help="the fleet folder (default: $CLIPSYNC_HOME/fleet)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("submit", help="launch one monthly_retrain run now on a Kubeflow Pipelines server")
    _add_config_args(p)
    p.add_argument("--host", required=True, help="KFP API URL")
    p.add_argument("--as-of", help="end of the retrain window, ISO date (default: today UTC)")
    p.add_argument("--window-days", type=int, help="window length in days (default: the config's)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("rollback", help="serve an earlier version again and make it the champion")
    _add_config_args(p)
    p.add_argument("--model", required=True, choices=["clip", "lipsync"], help="which model to roll back")
    p.add_argument("--to-version", help="the registry version to serve (default: the alias 'previous')")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("serve", help="serve the champion CLIP adapter and lip-sync model (KServe, HTTP + gRPC)")
    _add_config_args(p)
    p.add_argument("--http-port", type=int, help="REST port (default: serving.http_port, 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default: serving.grpc_port, 8081)")
    p.add_argument("--clip-dir", type=Path, help="serve this CLIP model folder instead of the MLflow champion")
    p.add_argument("--lipsync-dir", type=Path, help="serve this lip-sync model folder instead of the champion")
    p.add_argument(
        "--tokens-env",
        metavar="NAME",
        help="client tokens: variable NAME holds a JSON map token -> [client ids] (serving.tokens_env)",
    )
    p.add_argument("--tokens-file", metavar="FILE", help="client tokens in a JSON file (serving.tokens_file)")
    p.add_argument(
        "--admin-token-env",
        metavar="NAME",
        help="variable NAME holds the admin token: repository load/unload, /metrics (serving.admin_token_env)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="build the search index of a CLIP model over a frames Dataset")
    _add_config_args(p)
    p.add_argument("model_dir", type=Path, help="the CLIP model folder (adapter + card)")
    p.add_argument("frames_dir", type=Path, help="a frame_extraction Dataset (index.jsonl + shards)")
    p.add_argument("-o", "--output", type=Path, help="index folder (default: MODEL_DIR/index)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("feedback", help="the client's feedback on search results")
    feedback_sub = p.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    p = feedback_sub.add_parser("export", help="write a month of feedback as CSV (for review tools)")
    _add_config_args(p)
    p.add_argument("--month", required=True, type=_month, help="the month the feedback was given, YYYY-MM")
    p.add_argument("-o", "--output", type=Path, help="CSV file (default: standard output)")
    p.add_argument("--all-answers", action="store_true", help="every answer, not only the latest per query and video")
    p.set_defaults(func=cmd_feedback_export)
    p = feedback_sub.add_parser("review", help="write the month's review queue so far (CSV + HTML) to answer now")
    _add_config_args(p)
    p.add_argument("--month", required=True, type=_month, help="the month of the searches, YYYY-MM")
    p.add_argument("-o", "--output", type=Path, help="folder (default: {state_dir}/review/<client>/<month>)")
    p.set_defaults(func=cmd_feedback_review)

    p = sub.add_parser("monitor", help="accuracy over months: champion metrics, production proxies, promotions")
    _add_config_args(p)
    p.add_argument("--months", type=int, default=12, help="how many monthly runs, newest first (default 12)")
    p.add_argument("-o", "--output", type=Path, help="folder of the PNG + HTML (default: {state_dir}/monitor/<client>)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("render-manifests", help="write the Kubernetes manifests (InferenceServices, runtimes, RBAC)")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=Path, default=Path("manifests"), help="output folder")
    p.set_defaults(func=cmd_render_manifests)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clipsync` console script."""
    # MLflow 3 sends usage telemetry to mlflow.org from every process that imports it unless told not to; client
    # runs must not call out. Set here, it reaches the DAG's task processes and the local MLflow server too.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from components.common.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"clipsync: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

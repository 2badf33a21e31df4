"""The `clipsync` command line: demo data, model files, local DAG runs and the pipeline package.

Only the standard library is imported at module level so that ``clipsync --help`` and ``clipsync compile``
stay fast and need nothing beyond kfp; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

logger = logging.getLogger("clipsync.cli")


def _load(args: argparse.Namespace):
    from components.common.config import load_config

    return load_config(args.config, client_id=args.client)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="client YAML config (default: embedded defaults)")
    parser.add_argument("--client", help="client id (overrides the config's client_id; default acme)")


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Generate the demo client library into the client's (local) source folder."""
    from components.demo_data.core import DemoConfig, generate_demo_data

    config = _load(args)
    bucket = Path(config.storage.source_uri)
    if config.storage.source_uri.startswith("s3://"):
        logger.error("demo-data writes a local folder; storage.source_uri is %s", config.storage.source_uri)
        return 2
    truth_dir = Path(config.state_dir) / "demo" / config.client_id
    if (bucket / "labels" / "records.jsonl").exists() and not args.force:
        print(f"demo data already present in {bucket} (use --force to regenerate)")
        return 0
    demo = DemoConfig(seed=args.seed, as_of=args.as_of or "")
    summary = generate_demo_data(bucket, truth_dir, demo)
    print(
        f"demo data for {config.client_id}: {summary.videos} videos ({summary.broken} broken on purpose), "
        f"{len(summary.categories)} categories, timestamps up to {summary.as_of}\n"
        f"  bucket: {summary.bucket_dir}\n  ground truth (for tests): {summary.truth_path}"
    )
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
    """Run monthly_retrain locally with kfp.local's SubprocessRunner and print the summary."""
    from pipelines.local import run_local

    config = _load(args)
    report = run_local(config, as_of=args.as_of or "", window_days=args.window_days or 0)
    print(report)
    return 0


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
    p.add_argument(
        "--as-of", help="timestamps are spread over the ~3 months before this ISO date (default today)"
    )
    p.add_argument("--force", action="store_true", help="regenerate even if the client's folder has data")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("fetch-models", help="fetch the MediaPipe face model files into the cache folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("run", help="run the monthly_retrain DAG locally (kfp.local) and print a summary")
    _add_config_args(p)
    p.add_argument("--as-of", help="end of the retrain window, ISO date, exclusive (default: today UTC)")
    p.add_argument("--window-days", type=int, help="window length in days (default: the config's, 30)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="write the pipeline package YAML for the Kubeflow UI / API")
    _add_config_args(p)
    p.add_argument("-o", "--output", type=Path, default=Path("monthly_retrain.yaml"), help="output file")
    p.set_defaults(func=cmd_compile)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `clipsync` console script."""
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

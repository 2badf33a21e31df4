"""serving.kserve_adapter: our command line never collides with kserve's own parser, and the kserve internals the
adapter re-implements are the ones it was written against (a kserve upgrade that changes them fails here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from serving_assets import ROOT

from serving.kserve_adapter import KSERVE_INTERNALS_SHA256, SHARED_OPTIONS, internals_fingerprints
from serving.kserve_adapter import kserve_option_strings as kserve_options
from serving.server import build_parser


def our_options() -> set[str]:
    return {s for action in build_parser()._actions for s in action.option_strings if s.startswith("--")}


def collisions(ours: set[str], theirs: set[str], shared: frozenset[str]) -> list[str]:
    """Options kserve would take for its own: an exact name we do not mean to share, or a prefix of one of
    kserve's (kserve parses with abbreviations: ``--config`` is read as ``--configure_logging``)."""
    found = []
    for option in sorted(ours):
        if option in theirs and option not in shared:
            found.append(f"{option} is also a kserve option")
        prefixed = sorted(t for t in theirs if t != option and t.startswith(option))
        if prefixed:
            found.append(f"{option} abbreviates kserve's {', '.join(prefixed)}")
    return found


def test_no_server_option_collides_with_kserves_parser():
    theirs = kserve_options()
    assert {"--http_port", "--configure_logging", "--predictor_host"} <= theirs  # really kserve's list
    assert collisions(our_options(), theirs, SHARED_OPTIONS) == []
    assert theirs >= SHARED_OPTIONS, "a shared option is gone from kserve: check what it means now"


def test_the_collision_check_catches_what_broke_the_runtime():
    theirs = kserve_options()
    # The options of the first ServingRuntime and of `clipsync serve`: each one kserve took for its own.
    assert collisions({"--predictor", "--config", "--model"}, theirs, SHARED_OPTIONS) == [
        "--config abbreviates kserve's --configure_logging",
        "--model abbreviates kserve's --model_name",
        "--predictor abbreviates kserve's --predictor_host, --predictor_protocol, --predictor_request_retries, "
        "--predictor_request_timeout_seconds, --predictor_use_ssl",
    ]
    # A kserve upgrade that adds an option of one of our names fails the check.
    assert collisions({"--cache_dir"}, theirs | {"--cache_dir"}, SHARED_OPTIONS) == [
        "--cache_dir is also a kserve option"
    ]


def test_kserve_internals_are_the_ones_the_adapter_was_written_for():
    changed = sorted(k for k, v in internals_fingerprints().items() if KSERVE_INTERNALS_SHA256[k] != v)
    assert not changed, f"kserve changed {changed}: re-check serving/kserve_adapter.py against the new code"


def test_options_are_not_abbreviated_and_unknown_ones_fail():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--repository", "/mnt/models"])  # abbreviation of --repository_dir
    with pytest.raises(SystemExit):
        parser.parse_args(["--no_such_option", "1"])
    args = parser.parse_args(["--max_upload_mb", "3.5", "--http_port=9", "--query_log_uri", "s3://b/{client}"])
    assert (args.max_upload_mb, args.http_port, args.query_log_uri) == (3.5, 9, "s3://b/{client}")


def test_kserve_sees_an_empty_command_line_even_with_clipsync_serve_options():
    """`clipsync serve --config FILE` exited at import with `argument --configure_logging: invalid value`."""
    code = (
        "import sys; sys.argv = ['clipsync', 'serve', '--config', 'client.yaml', '--predictor=lipsync'];"
        "import serving.kserve_adapter, kserve.model_server as m; print(m.args.configure_logging, sys.argv[2])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "--config"]  # kserve's default, and our argv untouched


def test_only_the_adapter_imports_kserve():
    """Any other first import of kserve would parse that process's command line (``--config`` and all)."""
    import ast

    offenders = []
    for package in ("components", "pipelines", "serving"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "serving" / "kserve_adapter.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                if any(n == "kserve" or n.startswith("kserve.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []

"""How long one MLflow call takes to fail when the tracking server is gone, with clipsync's limits vs MLflow's.

Starts a real ``mlflow server`` on 127.0.0.1, opens a run, then times one ``log_metric`` call:

1. server killed (connections refused): with clipsync's HTTP limits (``tracking.HTTP_LIMITS``) and, with
   ``--baseline``, with MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout; about 4 minutes);
2. server frozen with SIGSTOP (connections accepted, never answered): clipsync's limits only (MLflow's
   defaults would take about 20 minutes: 8 attempts of 120 s plus the waits).

Prints each time in seconds next to ``tracking.TRACKING_CALL_BOUND_S`` and, with ``--baseline``, the ratio
baseline / clipsync. ``--repeats`` runs of each give medians.

Run: ``.venv/bin/python benchmarks/tracking_outage.py [--repeats 3] [--baseline]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.common import tracking

MLFLOW_DEFAULTS = {  # mlflow.environment_variables in 3.17
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
}


def _server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{root}/m.db"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("mlflow server did not start")


def _failing_call(limits: dict[str, str], freeze: bool) -> float:
    """Seconds until one log_metric call fails once the server is killed (or frozen)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _server(Path(tmp))
        try:
            client = mlflow.MlflowClient(tracking_uri=url)
            run_id = client.create_run(client.create_experiment("outage")).info.run_id
            os.killpg(proc.pid, signal.SIGSTOP if freeze else signal.SIGKILL)
            os.environ.update(limits)
            started = time.monotonic()
            try:
                client.log_metric(run_id, "loss", 1.0)
            except Exception as exc:
                elapsed = time.monotonic() - started
                print(f"    failed after {elapsed:.1f} s: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                return elapsed
            raise SystemExit("the call succeeded against a dead server")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a frozen process dies of SIGKILL too
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also time MLflow's own defaults (about 4 min each)")
    args = parser.parse_args()
    print(f"bound per call with clipsync's limits: {tracking.TRACKING_CALL_BOUND_S} s ({tracking.HTTP_LIMITS})")
    cases = [
        ("killed, clipsync limits", tracking.HTTP_LIMITS, False),
        ("frozen, clipsync limits", tracking.HTTP_LIMITS, True),
    ]
    if args.baseline:
        cases.append(("killed, MLflow defaults", MLFLOW_DEFAULTS, False))
    medians = {}
    for name, limits, freeze in cases:
        print(f"{name}:", flush=True)
        medians[name] = statistics.median(_failing_call(limits, freeze) for _ in range(args.repeats))
        print(f"  median {medians[name]:.1f} s", flush=True)
    if args.baseline:
        ratio = medians["killed, MLflow defaults"] / medians["killed, clipsync limits"]
        print(f"killed server: MLflow defaults take {ratio:.1f}x as long as clipsync's limits to fail")


if __name__ == "__main__":
    main()

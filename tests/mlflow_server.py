"""A real `mlflow server` on 127.0.0.1 for tests (sqlite backend, proxied artifacts), stopped by PID."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipelines.local import stop_process_group as stop

MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, ready_timeout_s: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server in ``root`` (its own process group) and stop the whole group on exit.

    Yields:
        The server's URL and its process (a test may kill it earlier).

    Raises:
        RuntimeError: If the server is not ready in time (with its stderr tail).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    stderr_path = root / "server.err"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'm.db'}",
        "--artifacts-destination",
        str(root / "art"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(root / "server.out", "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = stderr_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server not ready (exit code {proc.poll()}); stderr tail:\n{tail}")
            time.sleep(0.3)
        yield url, proc
    finally:
        stop(proc)

"""Running monthly_retrain on one machine with kfp.local (the embedded default).

kfp.local starts a fresh Python process for every task, and each one opens its own MLflow client. With the default
``sqlite:///`` tracking URI that client imports MLflow's SQLAlchemy store (SQLAlchemy's ORM, alembic, MLflow's table
models) in every task, 1.2-1.7 s of CPU a task, more than the work of most tasks on a small library
(benchmarks/dag_overhead.py). :func:`run_local` therefore starts one real ``mlflow server`` on 127.0.0.1 over that
same sqlite file for the length of the run and hands the tasks its ``http://`` URI: a task's client is then MLflow's
REST store, as in a cluster, and the database, the artifacts (the experiment's ``artifact_location``, written by the
tasks directly) and what the run records are the same. If the server is not ready in time the tasks use the sqlite
file directly, as before.

Every task also imports MLflow itself, kfp's executor and often the torch stack before its stage starts, about 2 s
of CPU a task: :func:`run_local` starts :mod:`pipelines.warm_start`'s preloader, which imports them once, and the
tasks fork from it (``run_local(..., warm=False)``: every task a fresh process, as in a cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from components.config import ClientConfig

logger = logging.getLogger("clipsync.local")

#: Where kfp.local writes the exit handler's summary inside a run's folder.
REPORT = Path("finish-run") / "report"


#: A task's executor in the compiled package, and the same through pipelines.warm_start.
EXECUTOR = "python3 -m kfp.dsl.executor_main"
WARM_EXECUTOR = "python3 -m pipelines.warm_start kfp.dsl.executor_main"
#: How long run_local waits for the preloader's imports before the tasks start cold.
PRELOADER_READY_S = 120.0
#: How long run_local waits for its MLflow server to answer /health before the tasks use the sqlite file directly.
SERVER_READY_S = 120.0


class RunFailedError(RuntimeError):
    """A local DAG run failed; ``str(exc)`` is its summary (what failed, why, what was still promoted)."""


@functools.cache
def local_pipeline():
    """monthly_retrain as kfp.local runs it: the compiled package without KFP's task retries, each task's
    executor started through :mod:`pipelines.warm_start` (it forks from the preloader when :func:`run_local`
    started one, and runs as before otherwise).

    kfp.local 2.17 honours ``set_retry``: a task that fails would run again after 30, 60 and 120 s. On one
    machine that only delays a failure by minutes, since each call to the store or to MLflow already retries
    its transient faults within a bounded time; in a cluster the retries stay (a pod may be evicted).

    Compiled once per process: the package does not depend on the config (that travels as a parameter), and
    compiling is not free in a process that has imported much: kfp calls ``inspect.stack()`` in every resource
    setter, whose cost grows with the number of loaded modules (15-30 s in the test process after torch and
    transformers, 116 calls; 3 s in a fresh process, imports included).
    """
    import yaml
    from kfp import components

    from pipelines.package import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        docs = list(yaml.safe_load_all(compile_pipeline(Path(tmp) / "monthly_retrain.yaml").read_text()))
    spec = docs[0]
    through_warm_start(spec)
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        for task in dag["tasks"].values():
            task.pop("retryPolicy", None)
    return components.load_component_from_text(yaml.safe_dump_all(docs))


def through_warm_start(spec: dict) -> None:
    """Start every executor of a compiled pipeline spec through :mod:`pipelines.warm_start` (in place)."""
    for executor in spec["deploymentSpec"]["executors"].values():
        command = executor["container"]["command"]
        executor["container"]["command"] = [part.replace(EXECUTOR, WARM_EXECUTOR) for part in command]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class TrackingServer:
    """A local ``mlflow server`` started by :func:`tracking_server`."""

    proc: subprocess.Popen
    url: str
    log: Path

    def task_config(self, config: ClientConfig, ready_s: float = SERVER_READY_S) -> ClientConfig:
        """``config`` with the server's URI once it answers ``/health`` (at most ``ready_s``), else ``config``."""
        deadline = time.monotonic() + ready_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                if reply.status == 200:
                    logger.info("MLflow for the tasks: %s over %s", self.url, config.tracking.tracking_uri)
                    return dataclasses.replace(
                        config, tracking=dataclasses.replace(config.tracking, tracking_uri=self.url)
                    )
            time.sleep(0.2)
        self.stop()  # so that it does not open the database beside the tasks later
        tail = self.log.read_text(errors="replace")[-2000:]
        logger.warning(
            "mlflow server not ready (exit code %s); the tasks open %s themselves; its output:\n%s",
            self.proc.poll(),
            config.tracking.tracking_uri,
            tail,
        )
        return config

    def stop(self) -> None:
        """Stop the server and its uvicorn worker, by PID."""
        stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` (TERM, KILL after 15 s) and every process of the group it leads (started with
    ``start_new_session``): an ``mlflow server`` leaves its uvicorn worker behind otherwise."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def tracking_server(config: ClientConfig) -> Iterator[TrackingServer | None]:
    """Start ``mlflow server`` over the config's sqlite file on a free loopback port, stop it (by PID) on exit.

    Yields:
        The server (not yet waited for), or ``None`` when the config does not track to a sqlite file.
    """
    tracking = config.tracking
    if not tracking.tracking_uri.startswith("sqlite:") or not tracking.artifact_location:
        yield None
        return
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_REGISTRY_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking.tracking_uri,
        "--default-artifact-root",
        tracking.artifact_location,
        "--no-serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with tempfile.TemporaryDirectory(prefix="clipsync-mlflow-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = TrackingServer(proc, f"http://127.0.0.1:{port}", log)
        try:
            yield server
        finally:
            server.stop()


@dataclasses.dataclass(frozen=True)
class Preloader:
    """:mod:`pipelines.warm_start`'s preloader, started by :func:`preloader`."""

    proc: subprocess.Popen
    path: str

    def activate(self, ready_s: float = PRELOADER_READY_S) -> dict:
        """Wait for the preloader's imports (at most ``ready_s``) and name it to the tasks (``os.environ``); when
        it is not ready the tasks start cold, with a warning, and it is stopped.

        Returns:
            Its status line: ``ready``, ``reason`` when not, ``import_s``, ``native_threads``, ``missing``
            (modules it could not import).
        """
        from pipelines.warm_start import SOCKET_ENV

        readable, _, _ = select.select([self.proc.stdout], [], [], ready_s)
        line = self.proc.stdout.readline() if readable else b""
        status = json.loads(line) if line else {"ready": False, "reason": f"no status in {ready_s:.0f} s"}
        if status["ready"]:
            logger.info("the tasks fork from a preloader (its imports took %.1f s)", status["import_s"])
            os.environ[SOCKET_ENV] = self.path
        else:
            logger.warning("the tasks start cold: %s (preloader exit code %s)", status["reason"], self.proc.poll())
            stop_process_group(self.proc)
        return status


@contextlib.contextmanager
def preloader() -> Iterator[Preloader]:
    """Start :mod:`pipelines.warm_start`'s preloader; on exit stop it with its process group (by PID) and stop
    naming it to the tasks.

    It starts with this process's environment as the tasks will inherit it (``_KFP_RUNTIME``, which kfp's imports
    read, included): set the tasks' environment first.
    """
    from pipelines.warm_start import SOCKET_ENV

    with tempfile.TemporaryDirectory(prefix="clipsync-warm-") as tmp:  # mode 0700: only this user reaches it
        path = str(Path(tmp) / "preloader.sock")
        # Through env(1), as the tasks get theirs through sh: the process's C-level environment can hold more than
        # os.environ (GNU readline, imported by pytest, sets COLUMNS and LINES there).
        command = ["env", "_KFP_RUNTIME=true", f"{SOCKET_ENV}={path}", sys.executable, "-m", "pipelines.warm_start"]
        proc = subprocess.Popen([*command, "--serve", path], stdout=subprocess.PIPE, start_new_session=True)
        try:
            yield Preloader(proc, path)
        finally:
            if os.environ.get(SOCKET_ENV) == path:
                del os.environ[SOCKET_ENV]
            stop_process_group(proc)
            proc.stdout.close()


@contextlib.contextmanager
def _driver_env() -> Iterator[None]:
    """Name this process to the tasks as the run's driver: the run lease holds it, so a run killed with this
    process is taken over at once."""
    from components.common.lease import DRIVER_ENV

    previous = os.environ.get(DRIVER_ENV)
    os.environ[DRIVER_ENV] = f"{socket.gethostname()}:{os.getpid()}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DRIVER_ENV, None)
        else:
            os.environ[DRIVER_ENV] = previous


def run_local(
    config: ClientConfig, as_of: str = "", window_days: int = 0, server: bool = True, warm: bool = True
) -> str:
    """Execute the whole DAG locally, each task in a subprocess of this Python environment.

    Args:
        config: The client's configuration (paths already resolved).
        as_of: End of the window (ISO date); empty for the config's value, else today (UTC).
        window_days: Window length; 0 keeps the config's value.
        server: With a sqlite tracking URI, serve it to the tasks with a local ``mlflow server`` (see the module
            docstring); off: every task opens the sqlite file itself (benchmarks/dag_overhead.py compares both).

    Returns:
        The run summary (Markdown) followed by where the pipeline's outputs are.

    Raises:
        RunFailedError: A task failed; the message is the summary the exit handler wrote.
    """
    with (
        _driver_env(),
        preloader() if warm else contextlib.nullcontext() as warm_start,
        tracking_server(config) if server else contextlib.nullcontext() as served,
    ):
        pipeline = local_pipeline()  # compiled while the preloader imports and the server starts
        tasks_config = served.task_config(config) if served is not None else config
        if warm_start is not None:
            warm_start.activate()
        return _run(pipeline, config, tasks_config, as_of, window_days)


def _run(pipeline, config: ClientConfig, tasks_config: ClientConfig, as_of: str, window_days: int) -> str:
    from kfp import local

    from pipelines.monthly_retrain import PIPELINE_NAME

    pipeline_root = Path(config.pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(pipeline_root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    try:
        # The config travels fully resolved (JSON is valid YAML) so every task sees the same absolute paths.
        task = pipeline(
            client_id=config.client_id, config_yaml=tasks_config.to_json(), as_of=as_of, window_days=window_days
        )
    except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        new = sorted(pipeline_root / name for name in set(os.listdir(pipeline_root)) - before)
        reports = [run / REPORT for run in new if run.name.startswith(PIPELINE_NAME) and (run / REPORT).is_file()]
        title = (f"# monthly_retrain: {config.client_id},", f"# monthly_retrain: {config.client_id}:")
        ours = [r for r in reports if r.read_text().startswith(title)]  # not another client's run of the moment
        if not ours:
            raise RunFailedError(f"{exc} (the exit handler wrote no summary)") from exc
        raise RunFailedError(ours[-1].read_text() + f"\nPipeline outputs: {ours[-1].parents[1]}\n") from None
    report = Path(task.output.path)
    run_dir = report.parents[1]  # {pipeline_root}/{pipeline}-{timestamp}/finish-run/report
    return report.read_text() + f"\nPipeline outputs: {run_dir}\n"

"""Warm task start (pipelines/warm_start.py): tasks forked from a real preloader, through the client kfp.local runs.

One preloader with the real :data:`PRELOAD` (torch, transformers, mlflow...) serves the module's tests; each test
runs the client as kfp.local's shell does (``python -m pipelines.warm_start MODULE ARGS`` with ``_KFP_RUNTIME``
set) on a small module written into the working directory. The whole DAG runs through it in
tests/test_pipeline_local.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.local import WARM_EXECUTOR, preloader, through_warm_start
from pipelines.warm_start import SOCKET_ENV, environment_difference

PROBE = """
import json, os, sys
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(), "stdin": sys.stdin.read(),
                  "warm": "torch" in sys.modules, "kfp_runtime": os.environ.get("_KFP_RUNTIME")}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


@pytest.fixture(scope="module")
def warm() -> Iterator[dict[str, str]]:
    """A ready preloader; yields the environment a task must have to fork from it: the one it started with (pytest
    changes PYTEST_CURRENT_TEST from test to test) and ``_KFP_RUNTIME``, as kfp's task command sets it."""
    with preloader() as started:
        status = started.activate()
        assert status["ready"], status
        # The process's C-level environment, which children inherit: it can hold more than os.environ (pytest's
        # readline sets COLUMNS and LINES there).
        inherited = subprocess.run(["env", "-0"], capture_output=True, check=True).stdout.decode()
        yield dict(item.split("=", 1) for item in inherited.split("\0") if item) | {"_KFP_RUNTIME": "true"}
    assert started.proc.poll() is not None
    assert SOCKET_ENV not in os.environ


def _task(cwd: Path, module: str, source: str, *args: str, env: dict, **kwargs) -> subprocess.Popen:
    (cwd / f"{module}.py").write_text(textwrap.dedent(source))
    command = [sys.executable, "-m", "pipelines.warm_start", module, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, text=True, **kwargs)


def _run(cwd: Path, module: str, source: str, *args: str, env: dict, stdin: str = ""):
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = _task(cwd, module, source, *args, env=env, **pipes)
    out, err = proc.communicate(stdin, timeout=60)
    return proc, out, err


def test_a_task_runs_forked_with_the_clients_arguments_directory_streams_and_exit_code(warm, tmp_path: Path):
    proc, out, err = _run(tmp_path, "probe", PROBE, "a b", "--x", env=warm, stdin="hello")
    assert proc.returncode == 0, err
    task = json.loads(out)
    assert task["warm"] and task["pid"] != proc.pid
    assert task["argv"] == ["a b", "--x"] and task["cwd"] == str(tmp_path) and task["stdin"] == "hello"
    assert task["kfp_runtime"] == "true"
    assert err == "to stderr\n"


def test_a_task_whose_environment_differs_starts_cold_in_the_clients_process(warm, tmp_path: Path):
    # A module may read a variable at import time: the preloaded ones did not see this one.
    proc, out, err = _run(tmp_path, "probe", PROBE, env={**warm, "PROBE_EXIT": "3"})
    assert proc.returncode == 3
    cold = json.loads(out)
    assert not cold["warm"] and cold["pid"] == proc.pid  # exec'd in the client's own process
    assert "starting cold (the task's environment differs in PROBE_EXIT)" in err


def test_an_exit_code_an_exception_and_a_signal_end_the_task_as_a_fresh_process_would(warm, tmp_path: Path):
    proc, _, err = _run(tmp_path, "exits", "import sys; sys.exit(7)", env=warm)
    assert proc.returncode == 7, err
    proc, _, err = _run(tmp_path, "raises", "raise ValueError('boom')", env=warm)
    assert proc.returncode == 1 and "Traceback" in err and "ValueError: boom" in err
    proc, _, err = _run(tmp_path, "killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", env=warm)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "killed by SIGKILL" in err


def test_sigterm_to_the_client_reaches_the_task(warm, tmp_path: Path):
    source = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("got TERM", flush=True), sys.exit(5)))
        print("waiting", flush=True)
        time.sleep(60)
    """
    proc = _task(tmp_path, "waits", source, env=warm, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "waiting\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 5
    assert proc.stdout.read() == "got TERM\n"


def test_a_signal_before_the_tasks_pid_is_known_still_reaches_the_task(tmp_path: Path):
    """The task may run (and print) before its PID reaches the client: a SIGTERM in between is held, then passed on.
    A socket of the test's stands in for the preloader, to hold the client in that window."""
    from pipelines.warm_start import _receive, _send

    path = str(tmp_path / "preloader.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    target = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(5)); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    command = [sys.executable, "-m", "pipelines.warm_start", "never_imported"]
    client = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], env={**os.environ, SOCKET_ENV: path})
    try:
        conn, _ = listener.accept()
        request, fds = _receive(conn, max_fds=3)
        for fd in fds:
            os.close(fd)
        assert request["argv"] == ["never_imported"]
        assert target.stdout.readline() == "ready\n"
        client.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert client.poll() is None  # held, not fatal
        _send(conn, {"pid": target.pid})
        assert target.wait(timeout=30) == 5  # passed on once the PID came
        _send(conn, {"exit": 5})
        assert client.wait(timeout=30) == 5
    finally:
        for proc in (client, target):
            proc.kill()
            proc.wait()
        listener.close()


def test_a_forked_task_uses_blas_openmp_and_arrow_threads(warm, tmp_path: Path):
    # The preloader has idle native threads (numpy's and scipy's OpenBLAS pools, pyarrow's jemalloc): a fork must
    # not leave a task hanging on them, nor on torch's OpenMP pool.
    source = """
        import numpy, pyarrow, torch
        torch.set_num_threads(2)
        a = numpy.random.default_rng(0).random((300, 300))
        assert abs((a @ numpy.linalg.inv(a) - numpy.eye(300)).max()) < 1e-6
        t = torch.ones(400, 400)
        assert float((t @ t)[0, 0]) == 400.0
        assert pyarrow.array(range(100000)).sum().as_py() == 4999950000
        print("ok")
    """
    proc, out, err = _run(tmp_path, "threads", source, env=warm)
    assert proc.returncode == 0 and out == "ok\n", err


def test_without_a_preloader_the_task_starts_cold_and_quietly(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    proc, out, err = _run(tmp_path, "probe", PROBE, "x", env={**env, "_KFP_RUNTIME": "true"})
    assert proc.returncode == 0 and err == "to stderr\n"
    assert json.loads(out)["pid"] == proc.pid


def test_a_preloader_not_ready_in_time_is_stopped_and_not_named_to_the_tasks():
    with preloader() as started:
        status = started.activate(ready_s=0)
        assert not status["ready"] and "no status in 0 s" in status["reason"]
        assert started.proc.poll() is not None
        assert os.environ.get(SOCKET_ENV) != started.path


def test_only_the_shells_own_variables_may_differ():
    assert environment_difference({"A": "1", "PWD": "/x"}, {"A": "1", "PWD": "/y", "SHLVL": "2"}) == ""
    assert "differs in A, B" in environment_difference({"A": "1"}, {"A": "2", "B": "3"})


def test_kfp_local_runs_a_rewritten_package_forked_from_the_preloader(warm, tmp_path: Path, monkeypatch):
    import yaml
    from kfp import compiler, components, dsl, local

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def preloaded(module: str) -> bool:
        import sys

        return module in sys.modules

    @dsl.pipeline(name="warm-check")
    def warm_check() -> bool:
        return preloaded(module="torch").output

    compiler.Compiler().compile(warm_check, str(tmp_path / "package.yaml"))
    spec = yaml.safe_load((tmp_path / "package.yaml").read_text())
    through_warm_start(spec)
    commands = [" ".join(e["container"]["command"]) for e in spec["deploymentSpec"]["executors"].values()]
    assert commands and all(WARM_EXECUTOR in c for c in commands)

    for key in os.environ.keys() - warm.keys():  # kfp's tasks inherit os.environ: make it the preloader's
        monkeypatch.delenv(key)
    for key in warm.keys() - {"_KFP_RUNTIME"}:
        monkeypatch.setenv(key, warm[key])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = components.load_component_from_text(yaml.safe_dump(spec))()
    assert task.output is True  # torch was there before the task imported anything: it forked from the preloader

"""Warm task start for kfp.local: every task process is forked from one that has already imported the heavy modules.

kfp.local starts a fresh Python process for every task of the DAG, and each one imports MLflow (with pandas and
pyarrow, about 2 s of CPU here), kfp's executor and, for the training tasks, the torch stack before its stage does
any work (benchmarks/dag_overhead.py). :func:`pipelines.local.run_local` therefore starts one *preloader*
(``python -m pipelines.warm_start --serve SOCKET``) that imports :data:`PRELOAD` once and waits on a Unix socket, and
the local package (:func:`pipelines.local.local_pipeline`) runs each task's ``python3 -m kfp.dsl.executor_main ...``
as ``python3 -m pipelines.warm_start kfp.dsl.executor_main ...``: a small client that hands the preloader its
arguments, environment, working directory and standard streams, then exits with the task's exit code. The
preloader forks a copy of itself for the task (copy-on-write: the imported modules are shared), and the copy runs
the module as ``python -m`` would, to a normal interpreter exit (atexit handlers, non-daemon threads, flushed
streams). A SIGINT, SIGTERM or SIGHUP sent to the client is passed on to the task.

A task starts cold, exactly as without this module (the client ``exec``s the interpreter with the same arguments),
when no preloader is named (:data:`SOCKET_ENV`) or it does not answer, or when the task's environment differs from
the preloader's in anything but :data:`IGNORED_ENV`: modules such as huggingface_hub read their settings at import
time, so a preloaded module must have seen the task's own environment.

The preloader serves no task (each one starts cold, with the reason on its stderr) when importing :data:`PRELOAD`
left a Python thread besides the main one running: a fork copies only the forking thread, and a lock another
thread held stays locked in the copy. The native threads these imports start (measured: the OpenBLAS thread pools
of numpy and scipy, pyarrow's jemalloc background thread, all idle) are fork-safe by design (they register
``pthread_atfork`` handlers; ``multiprocessing``'s fork start method and torch's DataLoader workers rely on it),
and torch's OpenMP pool does not exist yet: no preloaded module runs a parallel operation.

What forked tasks share that fresh processes would not: the hash seed and numpy's global random state (the stages
seed their own generators; ``random`` reseeds itself after a fork), and the environment variables the imports set
(mlflow's telemetry session, torch inductor's cache folder), which each task gets as a fresh process would.

Local runs only: in a cluster every task is a pod of its own. The module imports only the standard library, so that
the client starts in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

#: Environment variable naming the preloader's socket; without it every task starts cold.
SOCKET_ENV = "CLIPSYNC_WARM_SOCKET"
#: What the preloader imports once for every task: what most tasks import before their stage does any work.
PRELOAD = (
    "kfp.dsl.executor_main",
    "mlflow",
    "components.config",
    "components.common.stage",
    "components.common.tracking",
    "torch",
    "safetensors.torch",
    "transformers",
    "peft",
)
#: Variables a shell sets by itself; a difference in them does not make a task start cold.
IGNORED_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
#: Signals the client passes on to its task.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LENGTH = struct.Struct("!I")
_MAX_MESSAGE = 64 << 20


@dataclass(frozen=True)
class TaskRequest:
    """What a client asks the preloader to run: ``python -m argv[0] argv[1:]`` in ``cwd`` with ``env``."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    fds: list[int]


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    frame = _LENGTH.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        if sent < len(frame):  # not an empty send: the preloader may already have answered and closed
            sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def _receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One message and the descriptors sent with it; ``(None, [])`` when the peer closed first."""
    fds: list[int] = []
    data = b""
    while len(data) < _LENGTH.size:
        if max_fds and not fds:
            chunk, got, _flags, _addr = socket.recv_fds(sock, _LENGTH.size - len(data), max_fds)
            fds.extend(got)
        else:
            chunk = sock.recv(_LENGTH.size - len(data))
        if not chunk:
            return None, fds
        data += chunk
    (length,) = _LENGTH.unpack(data)
    if length > _MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes")
    body = bytearray()
    while len(body) < length:
        chunk = sock.recv(min(length - len(body), 1 << 20))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


def environment_difference(preloaded: dict[str, str], task: dict[str, str]) -> str:
    """Why a task with environment ``task`` must not run in a process that imported with ``preloaded``; ``""``
    when it may (they differ in :data:`IGNORED_ENV` at most)."""
    names = sorted(
        k for k in preloaded.keys() | task.keys() if preloaded.get(k) != task.get(k) and k not in IGNORED_ENV
    )
    return f"the task's environment differs in {', '.join(names)}" if names else ""


def _cold(argv: list[str], why: str = "") -> NoReturn:
    if why:
        print(f"clipsync warm start: starting cold ({why})", file=sys.stderr, flush=True)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # the mask survives exec; one held arrives now
    os.execv(sys.executable, [sys.executable, "-m", *argv])


def _standard_fds() -> list[int]:
    """Descriptors 0, 1 and 2, with /dev/null in place of a closed one."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def client(argv: list[str]) -> NoReturn:
    """Run ``python -m argv[0] argv[1:]`` in the preloader named by :data:`SOCKET_ENV` and exit as the task did;
    start it cold in this process when there is no preloader or it declines."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        _cold(argv)
    # Held until the task's PID is known, then passed on: the task runs (and may print) before that reply arrives,
    # and a signal in between would end this client alone and leave the task running.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}, _standard_fds())
        reply, _ = _receive(sock)
    except OSError as exc:
        sock.close()
        _cold(argv, f"the preloader at {path} did not answer: {exc}")
    if reply is None or "cold" in reply:
        sock.close()
        _cold(argv, reply["cold"] if reply else "the preloader closed the connection")
    pid = reply["pid"]

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    reply, _ = _receive(sock)
    if reply is None or "exit" not in reply:  # the waiter failed after the fork: the task ran, do not run it again
        why = reply.get("cold", reply) if reply else "the preloader stopped"
        print(f"clipsync warm start: lost task process {pid} ({why})", file=sys.stderr, flush=True)
        sys.exit(1)
    code = reply["exit"]
    if code < 0:
        print(f"clipsync warm start: task process {pid} killed by {signal.Signals(-code).name}", file=sys.stderr)
        sys.exit(128 - code)
    sys.exit(code)


def _native_threads() -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/task"))
    return 0


def serve(path: str) -> TaskRequest:
    """Import :data:`PRELOAD`, listen on ``path`` and fork a task process per request.

    Runs until the process is stopped; returns only in a forked task process, with what it is to run. A waiter
    process between the preloader and each task collects the task's exit status and sends it to the client.
    """
    started = time.monotonic()
    status_out = os.fdopen(os.dup(1), "w")  # the status line's pipe; whatever the imports print goes to stderr
    os.dup2(2, 1)
    preloaded_env = dict(os.environ)  # what the imports see
    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the task imports it itself if it needs it
            missing.append(f"{name} ({exc})")
    gc.freeze()  # the tasks' collections then skip (and do not copy) what was imported here
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    refuse = f"Python threads {threads} in the preloader after its imports" if threads else ""
    # Set by the imports themselves (mlflow's telemetry session, torch inductor's cache folder): a task gets them as
    # a cold process would.
    set_by_imports = {k: v for k, v in os.environ.items() if preloaded_env.get(k) != v}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    status = {"ready": not refuse, "reason": refuse, "import_s": round(time.monotonic() - started, 2)}
    status |= {"native_threads": _native_threads(), "missing": missing}
    with status_out:  # read by pipelines.local.Preloader.activate
        print(json.dumps(status), file=status_out)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the waiters
    while True:
        conn, _ = listener.accept()
        request = _read_request(conn, refuse, preloaded_env, set_by_imports)
        if request is None:
            continue
        sys.stderr.flush()
        try:
            forked = os.fork()
        except OSError as exc:
            _decline(conn, request.fds, f"fork failed: {exc}")
            continue
        if forked == 0:
            listener.close()
            _become_task(conn, request.fds)  # returns in the task process only
            return request
        _decline(conn, request.fds, "")


def _decline(conn: socket.socket, fds: list[int], why: str) -> None:
    """Answer ``cold`` (when ``why``) and close the preloader's copies of the connection and the streams."""
    with contextlib.suppress(OSError):
        if why:
            _send(conn, {"cold": why})
    for fd in fds:
        os.close(fd)
    conn.close()


def _read_request(
    conn: socket.socket, refuse: str, preloaded_env: dict[str, str], set_by_imports: dict[str, str]
) -> TaskRequest | None:
    """The request on ``conn`` (its environment with what the imports set added), or ``None`` once it has been
    declined (the client then starts the task cold)."""
    fds: list[int] = []
    try:
        message, fds = _receive(conn, max_fds=3)
        if message is None:
            why = "no request"
        else:
            why = refuse or environment_difference(preloaded_env, message["env"])
            if not why and len(fds) != 3:
                why = f"{len(fds)} standard streams sent, not 3"
    except (OSError, ValueError, KeyError) as exc:
        why = f"unreadable request: {exc!r}"
    if why:
        _decline(conn, fds, why)
        return None
    return TaskRequest(message["argv"], message["env"] | set_by_imports, message["cwd"], fds)


def _become_task(conn: socket.socket, fds: list[int]) -> None:
    """In a fresh waiter: fork the task process and return there; the waiter reports the task's PID and exit
    status to the client, then exits (it never returns to the preloader's loop)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        pid = os.fork()
        if pid == 0:
            conn.close()
            return
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            _send(conn, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
    except BaseException as exc:  # the waiter must not fall back into the preloader's loop
        with contextlib.suppress(OSError):
            _send(conn, {"cold": f"the waiter failed: {exc!r}"})
    os._exit(0)


def run_task(request: TaskRequest) -> None:
    """In a forked task process: take the client's streams, directory and environment, run the module."""
    for target, fd in enumerate(request.fds):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    module, *args = request.argv
    sys.argv = [module, *args]
    sys.path[0] = request.cwd  # as ``python -m`` sets it
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main(argv: list[str]) -> None:
    """``--serve SOCKET``: be the preloader; ``MODULE [ARG...]``: run ``python -m MODULE ARG...`` through it."""
    if not argv:
        sys.exit("usage: python -m pipelines.warm_start (--serve SOCKET | MODULE [ARG...])")
    if argv[0] == "--serve":
        run_task(serve(argv[1]))
    else:
        client(argv)


if __name__ == "__main__":
    main(sys.argv[1:])

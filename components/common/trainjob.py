"""A fine-tune beyond one process: a Kubeflow Trainer v2 ``TrainJob`` (or, the embedded default, its command here).

The stage's task (the kfp pod) hands the training to ranks it does not run itself:

1. it copies its input Datasets to the artifacts store under ``trainjobs/<stage>/<job>/inputs/<name>/``
   (:func:`stage_inputs`);
2. it starts the TrainJob's command, ``torchrun --nproc_per_node N -m pipelines.trainjob_entry --stage ...``
   (:func:`trainjob_command`): with ``distributed.backend: kubernetes`` as a ``TrainJob`` created through the
   Kubeflow SDK's ``TrainerClient`` (:func:`submit_trainjob`), with ``torchrun`` as a subprocess on this machine
   (:func:`run_torchrun`), in both cases with the ``PET_*`` variables Kubeflow Trainer's torch plugin sets on
   each node (:func:`torch_env`);
3. it waits, bounded by ``distributed.timeout_s``, logging status changes and the ranks' log lines as they come
   (:func:`wait_for_trainjob`);
4. each rank runs the stage's core on the fetched inputs (:func:`fetch_inputs`); rank 0 writes the Model
   folder and the stage report to ``trainjobs/<stage>/<job>/outputs/`` (:func:`publish_outputs`), and the task
   copies them into its Model artifact (:func:`collect_outputs`).

An unreachable Kubernetes API is an infrastructure fault (:class:`~components.common.faults.TransientError`,
retried with bounded backoff, then the stage fails with the cause); a TrainJob that fails is not retried: its
last log lines are the stage's error (:class:`TrainJobFailed`). The Kubeflow SDK is imported inside functions.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from components.common.config import DistributedConfig
from components.common.faults import RetryPolicy, TransientError, is_infrastructure_error, retry_call
from components.common.images import TRAIN_IMAGE

if TYPE_CHECKING:
    from components.common.stage import StageContext
    from components.common.storage import ObjectStore

logger = logging.getLogger("clipsync.trainjob")

T = TypeVar("T")

#: The module every rank runs (``python -m``); it calls the stage's core.
ENTRY_MODULE = "pipelines.trainjob_entry"
#: Where a TrainJob's inputs and outputs live in the artifacts store.
PREFIX = "trainjobs"
#: The trainer container's name in a TrainingRuntime (the SDK reads the ``node`` step's logs).
NODE_CONTAINER = "node"
#: Log lines of a failed TrainJob quoted in the stage's error.
LAST_LINES = 40
STATUS_COMPLETE, STATUS_FAILED = "Complete", "Failed"
#: How long an unreachable Kubernetes API is retried, per call, before the stage fails with the cause.
API_RETRY = RetryPolicy(attempts=5, first_wait_s=2.0, max_wait_s=30.0, deadline_s=120.0)


class TrainJobFailed(RuntimeError):
    """The TrainJob ran and failed (or did not finish in time); the message ends with its last log lines."""


def job_prefix(stage: str, name: str) -> str:
    """The artifacts-store folder of one TrainJob: ``trainjobs/<stage>/<name>``."""
    return f"{PREFIX}/{stage}/{name}"


def new_job_name(stage: str) -> str:
    """A TrainJob name (DNS-1035, short enough for the JobSet's pod names): ``clip-<10 hex>``."""
    return f"{stage.removeprefix('finetune_')}-{uuid.uuid4().hex[:10]}"


def trainjob_command(dist: DistributedConfig) -> list[str]:
    """The trainer container's command: torchrun with one process per GPU; nodes and rank come from ``PET_*``."""
    return ["torchrun", f"--nproc_per_node={dist.procs_per_node}", "-m", ENTRY_MODULE]


def trainjob_args(stage: str, name: str, config_json: str, parent_run_id: str, inputs: Iterable[str]) -> list[str]:
    """The entry module's arguments (see :mod:`pipelines.trainjob_entry`)."""
    args = ["--stage", stage, "--prefix", job_prefix(stage, name), "--parent-run-id", parent_run_id]
    for input_name in inputs:
        args += ["--input", input_name]
    return [*args, "--config", config_json]


def torch_env(nodes: int, procs_per_node: int, node_rank: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables Kubeflow Trainer's torch plugin sets on each node (torchrun reads ``PET_<FLAG>``)."""
    return {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(procs_per_node),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


def free_port() -> int:
    """A free TCP port on loopback (for torchrun's rendezvous on this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_training_runtime(namespace: str, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
    """clipsync's ``TrainingRuntime`` (rendered into ``manifests/base``): Kubeflow Trainer's torch plugin
    (``PET_*`` on each node) and one ``node`` container from the train image running the entry module.

    A TrainJob overrides the command (with its ``--nproc_per_node``), sets the args and may set the image, the
    number of nodes and the resources per node. It is namespaced (the namespace of the MinIO Secret and of the
    Role that lets the pipeline's tasks create TrainJobs), named as ``distributed.runtime``'s default.

    Args:
        namespace: Where the TrainJobs are created (``distributed.namespace``).
        image: The train image.
        env: The node container's variables (the MinIO credentials, as ``secretKeyRef`` s).
    """
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {
            "name": DistributedConfig().runtime,
            "namespace": namespace,
            "labels": {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/part-of": "clipsync"},
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": NODE_CONTAINER,
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {
                                    "template": {
                                        "spec": {
                                            "containers": [
                                                {
                                                    "name": NODE_CONTAINER,
                                                    "image": image,
                                                    "command": trainjob_command(DistributedConfig()),
                                                    "env": env,
                                                }
                                            ]
                                        }
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


# ----------------------------------------------------------------------------- inputs and outputs in the store


def _put_tree(store: ObjectStore, src: Path, prefix: str) -> int:
    count = 0
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        store.put_file(f"{prefix}/{path.relative_to(src).as_posix()}", path)
        count += 1
    return count


def _get_tree(store: ObjectStore, prefix: str, dest: Path) -> int:
    count = 0
    for key in list(store.list_keys(prefix + "/")):
        store.get_file(key, dest / key[len(prefix) + 1 :])
        count += 1
    return count


def stage_inputs(store: ObjectStore, stage: str, name: str, inputs: Mapping[str, Path]) -> None:
    """Copy the task's input Datasets to ``trainjobs/<stage>/<name>/inputs/<input>/`` for the ranks."""
    for input_name, folder in inputs.items():
        n = _put_tree(store, Path(folder), f"{job_prefix(stage, name)}/inputs/{input_name}")
        logger.info("%s: staged input %s (%d files) for TrainJob %s", stage, input_name, n, name)


def fetch_inputs(store: ObjectStore, prefix: str, names: Iterable[str], dest: Path) -> dict[str, Path]:
    """On a rank: the staged inputs downloaded into ``dest/<input>`` (an input with no file is an empty folder)."""
    out = {}
    for input_name in names:
        folder = dest / input_name
        folder.mkdir(parents=True, exist_ok=True)
        _get_tree(store, f"{prefix}/inputs/{input_name}", folder)
        out[input_name] = folder
    return out


def publish_outputs(store: ObjectStore, prefix: str, model_dir: Path, report: Mapping[str, Any]) -> None:
    """On rank 0: the Model folder to ``<prefix>/outputs/model/`` and the stage report to ``outputs/report.json``.

    The report is written last: its presence says the outputs are complete.
    """
    _put_tree(store, model_dir, f"{prefix}/outputs/model")
    store.put_bytes(f"{prefix}/outputs/report.json", json.dumps(report, default=float).encode(), "application/json")


def collect_outputs(store: ObjectStore, stage: str, name: str, out_dir: Path) -> dict[str, Any]:
    """In the task: the TrainJob's Model folder copied into ``out_dir``; returns its stage report.

    Raises:
        TrainJobFailed: The TrainJob finished without writing its report (rank 0 did not get to the end).
    """
    prefix = job_prefix(stage, name)
    if not store.exists(f"{prefix}/outputs/report.json"):
        raise TrainJobFailed(f"{stage}: TrainJob {name} finished but wrote no {prefix}/outputs/report.json")
    n = _get_tree(store, f"{prefix}/outputs/model", Path(out_dir))
    report = json.loads(store.get_bytes(f"{prefix}/outputs/report.json"))
    logger.info("%s: picked up %d model files of TrainJob %s", stage, n, name)
    return {**report, "model_dir": str(out_dir)}


# ----------------------------------------------------------------------------- the Kubernetes backend (Kubeflow SDK)


def _api(what: str, call: Callable[[], T], retry: RetryPolicy) -> T:
    """One call of the Kubeflow SDK, retried with bounded backoff while the API server is unreachable or failing.

    The SDK wraps every client error in ``RuntimeError`` / ``TimeoutError``; the cause tells a network fault or
    a 5xx (a :class:`TransientError`, retried) from a refusal of the request (4xx: raised at once as it is).
    """
    return retry_call(what, lambda: _transient(what, call), retry)


def _transient(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (RuntimeError, TimeoutError, OSError) as exc:
        cause: BaseException | None = exc
        while cause is not None:
            status = getattr(cause, "status", None)
            if (isinstance(status, int) and status >= 500) or isinstance(cause, TimeoutError):
                break
            if is_infrastructure_error(cause):
                break
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        status = getattr(cause, "status", None)
        text = f"HTTP {status} {getattr(cause, 'reason', '')}" if isinstance(status, int) else str(cause)
        raise TransientError(f"{what}: Kubernetes API unavailable: {text}") from exc


def trainer_client(dist: DistributedConfig) -> Any:
    """The Kubeflow SDK's ``TrainerClient`` on the Kubernetes backend (kube config or in-cluster credentials).

    The kube config is ``$KUBECONFIG`` (else ``~/.kube/config``); in a pod, the service account's.
    """
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import TrainerClient

    # read here: the kubernetes package reads $KUBECONFIG once, when it is imported
    config_file = os.environ.get("KUBECONFIG") or None
    return TrainerClient(KubernetesBackendConfig(namespace=dist.namespace or None, config_file=config_file))


def submit_trainjob(
    client: Any,
    dist: DistributedConfig,
    name: str,
    args: list[str],
    labels: dict[str, str],
    retry: RetryPolicy = API_RETRY,
) -> str:
    """Create the TrainJob ``name`` through ``client.train`` (runtime ``dist.runtime``, our command and args).

    Retries an unreachable API with bounded backoff; a TrainJob that already exists (a retried create that had
    reached the server) counts as created.

    Returns:
        The TrainJob's name.
    """
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import ActiveDeadlineSeconds, Labels, Name, TrainerArgs, TrainerCommand

    trainer = CustomTrainerContainer(
        image=dist.image or TRAIN_IMAGE,
        num_nodes=dist.nodes,
        # a quantity string: the SDK would send the number 4.0
        resources_per_node={"gpu": str(dist.gpus_per_node)} if dist.gpus_per_node else None,
    )
    options = [
        Name(name),
        Labels(labels),
        TrainerCommand(trainjob_command(dist)),
        TrainerArgs(args),
        ActiveDeadlineSeconds(dist.timeout_s),
    ]

    def create() -> str:
        try:
            return client.train(runtime=dist.runtime, trainer=trainer, options=options)
        except RuntimeError as exc:
            if getattr(exc.__cause__, "status", None) == 409:
                return name
            raise

    return _api(f"create TrainJob {name}", create, retry)


def wait_for_trainjob(
    client: Any, name: str, dist: DistributedConfig, stage: str, retry: RetryPolicy = API_RETRY
) -> list[str]:
    """Poll the TrainJob until it completes, logging each status change and each new log line of node 0.

    Returns:
        The log lines of node 0.

    Raises:
        TrainJobFailed: It failed (with its last log lines) or did not finish within ``dist.timeout_s`` (then it
            is deleted).
        TransientError: The API stayed unreachable beyond the retry budget.
    """
    deadline = time.monotonic() + dist.timeout_s
    lines: list[str] = []
    status = ""
    while True:
        job = _api(f"get TrainJob {name}", lambda: client.get_job(name), retry)
        if job.status != status:
            status = job.status
            logger.info("%s: TrainJob %s is %s (%s)", stage, name, status, ", ".join(_steps(job)))
        logs = _api(f"read the logs of TrainJob {name}", lambda: list(client.get_job_logs(name)), retry)
        for line in logs[len(lines) :]:  # node 0's log so far: the lines not logged yet
            lines.append(line)
            logger.info("%s [%s] %s", stage, name, line)
        if status == STATUS_COMPLETE:
            return lines
        if status == STATUS_FAILED:
            raise TrainJobFailed(_failure(stage, name, "failed", lines))
        if time.monotonic() >= deadline:
            _api(f"delete TrainJob {name}", lambda: client.delete_job(name), retry)
            raise TrainJobFailed(_failure(stage, name, f"did not finish in {dist.timeout_s} s (deleted)", lines))
        time.sleep(dist.poll_s)


def _steps(job: Any) -> list[str]:
    return [f"{s.name}: {s.status}" for s in job.steps] or ["no pods yet"]


def _failure(stage: str, name: str, what: str, lines: list[str]) -> str:
    tail = "\n".join(lines[-LAST_LINES:]) or "(no log lines)"
    return f"{stage}: TrainJob {name} {what}; its last log lines:\n{tail}"


# ----------------------------------------------------------------------------- the embedded default: torchrun here


def run_torchrun(dist: DistributedConfig, args: list[str], stage: str, name: str) -> list[str]:
    """Run the TrainJob's command as a subprocess on this machine (one node), streaming its output to the log.

    Returns:
        Its output lines (the last 1000).

    Raises:
        TrainJobFailed: It exited non-zero (with its last lines) or ran past ``dist.timeout_s`` (then it and its
            ranks, one process group, are killed).
    """
    command = trainjob_command(dist)
    command[0] = str(Path(sys.executable).with_name("torchrun"))  # the torchrun of this environment
    env = {**os.environ, **torch_env(1, dist.procs_per_node, 0, "127.0.0.1", free_port()), "PYTHONUNBUFFERED": "1"}
    lines: deque[str] = deque(maxlen=1000)
    logger.info("%s: running TrainJob %s here: %s", stage, name, " ".join(command))
    proc = subprocess.Popen(
        [*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + dist.timeout_s
    try:
        for line in _read_until(proc, deadline):
            lines.append(line)
            logger.info("%s [%s] %s", stage, name, line)
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        late = f"did not finish in {dist.timeout_s} s (killed)"
        raise TrainJobFailed(_failure(stage, name, late, list(lines))) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the ranks it started
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    if proc.returncode != 0:
        raise TrainJobFailed(_failure(stage, name, f"exited with {proc.returncode}", list(lines)))
    return list(lines)


def _read_until(proc: subprocess.Popen, deadline: float) -> Iterable[str]:
    """The process's output lines until it closes its output or the deadline passes."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(timeout=min(left, 5.0)):
                continue
            line = proc.stdout.readline()
            if not line:
                return
            yield line.rstrip("\n")


# ----------------------------------------------------------------------------- the task's side, end to end


def run_as_trainjob(
    stage: str,
    config_json: str,
    inputs: Mapping[str, Path],
    out_dir: Path,
    dist: DistributedConfig,
    ctx: StageContext,
    client: Any = None,
    retry: RetryPolicy = API_RETRY,
) -> dict[str, Any]:
    """Run a fine-tune stage as a TrainJob and pick up its model: stage the inputs, start, wait, collect.

    Args:
        stage: ``finetune_clip`` or ``finetune_lipsync`` (what :mod:`pipelines.trainjob_entry` runs).
        config_json: The client's whole configuration (the task's ``config`` parameter).
        inputs: The task's input Datasets by the entry's names (``frames``, ``feedback``; ``faces``).
        out_dir: The Model artifact folder to fill with the model rank 0 wrote.
        dist: The stage's ``distributed`` settings.
        ctx: The stage context (artifacts store, parent run, client).
        client: A ``TrainerClient`` (``backend: kubernetes``); ``None`` builds one from the kube config.
        retry: How long an unreachable Kubernetes API is retried, per call.

    Returns:
        The stage report rank 0 wrote (a mapping of the stage report's fields).
    """
    from components.common.storage import open_store

    store = open_store(ctx.storage.artifacts_uri, ctx.encryption)
    name = new_job_name(stage)
    stage_inputs(store, stage, name, inputs)
    args = trainjob_args(stage, name, config_json, ctx.parent_run_id, inputs)
    if dist.backend == "kubernetes":
        client = client or _api("connect to Kubernetes", lambda: trainer_client(dist), retry)
        labels = {"clipsync.io/client": ctx.client_id, "clipsync.io/stage": stage.replace("_", "-")}
        submit_trainjob(client, dist, name, args, labels, retry)
        logger.info("%s: submitted TrainJob %s to runtime %s", stage, name, dist.runtime)
        wait_for_trainjob(client, name, dist, stage, retry)
    else:
        run_torchrun(dist, args, stage, name)
    return collect_outputs(store, stage, name, Path(out_dir))

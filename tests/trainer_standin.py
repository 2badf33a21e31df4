"""Kubeflow Trainer on a Kubernetes API stand-in (no API server can run here, see PLATFORM.md).

:class:`StandInTrainer` answers what the Kubeflow SDK's ``TrainerClient`` (Kubernetes backend) calls, served by
``kube_standin.HttpStub`` on 127.0.0.1:

- ``TrainingRuntime`` / ``ClusterTrainingRuntime`` reads, from the runtimes the test adds (the rendered
  ``manifests/base`` one), each validated against its CRD schema;
- ``TrainJob`` create / get / delete: a created TrainJob is validated against the TrainJob CRD schema (422 when
  invalid, as the API server's structural validation), then played as Kubeflow Trainer plays it: the runtime's
  ``node`` container with the TrainJob's overrides (command, args, env, image), the ``PET_*`` variables of the torch
  plugin, one process per node, started as a subprocess of this machine (``torchrun`` from this environment on
  ``PATH``, the image being this environment). Its status conditions follow the processes (Complete / Failed);
- the node pods (labels as JobSet sets them) and their logs (the processes' output).

``down`` makes every call answer 503 (an API server that is not there).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

from crd_schemas import validate_crd
from jsonschema import ValidationError

from components.common.trainjob import free_port, torch_env

REPO = Path(__file__).resolve().parents[1]
GROUP = "/apis/trainer.kubeflow.org/v1alpha1"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, message: str, reason: str = "") -> tuple[int, dict]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class StandInTrainer:
    """The Kubernetes API of Kubeflow Trainer (see the module doc); use it as ``HttpStub(trainer)``."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, execute: bool = True) -> None:
        self.workdir = Path(workdir)
        self.execute = execute  # off: TrainJobs are validated and kept, their nodes never start
        self.env = env or {}  # what the node containers get besides their spec (the secrets' values)
        self.runtimes: dict[tuple[str, str], dict] = {}  # (plural, name) -> object
        self.jobs: dict[str, dict] = {}
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.created: list[dict] = []  # every TrainJob as it was submitted
        self.down = False
        self.lock = threading.Lock()

    def add_runtime(self, obj: dict) -> None:
        validate_crd(obj)
        plural = "trainingruntimes" if obj["kind"] == "TrainingRuntime" else "clustertrainingruntimes"
        self.runtimes[(plural, obj["metadata"]["name"])] = obj

    # ------------------------------------------------------------------ a TrainJob's nodes

    def _node_container(self, job: dict) -> tuple[dict, int]:
        ref = job["spec"]["runtimeRef"]
        plural = {"TrainingRuntime": "trainingruntimes"}.get(ref.get("kind", ""), "clustertrainingruntimes")
        runtime = self.runtimes[(plural, ref["name"])]
        (rjob,) = [r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"] if r["name"] == "node"]
        (container,) = [c for c in rjob["template"]["spec"]["template"]["spec"]["containers"] if c["name"] == "node"]
        container = copy.deepcopy(container)
        trainer = job["spec"].get("trainer") or {}
        for key in ("command", "args", "image"):
            if trainer.get(key):
                container[key] = trainer[key]
        container["env"] = [*container.get("env", []), *trainer.get("env", [])]
        return container, int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)

    def _start(self, name: str, job: dict) -> None:
        container, nodes = self._node_container(job)
        env = {**os.environ, **self.env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        port, procs = free_port(), int((job["spec"].get("trainer") or {}).get("numProcPerNode") or 1)
        for rank in range(nodes):
            node_env = {**env, **torch_env(nodes, procs, rank, "127.0.0.1", port)}
            log = (self.workdir / f"{name}-node-{rank}.log").open("w")
            proc = subprocess.Popen(
                [*container.get("command", []), *container.get("args", [])],
                cwd=REPO,
                env=node_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            self.procs[name].append(proc)

    def _phase(self, name: str, rank: int) -> str:
        code = self.procs[name][rank].poll()
        return "Running" if code is None else ("Succeeded" if code == 0 else "Failed")

    def _refresh(self, name: str) -> dict:
        job = self.jobs[name]
        phases = [self._phase(name, r) for r in range(len(self.procs[name]))]
        if phases and ("Failed" in phases or all(p == "Succeeded" for p in phases)):
            kind = "Failed" if "Failed" in phases else "Complete"
            if not job.get("status", {}).get("conditions"):
                job["status"] = {
                    "conditions": [
                        {
                            "type": kind,
                            "status": "True",
                            "reason": f"Jobs{kind}",
                            "message": f"jobset {kind.lower()}",
                            "lastTransitionTime": _now(),
                        }
                    ]
                }
        return job

    def _pods(self, name: str) -> dict:
        items = []
        for rank in range(len(self.procs.get(name, []))):
            items.append(
                {
                    "metadata": {
                        "name": f"{name}-node-0-{rank}",
                        "namespace": self.jobs[name]["metadata"]["namespace"],
                        "creationTimestamp": self.jobs[name]["metadata"]["creationTimestamp"],
                        "labels": {
                            "jobset.sigs.k8s.io/jobset-name": name,
                            "jobset.sigs.k8s.io/replicatedjob-name": "node",
                            "batch.kubernetes.io/job-completion-index": str(rank),
                        },
                    },
                    "spec": {
                        "containers": [{"name": "node", "image": self._node_container(self.jobs[name])[0]["image"]}]
                    },
                    "status": {"phase": self._phase(name, rank)},
                }
            )
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def stop_all(self) -> None:
        """Kill what still runs (by the processes this stand-in started)."""
        for procs in self.procs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)

    # ------------------------------------------------------------------ the API

    def __call__(self, method: str, path: str, body: dict | None):
        if self.down:
            return _status(503, "the API server is unavailable", "ServiceUnavailable")
        url = urlsplit(path)
        parts = url.path.strip("/").split("/")
        with self.lock:
            if url.path.startswith("/api/v1/namespaces/kubeflow-system/configmaps/"):
                return 200, {"kind": "ConfigMap", "apiVersion": "v1", "data": {"kubeflow_trainer_version": "v2.1.0"}}
            if url.path.startswith("/api/v1/namespaces/") and parts[4:5] == ["pods"]:
                selector = unquote_plus(url.query)
                name = next((n for n in self.jobs if f"jobset-name={n}," in selector), None)
                if len(parts) == 5:
                    return 200, self._pods(name) if name else {"kind": "PodList", "items": [], "metadata": {}}
                job, rank = parts[5].rsplit("-node-0-", 1)
                return 200, (self.workdir / f"{job}-node-{rank}.log").read_text()
            if not url.path.startswith(GROUP):
                return _status(404, f"unknown path {url.path}", "NotFound")
            plural, name = (
                (parts[5], parts[6] if len(parts) > 6 else None)
                if parts[3] == "namespaces"
                else (parts[3], parts[4] if len(parts) > 4 else None)
            )
            if plural in ("trainingruntimes", "clustertrainingruntimes"):
                if (plural, name) in self.runtimes:
                    return 200, self.runtimes[(plural, name)]
                return _status(404, f'{plural} "{name}" not found', "NotFound")
            if method == "POST":
                return self._create(parts[4], body)
            if name not in self.jobs:
                return _status(404, f'trainjobs "{name}" not found', "NotFound")
            if method == "DELETE":
                for proc in self.procs.pop(name, []):
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(timeout=30)
                self.jobs.pop(name)
                return 200, {"kind": "Status", "status": "Success"}
            return 200, self._refresh(name)

    def _create(self, namespace: str, body: dict) -> tuple[int, dict]:
        self.created.append(copy.deepcopy(body))
        try:
            validate_crd(body)
        except ValidationError as exc:
            return _status(422, f"TrainJob is invalid: {exc.message}", "Invalid")
        name = body["metadata"]["name"]
        if name in self.jobs:
            return _status(409, f'trainjobs "{name}" already exists', "AlreadyExists")
        job = copy.deepcopy(body)
        job["metadata"].update(namespace=namespace, creationTimestamp=_now(), uid=name, resourceVersion="1")
        self.jobs[name] = job
        self.procs[name] = []
        if self.execute:
            self._start(name, job)
        return 201, job

"""A stand-in for the parts of a cluster deploy talks to (no API server can run here, see PLATFORM.md).

- :class:`HttpStub`: a ThreadingHTTPServer on 127.0.0.1 with a handler function; records every request.
- :class:`StandInKube`: just enough of the Kubernetes API for KServe's InferenceServices and TrainedModels
  (get / create / merge-patch / replace / delete, a status with conditions, generations and URLs), driven by the
  real ``kserve.KServeClient``. It also plays the two KServe parts around it:

  * per-client InferenceServices: each generation is a revision answering ``/v2/models/<name>`` with the version
    of its ``storageUri`` (``.../v3`` -> ``3``); a canary split routes the service URL to the stable revision and
    the latest revision's tag URL to the new one; a ``storageUri`` containing one of ``broken`` never gets Ready;
  * TrainedModels on a pool: the model agent, copying the ``storageUri`` folder into the pool server's model
    folder (``<dir>/<name>``) and calling its ``/v2/repository/models/<name>/load`` (``/unload`` after removing
    the folder on delete), as KServe's agent does; the pool's URL is the real server's.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HttpStub:
    """A ThreadingHTTPServer on 127.0.0.1 whose replies come from ``respond(method, path, body)``."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw.strip() else None
                outer.requests.append(
                    {"method": self.command, "path": self.path, "type": self.headers.get("Content-Type"), "body": body}
                )
                status, reply = respond(self.command, self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def kubeconfig(url: str) -> dict:
    """A kube config for the API at ``url``, namespace ``clipsync``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": "not-a-secret"}}],
        "contexts": [
            {"name": "standin", "context": {"cluster": "standin", "user": "standin", "namespace": "clipsync"}}
        ],
        "current-context": "standin",
    }


def kserve_client(url: str):
    """A real ``kserve.KServeClient`` talking to ``url`` (a kube config in memory, nothing written)."""
    from kserve import KServeClient

    return KServeClient(config_dict=kubeconfig(url), persist_config=False)


def _version_of(uri: str) -> str:
    match = re.search(r"/v(\d+)/?$", uri)
    return match.group(1) if match else ""


class Agent:
    """KServe's model agent of one pool: pulls TrainedModels into ``model_dir`` and calls the server's repository."""

    def __init__(self, model_dir: Path, server_url: str) -> None:
        self.model_dir, self.server_url = Path(model_dir), server_url
        self.calls: list[tuple[str, str, int]] = []

    def _post(self, name: str, action: str) -> None:
        req = urllib.request.Request(
            f"{self.server_url}/v2/repository/models/{name}/{action}",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:  # the agent only logs a failed load
            status = exc.code
        self.calls.append((action, name, status))

    def pull(self, name: str, storage_uri: str) -> None:
        dest = self.model_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(storage_uri, dest)
        self._post(name, "load")

    def remove(self, name: str) -> None:
        shutil.rmtree(self.model_dir / name, ignore_errors=True)
        self._post(name, "unload")


class StandInKube:
    """The Kubernetes API for KServe objects (see the module doc); use it as ``HttpStub(kube)``."""

    def __init__(self, broken: tuple[str, ...] = (), agents: dict[str, Agent] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.broken = broken
        self.agents = agents or {}
        self.revisions: dict[tuple[str, int], str] = {}  # (isvc, generation) -> storageUri
        self.stable: dict[str, int] = {}  # isvc -> the generation its service URL routes to
        self.revision_url = ""  # the HttpStub URL (set by the test once the stub runs)
        self.on_ready = None  # called with the storageUri of each InferenceService generation that gets Ready

    def add_pool(self, name: str, url: str) -> None:
        """A pool InferenceService that already exists and answers at ``url`` (a real model server)."""
        self.objects[("inferenceservices", name)] = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "clipsync", "generation": 1, "resourceVersion": "1"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": name}}}},
            "status": {"address": {"url": url}, "conditions": [{"type": "Ready", "status": "True"}]},
        }

    # -------------------------------------------------------------------- revisions of per-client services

    def _isvc_status(self, obj: dict) -> None:
        name, gen = obj["metadata"]["name"], obj["metadata"]["generation"]
        pred = obj["spec"]["predictor"]
        uri = pred["model"]["storageUri"]
        self.revisions[(name, gen)] = uri
        if any(b in uri for b in self.broken):
            conds = [
                {"type": "PredictorReady", "status": "False", "reason": "ModelLoadFailed", "message": "bad weights"},
                {"type": "Ready", "status": "False"},
            ]
            obj["status"] = {"observedGeneration": gen, "conditions": conds}
            return
        canary = pred.get("canaryTrafficPercent")
        if canary in (None, 100) or name not in self.stable:
            self.stable[name] = gen
        stable = self.stable[name]
        if self.on_ready is not None:
            self.on_ready(uri)
        base = f"{self.revision_url}/rev/{name}"
        obj["status"] = {
            "observedGeneration": gen,
            "conditions": [{"type": "Ready", "status": "True"}],
            "address": {"url": f"{base}/{stable}"},
            "components": {
                "predictor": {
                    "traffic": [
                        {"latestRevision": True, "url": f"{base}/{gen}", "percent": canary or 100},
                        {"latestRevision": False, "url": f"{base}/{stable}", "percent": 100 - (canary or 100)},
                    ]
                }
            },
        }

    def _revision(self, path: str) -> tuple[int, dict]:
        _, _, isvc, gen, *_rest = path.split("/", 5)
        model = path.rsplit("/", 1)[1]
        version = _version_of(self.revisions.get((isvc, int(gen)), ""))
        return 200, {"name": model, "versions": [version], "platform": "", "inputs": [], "outputs": []}

    # -------------------------------------------------------------------- the API

    def __call__(self, method: str, path: str, body: dict | None):
        if path.startswith("/rev/"):
            return self._revision(path)
        match = re.match(r"^/apis/serving\.kserve\.io/v1(?:alpha1|beta1)/namespaces/[^/]+/(\w+)(?:/([^/?]+))?", path)
        if not match:
            return 404, {"kind": "Status", "code": 404, "message": f"unknown path {path}"}
        plural, name = match.group(1), match.group(2)
        key = (plural, name or (body or {}).get("metadata", {}).get("name"))
        if method == "GET":
            if key not in self.objects:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"{name} not found"}
            return 200, self.objects[key]
        if method == "DELETE":
            obj = self.objects.pop(key)
            if plural == "trainedmodels" and obj["spec"]["inferenceService"] in self.agents:
                self.agents[obj["spec"]["inferenceService"]].remove(key[1])
            return 200, {"kind": "Status", "status": "Success"}
        if method == "POST":
            obj = json.loads(json.dumps(body))
            obj["metadata"].update(generation=1, resourceVersion="1")
        else:
            obj = self.objects[key]
            if method == "PATCH":
                obj = _merge(obj, body)
            else:  # PUT
                obj["spec"] = body["spec"]
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self.objects[key] = obj
        if plural == "inferenceservices":
            self._isvc_status(obj)
        else:
            obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
            agent = self.agents.get(obj["spec"]["inferenceService"])
            if agent is not None:
                agent.pull(key[1], obj["spec"]["model"]["storageUri"])
        return (201 if method == "POST" else 200), obj


def _merge(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target

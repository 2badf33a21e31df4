"""A tiny local stand-in of the Kubeflow Pipelines v2beta1 REST API that the real kfp.Client talks to: it records
what the client sends (healthz, pipeline upload and deletion, experiments, recurring runs, runs)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeKfp:
    """The v2beta1 endpoints kfp.Client 2.17 calls, with just enough state for two schedules and a submit."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, list[str]] = {}
        self.experiments: dict[str, str] = {}
        self.recurring: dict[str, dict] = {}
        self.runs: list[dict] = []

    def __call__(self, method: str, url: str, body: bytes) -> tuple[int, dict]:
        self.requests.append((method, url, body))
        parsed = urlparse(url)
        path, query = parsed.path.removeprefix("/apis/v2beta1"), parse_qs(parsed.query)
        flt = json.loads(query["filter"][0]) if "filter" in query else None
        name = (
            flt["predicates"][0]["string_value" if "string_value" in flt["predicates"][0] else "stringValue"]
            if flt
            else None
        )
        if path == "/healthz":
            return 200, {"multi_user": False}
        if path == "/pipelines" and method == "GET":
            found = [{"pipeline_id": i, "display_name": n} for n, i in self.pipelines.items() if n == name]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if path == "/pipelines/upload":
            pid = f"p{len(self.pipelines) + 1}"
            self.pipelines[query["name"][0]] = pid
            self.versions[pid] = [f"{pid}-v1"]
            return 200, {"pipeline_id": pid, "display_name": query["name"][0]}
        if path.startswith("/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[2]
            return 200, {"pipeline_versions": [{"pipeline_id": pid, "pipeline_version_id": self.versions[pid][-1]}]}
        if path == "/pipelines/upload_version":
            pid = query["pipelineid"][0]
            self.versions[pid].append(f"{pid}-v{len(self.versions[pid]) + 1}")
            return 200, {"pipeline_id": pid, "pipeline_version_id": self.versions[pid][-1]}
        if path == "/experiments" and method == "GET":
            found = [{"experiment_id": i, "display_name": n} for n, i in self.experiments.items() if n == name]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if path == "/experiments" and method == "POST":
            exp = json.loads(body)
            self.experiments[exp["display_name"]] = f"e{len(self.experiments) + 1}"
            return 200, {"experiment_id": self.experiments[exp["display_name"]], "display_name": exp["display_name"]}
        if path == "/recurringruns" and method == "GET":
            runs = [r for r in self.recurring.values() if r["experiment_id"] == query["experiment_id"][0]]
            return 200, {"recurringRuns": runs} if runs else {}
        if path == "/recurringruns" and method == "POST":
            job = json.loads(body)
            job["recurring_run_id"] = f"r{len(self.requests)}"
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if path.startswith("/pipelines/") and method == "DELETE":
            parts = path.split("/")
            if len(parts) == 5:  # /pipelines/<id>/versions/<version>
                self.versions[parts[2]].remove(parts[4])
            else:
                self.pipelines = {n: i for n, i in self.pipelines.items() if i != parts[2]}
            return 200, {}
        if path.startswith("/recurringruns/") and method == "DELETE":
            self.recurring.pop(path.split("/")[2])
            return 200, {}
        if path == "/runs" and method == "POST":
            run = json.loads(body)
            run["run_id"] = f"run{len(self.runs) + 1}"
            self.runs.append(run)
            return 200, run
        return 404, {"error": f"not in the fake: {method} {url}"}


@contextlib.contextmanager
def kfp_standin() -> Iterator[tuple[str, FakeKfp]]:
    """Serve a :class:`FakeKfp` on a free loopback port; yields its URL and the fake (stopped on exit)."""
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            status, reply = fake(self.command, self.path, self.rfile.read(length) if length else b"")
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

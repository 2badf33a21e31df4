"""The ``serving`` section of the client config (standard library only: pipelines/ and the CLI import it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.device import is_device_name
from components.common.errors import require

_require = functools.partial(require, section="serving")

#: The two predictors; a KServe ServingRuntime serves one kind (``--kind``).
PREDICTOR_KINDS = ("clip-search", "lipsync")


@dataclass(frozen=True)
class ServingConfig:
    """How ``clipsync serve`` (and the predictors in a cluster) serve the models.

    Attributes:
        host: Address the standalone server binds (REST and gRPC); KServe in a cluster binds all addresses.
        http_port: REST port (V1 and V2 protocols, repository endpoints, ``/api/lip-sync``).
        grpc_port: gRPC port (V2 protocol).
        max_upload_mb: Largest video accepted by the lip-sync predictor (HTTP 413 beyond).
        max_duration_s: Longest video accepted by the lip-sync predictor (HTTP 413 beyond).
        request_timeout_s: Longest a lip-sync request may run (HTTP 504 beyond).
        batch_max: Most text queries encoded together by the dynamic batcher (1 disables batching).
        batch_wait_ms: Longest a text query waits for others to join its batch.
        approx_threshold: From this many indexed videos on, search with faiss IVF instead of exactly.
        nprobe: IVF cells visited per query (recall vs. speed; see ``benchmarks/search_index.py``).
        blas_threads: numpy BLAS threads of the server process (exact search); 0 keeps the library default.
            One query against an exact index is a small product where thread hand-offs cost more than they
            save (``serving.server._limit_blas_threads``).
        low_confidence_threshold: Queries whose calibrated confidence is below this are flagged
            ``low_confidence`` in the answer and in the query log (they feed monitoring and the next retrain).
        query_log_uri: Object store of the query log (``querylog/<model>/<YYYY-MM>/...jsonl``); empty: the
            client's ``storage.artifacts_uri``; ``"off"``: no query log. ``{client}`` is replaced by the client
            of each model (a server shared by many clients: ``s3://clipsync-artifacts/{client}``).
        query_log_flush_entries: Write a query-log file once this many entries are buffered.
        query_log_flush_s: Write a query-log file at least this often while entries are buffered.
        auth_token_env: Name of the environment variable holding the bearer token the server requires
            (``Authorization: Bearer <token>``, gRPC metadata ``authorization``); empty: no auth. The variable must
            be set and non-empty when the server starts (in a cluster it comes from a Kubernetes Secret).
        device: Where the predictors put their models: ``auto`` (CUDA when available, so a GPU node serves on
            its GPU), ``cpu`` or ``cuda[:N]``. Video decoding and face tracking stay on the CPU.
    """

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_upload_mb: float = 100.0
    max_duration_s: float = 300.0
    request_timeout_s: float = 120.0
    batch_max: int = 32
    batch_wait_ms: float = 5.0
    approx_threshold: int = 50_000
    nprobe: int = 16
    blas_threads: int = 1
    low_confidence_threshold: float = 0.5
    query_log_uri: str = ""
    query_log_flush_entries: int = 100
    query_log_flush_s: float = 60.0
    auth_token_env: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        _require(bool(self.host), "host must be set")
        for name in ("http_port", "grpc_port"):
            value = getattr(self, name)
            _require(isinstance(value, int) and 0 <= value <= 65535, f"{name} must be 0..65535, got {value!r}")
        _require(self.http_port != self.grpc_port or self.http_port == 0, "http_port and grpc_port must differ")
        _require(0 < self.max_upload_mb <= 10_000, f"max_upload_mb must be in (0, 10000], got {self.max_upload_mb}")
        _require(0 < self.max_duration_s <= 86_400, f"max_duration_s must be in (0, 86400], got {self.max_duration_s}")
        _require(
            0 < self.request_timeout_s <= 3600, f"request_timeout_s must be in (0, 3600], got {self.request_timeout_s}"
        )
        _require(1 <= self.batch_max <= 1024, f"batch_max must be 1..1024, got {self.batch_max}")
        _require(0 <= self.batch_wait_ms <= 1000, f"batch_wait_ms must be 0..1000, got {self.batch_wait_ms}")
        _require(self.approx_threshold >= 1, f"approx_threshold must be >= 1, got {self.approx_threshold}")
        _require(1 <= self.nprobe <= 65_536, f"nprobe must be 1..65536, got {self.nprobe}")
        _require(0 <= self.blas_threads <= 256, f"blas_threads must be 0..256, got {self.blas_threads}")
        _require(
            0.0 <= self.low_confidence_threshold <= 1.0,
            f"low_confidence_threshold must be 0..1, got {self.low_confidence_threshold}",
        )
        _require(self.query_log_flush_entries >= 1, "query_log_flush_entries must be >= 1")
        _require(0 < self.query_log_flush_s <= 86_400, "query_log_flush_s must be in (0, 86400]")
        leftover = self.query_log_uri.replace("{client}", "")
        _require(
            "{" not in leftover and "}" not in leftover,
            f"query_log_uri may only use the placeholder {{client}}, got {self.query_log_uri!r}",
        )
        _require(
            self.auth_token_env == "" or self.auth_token_env.replace("_", "").isalnum(),
            f"auth_token_env must be an environment variable name, got {self.auth_token_env!r}",
        )
        _require(is_device_name(self.device), f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

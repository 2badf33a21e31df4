"""The ``serving`` section of the client config (standard library only: pipelines/ and the CLI import it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

from components.common.cpus import available_cpus
from components.common.device import is_device_name
from components.common.errors import require

_require = functools.partial(require, section="serving")

#: The two predictors; a KServe ServingRuntime serves one kind (``--kind``).
PREDICTOR_KINDS = ("clip-search", "lipsync")
#: Results per query of the search index's recall target (recall@10).
RECALL_K = 10


@dataclass(frozen=True)
class IndexSettings:
    """How a client's search index is built (the ``serving`` settings of the same names; :mod:`serving.index`).

    Attributes:
        approx_threshold: From this many videos on, search a faiss IVF index (HNSW coarse quantizer, 8-bit codes,
            exact re-ranking) instead of exactly.
        recall_target: Recall@10 against exact search that the IVF search breadth (``nprobe``, the lists scanned
            per query) must reach on the tuning queries when the index is built; the smallest that reaches it is
            kept.
        nlist: Inverted lists (k-means cells) of the IVF index; 0: about ``4 * sqrt(videos)``, a power of two
            (4096 at 1M videos); at most one per 39 videos (k-means' training sample).
        nprobe_max: Largest search breadth tried; a library where even this misses the target keeps it and
            records the recall it reached (``recall_met: false``).
    """

    approx_threshold: int = 50_000
    recall_target: float = 0.95
    nlist: int = 0
    nprobe_max: int = 512

    def __post_init__(self) -> None:
        limits = {"approx_threshold": (1, 2**40), "nlist": (0, 2**20), "nprobe_max": (1, 2**20)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            _require(
                not isinstance(value, bool) and isinstance(value, int) and low <= value <= high,
                f"{name} must be an integer {low}..{high}, got {value!r}",
            )
        target = self.recall_target
        _require(
            not isinstance(target, bool) and isinstance(target, int | float) and 0 < target <= 1,
            f"recall_target must be in (0, 1], got {target!r}",
        )

    @classmethod
    def of(cls, serving: ServingConfig) -> IndexSettings:
        """The index settings of a :class:`ServingConfig` (same names)."""
        return cls(**{f.name: getattr(serving, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ServingConfig:
    """How ``clipsync serve`` (and the predictors in a cluster) serve the models.

    Attributes:
        host: Address the standalone server binds (REST and gRPC); KServe in a cluster binds all addresses.
        http_port: REST port (V1 and V2 protocols, repository endpoints, ``/api/lip-sync``).
        grpc_port: gRPC port (V2 protocol).
        max_upload_mb: Largest video accepted by the lip-sync predictor (HTTP 413 beyond); request bodies may be
            4/3 of it plus 64 KiB (base64 in JSON), counted while they are read, chunked ones included.
        max_duration_s: Longest video accepted by the lip-sync predictor (HTTP 413 beyond).
        max_video_pixels: Largest video frame (width x height, read from the stream header before any frame is
            decoded; HTTP 413 beyond).
        max_image_pixels: Most pixels of the images of one request (width x height from each header, before
            decoding; HTTP 413 beyond).
        request_timeout_s: Longest an inference request may take, waiting included (HTTP 504 / gRPC
            DEADLINE_EXCEEDED beyond).
        max_queue: Requests one model holds at once, running or waiting; one more is refused at once with HTTP 429
            (gRPC RESOURCE_EXHAUSTED) and counted (``clipsync_requests_refused_total``).
        batch_max: Most text queries encoded together by the dynamic batcher (1 disables batching).
        batch_wait_ms: Longest a batch that already holds several queries waits for more (a lone query never waits).
        approx_threshold: From this many indexed videos on, search a faiss IVF index instead of exactly.
        recall_target: Recall@10 against exact search the IVF index is tuned to when it is built.
        nlist: Inverted lists of the IVF index (0: from the library size).
        nprobe_max: Largest IVF search breadth tried when tuning (see :class:`IndexSettings`). The index
            settings apply when an index is built (deploy, ``clipsync index``); a served index keeps what it was
            built with (``index.json``).
        threads: Threads of the server's thread pools: torch (the models), faiss (the search index) and the video
            decoder. 0: the CPUs available to the process, the smaller of its cgroup v2 CPU quota and its CPU
            affinity (:func:`components.common.cpus.available_cpus`), not the node's core count.
        blas_threads: numpy BLAS threads of the server process (exact search); 0 keeps the library default.
            One query against an exact index is a small product where thread hand-offs cost more than they
            save (``serving.server._size_thread_pools``).
        low_confidence_threshold: Queries whose calibrated confidence is below this are flagged
            ``low_confidence`` in the answer and in the query log (they feed monitoring and the next retrain).
        query_log_uri: Object store of the query log (``querylog/<model>/<YYYY-MM>/...jsonl``); empty: the
            client's ``storage.artifacts_uri``; ``"off"``: no query log. ``{client}`` is replaced by the client
            of each model (a server shared by many clients: ``s3://clipsync-artifacts/{client}``).
        query_log_flush_entries: Write a query-log file once this many entries are buffered.
        query_log_flush_s: Write a query-log file at least this often while entries are buffered.
        feedback_per_minute: Feedback answers one token may send per minute (``POST /api/feedback`` and the V2
            feedback inputs together); beyond it HTTP 429 with ``Retry-After`` (gRPC RESOURCE_EXHAUSTED). Feedback
            is stored where the query log is (:mod:`serving.feedback`).
        tokens_env: Name of the environment variable holding the client tokens, a JSON map from each token to the
            client ids it may call (``{"<token>": ["acme"]}``); a token reaches only ``clip-<id>`` and
            ``lipsync-<id>`` of its clients (HTTP 403 / gRPC PERMISSION_DENIED otherwise).
        tokens_file: A file holding the same JSON map (a mounted Kubernetes Secret); at most one of the two.
        admin_token_env: Name of the environment variable holding the admin token: the repository endpoints
            (load, unload, index) and ``/metrics`` need it; it may call every model. It must differ from every
            client token.
        agent_port: Port of a second listener, bound to 127.0.0.1 whatever ``host`` is, that answers only the
            repository load and unload, without a token: KServe's model agent, a sidecar in the same pod, calls
            ``localhost:8080`` and sends none (0: no such listener).
        inconclusive_verdicts: A lip-sync video without the evidence a verdict needs (no audio, no usable face
            track, shorter than one window) gets HTTP 200 with ``verdict: inconclusive`` and the reason instead
            of HTTP 422.
        device: Where the predictors put their models: ``auto`` (CUDA when available, so a GPU node serves on
            its GPU), ``cpu`` or ``cuda[:N]``. Video decoding and face tracking stay on the CPU.
    """

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_upload_mb: float = 100.0
    max_duration_s: float = 300.0
    max_video_pixels: int = 3840 * 2160
    max_image_pixels: int = 4096 * 4096
    request_timeout_s: float = 120.0
    max_queue: int = 32
    batch_max: int = 32
    batch_wait_ms: float = 5.0
    approx_threshold: int = 50_000
    recall_target: float = 0.95
    nlist: int = 0
    nprobe_max: int = 512
    threads: int = 0
    blas_threads: int = 1
    low_confidence_threshold: float = 0.5
    query_log_uri: str = ""
    query_log_flush_entries: int = 100
    query_log_flush_s: float = 60.0
    feedback_per_minute: int = 120
    tokens_env: str = ""
    tokens_file: str = ""
    admin_token_env: str = ""
    agent_port: int = 0
    inconclusive_verdicts: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        _require(bool(self.host), "host must be set")
        for name in ("http_port", "grpc_port", "agent_port"):
            value = getattr(self, name)
            _require(isinstance(value, int) and 0 <= value <= 65535, f"{name} must be 0..65535, got {value!r}")
        _require(self.http_port != self.grpc_port or self.http_port == 0, "http_port and grpc_port must differ")
        _require(0 < self.max_upload_mb <= 10_000, f"max_upload_mb must be in (0, 10000], got {self.max_upload_mb}")
        _require(0 < self.max_duration_s <= 86_400, f"max_duration_s must be in (0, 86400], got {self.max_duration_s}")
        for name in ("max_video_pixels", "max_image_pixels"):
            value = getattr(self, name)
            _require(isinstance(value, int) and 1 <= value <= 2**31, f"{name} must be 1..2**31, got {value!r}")
        _require(isinstance(self.max_queue, int) and 1 <= self.max_queue <= 10_000, "max_queue must be 1..10000")
        _require(
            0 < self.request_timeout_s <= 3600, f"request_timeout_s must be in (0, 3600], got {self.request_timeout_s}"
        )
        _require(1 <= self.batch_max <= 1024, f"batch_max must be 1..1024, got {self.batch_max}")
        _require(0 <= self.batch_wait_ms <= 1000, f"batch_wait_ms must be 0..1000, got {self.batch_wait_ms}")
        IndexSettings.of(self)  # refuses out-of-range index settings, naming them
        _require(
            not isinstance(self.threads, bool) and isinstance(self.threads, int) and 0 <= self.threads <= 1024,
            f"threads must be 0..1024, got {self.threads!r}",
        )
        _require(0 <= self.blas_threads <= 256, f"blas_threads must be 0..256, got {self.blas_threads}")
        _require(
            0.0 <= self.low_confidence_threshold <= 1.0,
            f"low_confidence_threshold must be 0..1, got {self.low_confidence_threshold}",
        )
        _require(self.query_log_flush_entries >= 1, "query_log_flush_entries must be >= 1")
        _require(0 < self.query_log_flush_s <= 86_400, "query_log_flush_s must be in (0, 86400]")
        _require(
            isinstance(self.feedback_per_minute, int) and 1 <= self.feedback_per_minute <= 100_000,
            f"feedback_per_minute must be 1..100000, got {self.feedback_per_minute!r}",
        )
        leftover = self.query_log_uri.replace("{client}", "")
        _require(
            "{" not in leftover and "}" not in leftover,
            f"query_log_uri may only use the placeholder {{client}}, got {self.query_log_uri!r}",
        )
        for name in ("tokens_env", "admin_token_env"):
            value = getattr(self, name)
            _require(
                value == "" or (value.replace("_", "").isalnum() and not value[0].isdigit()),
                f"{name} must be an environment variable name, got {value!r}",
            )
        _require(not (self.tokens_env and self.tokens_file), "set tokens_env or tokens_file, not both")
        _require(
            isinstance(self.inconclusive_verdicts, bool),
            f"inconclusive_verdicts must be a bool, got {self.inconclusive_verdicts!r}",
        )
        _require(
            self.agent_port == 0 or self.agent_port not in (self.http_port, self.grpc_port),
            f"agent_port {self.agent_port} is already the http_port or grpc_port",
        )
        _require(is_device_name(self.device), f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def cpu_threads(self) -> int:
        """``threads``, or the CPUs available to this process when it is 0."""
        return self.threads or available_cpus()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a video in base64 (4/3 of its size) plus the JSON or multipart around it."""
        return -(-self.max_upload_bytes * 4 // 3) + 64 * 1024

    @property
    def access_controlled(self) -> bool:
        """Whether tokens are configured (else the server must be on loopback: see ``serving.auth``)."""
        return bool(self.tokens_env or self.tokens_file or self.admin_token_env)

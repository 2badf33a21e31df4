"""The model server: one ``kserve.ModelServer`` with the clip-search and lipsync predictors.

Two ways in:

- ``clipsync serve`` (:func:`serve_main`): the standalone server on this machine, bound to ``serving.host``
  (127.0.0.1 by default), loading each client's MLflow ``champion`` (or explicit folders). Models are named
  ``clip-<client>`` and ``lipsync-<client>``; ``POST /v2/repository/models/<name>/load`` (what deploy calls)
  re-reads ``{state_dir}/serving/champions.json`` and swaps the new version in without a restart, ``.../unload``
  drops it.
- The KServe ServingRuntime: ``python -m serving.server --predictor=clip-search --model_name=<isvc>
  --model_dir=/mnt/models --http_port=8080`` (binds all addresses there, as KServe expects).

Binding: KServe 0.21 hardcodes ``0.0.0.0`` (uvicorn) and ``[::]`` (gRPC). :class:`ClipsyncModelServer` is a small
subclass whose REST server sets the uvicorn config's host and whose gRPC server listens on ``host:port``; the
rest of ``ModelServer.start`` (single worker) is kept as is.

Extras on the REST app: an optional bearer-token check (``serving.auth_token_env``; health endpoints stay
open; gRPC checks the ``authorization`` metadata), a request-size guard (HTTP 413 before the body is read),
HTTP 413/504 for the lip-sync limits, and the seed's ``POST /api/lip-sync`` multipart route. Logs of the
``clipsync`` loggers are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger("clipsync.serving")

PREDICTOR_KINDS = ("clip-search", "lipsync")
OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready", "/v2", "/metrics")


# ------------------------------------------------------------------------------------------------ logging


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    """Structured (JSON lines) logs for the ``clipsync`` loggers on stderr."""
    root = logging.getLogger("clipsync")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its name on the server, its kind, its folder and registry version."""

    name: str
    kind: str
    path: str
    version: str = ""


def detect_kind(path: str | Path, name: str = "") -> str:
    """``lipsync`` for a lip-sync model folder (config.json with ``window_s``), else ``clip-search``."""
    cfg = Path(path) / "config.json"
    if cfg.is_file() and not (Path(path) / "card.json").is_file():
        with contextlib.suppress(ValueError):
            if "window_s" in json.loads(cfg.read_text()):
                return "lipsync"
    if name.startswith("lipsync"):
        return "lipsync"
    return "clip-search"


class ModelFactory:
    """Builds predictors with the shared pieces (CLIP backbones, query log, configs)."""

    def __init__(
        self,
        settings: Any,
        cache_dir: str | Path | None = None,
        query_log: Any = None,
        frame_config: Any = None,
        face_config: Any = None,
    ) -> None:
        from serving.clip_search import ClipBackbones

        self.settings = settings
        self.cache_dir = cache_dir
        self.query_log = query_log
        self.frame_config = frame_config
        self.face_config = face_config
        self.backbones = ClipBackbones(cache_dir)

    def create(self, spec: ModelSpec) -> Any:
        if spec.kind == "clip-search":
            from serving.clip_search import ClipSearchModel

            return ClipSearchModel(spec.name, spec.path, self.settings, self.backbones, self.query_log, spec.version)
        if spec.kind == "lipsync":
            from serving.lipsync import LipSyncModel

            return LipSyncModel(
                spec.name,
                spec.path,
                self.settings,
                self.frame_config,
                self.face_config,
                self.cache_dir,
                spec.version,
            )
        raise ValueError(f"unknown predictor kind {spec.kind!r}; expected one of {PREDICTOR_KINDS}")


def _repository_class():
    from kserve.model_repository import ModelRepository

    class ClipsyncRepository(ModelRepository):
        """Model repository: ``load(name)`` (re)loads ``name`` from champions.json or the startup specs.

        The new version is loaded beside the old one and swapped in, so requests keep being answered during a
        reload; the old version is stopped afterwards.
        """

        def __init__(self, factory: ModelFactory, specs: dict[str, ModelSpec], champions: Path | None) -> None:
            super().__init__(models_dir="/nonexistent")
            self.factory = factory
            self.specs = dict(specs)
            self.champions = champions
            self._load_lock = threading.Lock()

        def resolve(self, name: str) -> ModelSpec:
            if self.champions is not None and self.champions.is_file():
                entry = json.loads(self.champions.read_text()).get(name)
                if entry:
                    path = entry["path"]
                    return ModelSpec(name, detect_kind(path, name), path, str(entry.get("version", "")))
            if name in self.specs:
                return self.specs[name]
            raise KeyError(f"no model {name!r} in {self.champions or 'the startup models'}")

        def load(self, name: str) -> bool:
            spec = self.resolve(name)
            with self._load_lock:
                model = self.factory.create(spec)
                model.load()
                old = self.models.get(name)
                self.update(model, name)
                self.specs[name] = spec
                if old is not None and old is not model:
                    old.stop()
            logger.info("model %s loaded (%s v%s from %s)", name, spec.kind, spec.version or "-", spec.path)
            return model.ready

    return ClipsyncRepository


# ------------------------------------------------------------------------------------------------ server


def _server_classes():
    import grpc
    from grpc import aio
    from kserve import ModelServer
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    class AuthInterceptor(aio.ServerInterceptor):
        """Refuse gRPC calls without ``authorization: Bearer <token>`` (health calls stay open)."""

        def __init__(self, token: str) -> None:
            self.expected = f"Bearer {token}"

        async def intercept_service(self, continuation, details):
            if details.method.endswith(("/ServerLive", "/ServerReady")):
                return await continuation(details)
            metadata = dict(details.invocation_metadata or ())
            if metadata.get("authorization") == self.expected:
                return await continuation(details)

            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

            return grpc.unary_unary_rpc_method_handler(deny)

    class HostGRPCServer(GRPCServer):
        """KServe's gRPC server listening on ``host:port`` instead of ``[::]:port``."""

        def __init__(self, *args: Any, host: str, token: str = "", max_message: int = 0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.host = host
            self.token = token
            self.max_message = max_message

        async def start(self, max_workers: int) -> None:
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            interceptors = [LoggingInterceptor(), ExceptionToStatusInterceptor()]
            if self.token:
                interceptors.insert(0, AuthInterceptor(self.token))
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=interceptors,
                options=[
                    ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                    # A video upload must fit in one message: at least the upload limit (plus framing).
                    (
                        "grpc.max_receive_message_length",
                        max(self._kwargs.get("grpc_max_receive_message_length") or 0, self.max_message),
                    ),
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            host = f"[{self.host}]" if ":" in self.host else self.host
            self._server.add_insecure_port(f"{host}:{self._port}")
            logger.info("gRPC server on %s:%d", self.host, self._port)
            await self._server.start()
            await self._server.wait_for_termination()

    class ClipsyncModelServer(ModelServer):
        """``ModelServer`` bound to ``host``, with auth, limits and a clean shutdown (query log flushed)."""

        def __init__(
            self, host: str, token: str = "", on_shutdown: Any = None, max_message: int = 0, **kwargs: Any
        ) -> None:
            kwargs.setdefault("grace_period", 5)
            super().__init__(workers=1, **kwargs)
            self.host = host
            self.token = token
            self.on_shutdown = on_shutdown
            self.max_message = max_message

        def start(self, models: list[Any]) -> None:
            from kserve.model_server import args as kserve_args

            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(
                "kserve.model_server:app",
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            self._rest_server.config.host = self.host
            logger.info("REST server on %s:%d", self.host, self.http_port)
            self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                self._grpc_server = HostGRPCServer(
                    self.grpc_port,
                    self.dataplane,
                    self.model_repository_extension,
                    kwargs=vars(kserve_args),
                    grace_period=self.grace_period,
                    host=self.host,
                    token=self.token,
                    max_message=self.max_message,
                )
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            # uvicorn handles SIGINT/SIGTERM and, once it has shut down, re-raises the signal to the handler that
            # was installed before it: a no-op here, so that _serve goes on to stop gRPC and flush the query log.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: None)
            asyncio.run(self._serve())

        async def _serve(self) -> None:
            tasks = [asyncio.ensure_future(s) for s in self.servers]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if self._grpc_server is not None:
                    with contextlib.suppress(Exception):
                        await self._grpc_server.stop()
                for t in tasks:
                    t.cancel()
                for name in list(self.registered_models.get_models()):
                    with contextlib.suppress(Exception):
                        self.registered_models.unload(name)
                if self.on_shutdown is not None:
                    self.on_shutdown()
                logger.info("model server stopped")

    return ClipsyncModelServer


def _install_routes(repository: Any, settings: Any, token: str) -> None:
    """Auth and size middleware, 413/504 handlers and ``POST /api/lip-sync`` on KServe's FastAPI app."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput
    from kserve.model_server import app

    from serving.lipsync import LipSyncModel, PayloadTooLarge, RequestTimeout

    # JSON / base64 carry a video in at most 4/3 of its size; the predictor checks the exact size later.
    body_limit = int(settings.max_upload_bytes * 4 / 3) + 1024 * 1024

    @app.middleware("http")
    async def guard(request: Request, call_next):
        open_path = request.url.path in OPEN_PATHS
        if token and not open_path and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            limit = f"{settings.max_upload_mb:g} MiB"
            return JSONResponse({"error": f"request body of {int(length)} bytes exceeds the {limit} upload limit"}, 413)
        return await call_next(request)

    async def too_large(_request, exc):
        return JSONResponse({"error": str(exc)}, status_code=413)

    async def timed_out(_request, exc):
        return JSONResponse({"error": str(exc)}, status_code=504)

    app.add_exception_handler(PayloadTooLarge, too_large)
    app.add_exception_handler(RequestTimeout, timed_out)

    async def lip_sync(request):
        """The seed's endpoint: multipart ``video_file``; ``?model=lipsync-<client>`` when several are served."""
        model = request.query_params.get("model")
        candidates = {n: m for n, m in repository.get_models().items() if isinstance(m, LipSyncModel) and m.ready}
        if model is not None:
            if model not in candidates:
                return JSONResponse({"error": f"no lip-sync model {model!r} is loaded"}, status_code=404)
            chosen = candidates[model]
        elif len(candidates) == 1:
            chosen = next(iter(candidates.values()))
        else:
            return JSONResponse(
                {"error": f"{len(candidates)} lip-sync models are loaded; pass ?model=<name> ({sorted(candidates)})"},
                status_code=400 if candidates else 503,
            )
        try:
            form = await request.form(max_part_size=settings.max_upload_bytes + 1)
        except Exception as exc:  # malformed multipart body
            raise InvalidInput(f"expected a multipart/form-data body with 'video_file': {exc}") from None
        upload = form.get("video_file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("missing the multipart file field 'video_file'")
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"video is larger than the limit of {settings.max_upload_mb:g} MiB")
        return await chosen.analyze(data)

    # Real annotation objects (this module uses postponed annotations, which FastAPI cannot resolve here).
    lip_sync.__annotations__ = {"request": Request}
    app.add_api_route("/api/lip-sync", lip_sync, methods=["POST"])


def _limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS threads for the exact index search (0 leaves the library's default).

    A one-query product over a library below ``approx_threshold`` takes about 0.2 ms single-threaded; a
    multi-threaded OpenBLAS on a busy node spent about 8 ms handing the work between its threads (measured on
    the 2-core development machine, 10k x 128 vectors).
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")


def build_server(
    settings: Any,
    specs: Iterable[ModelSpec],
    champions: Path | None = None,
    cache_dir: str | Path | None = None,
    query_log_uri: str = "",
    frame_config: Any = None,
    face_config: Any = None,
) -> tuple[Any, list[Any]]:
    """Load the models and build the server (not started).

    Args:
        settings: :class:`serving.config.ServingConfig`.
        specs: Models to load at start (readiness comes only after they loaded).
        champions: ``champions.json`` the repository's load endpoint re-reads (deploy writes it).
        cache_dir: MediaPipe face models (lipsync) and fetched base models.
        query_log_uri: Object store of the query log; ``""`` or ``"off"``: none.
        frame_config: ``FrameExtractionConfig`` of the client (lipsync); default settings if ``None``.
        face_config: ``FaceTrackingConfig`` of the client (lipsync).

    Returns:
        The server and the loaded models.

    Raises:
        RuntimeError: If the bearer token variable is configured but empty.
    """
    from components.common.storage import open_store
    from serving.querylog import QueryLog

    token = ""
    if settings.auth_token_env:
        token = os.environ.get(settings.auth_token_env, "")
        if not token:
            raise RuntimeError(f"serving.auth_token_env names {settings.auth_token_env}, which is not set")
    _limit_blas_threads(settings.blas_threads)
    store = open_store(query_log_uri) if query_log_uri and query_log_uri != "off" else None
    query_log = QueryLog(store, settings.query_log_flush_entries, settings.query_log_flush_s)
    factory = ModelFactory(settings, cache_dir, query_log, frame_config, face_config)
    specs = list(specs)
    repository = _repository_class()(factory, {s.name: s for s in specs}, champions)
    models = []
    for spec in specs:
        repository.load(spec.name)
        models.append(repository.get_model(spec.name))
    _install_routes(repository, settings, token)
    server = _server_classes()(
        host=settings.host,
        token=token,
        on_shutdown=query_log.close,
        max_message=settings.max_upload_bytes + 1024 * 1024,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        registered_models=repository,
        enable_docs_url=False,
    )
    return server, models


def run_server(server: Any, models: list[Any]) -> None:
    """Start serving (blocks until SIGINT/SIGTERM)."""
    server.start(models)


# ------------------------------------------------------------------------------------------------ entry points


def champion_specs(
    config: Any, clip_dir: str | Path | None = None, lipsync_dir: str | Path | None = None
) -> list[ModelSpec]:
    """The models ``clipsync serve`` loads for a client.

    ``clip-<client>`` from ``clip_dir``, else the registry's ``champion`` of ``clip-<client>`` (downloaded once
    into ``{state_dir}/serving/models/<name>/v<version>``, the layout deploy uses), else the local record in
    ``champions.json``; the same for ``lipsync-<client>``. A model with none of them is skipped with a warning.
    """
    from components.common import tracking as tr
    from components.deploy.core import read_champions

    state_dir = Path(config.state_dir)
    recorded = read_champions(state_dir)
    specs: list[ModelSpec] = []
    for model, kind, explicit in (("clip", "clip-search", clip_dir), ("lipsync", "lipsync", lipsync_dir)):
        name = f"{model}-{config.client_id}"
        if explicit:
            specs.append(ModelSpec(name, kind, str(Path(explicit).resolve())))
            continue
        try:
            version = tr.get_version_by_alias(config.tracking, name, "champion")
        except Exception as exc:  # a registry that cannot be reached: fall back to the local record
            logger.warning("registry lookup of %s failed (%s); using champions.json", name, exc)
            version = None
        if version is None:
            if name in recorded:
                specs.append(ModelSpec(name, kind, recorded[name]["path"], str(recorded[name].get("version", ""))))
            else:
                logger.warning("%s has no champion; not served", name)
            continue
        dest = state_dir / "serving" / "models" / name / f"v{version}"
        if not dest.is_dir() or not any(dest.iterdir()):
            tr.download_version(config.tracking, name, version, dest)
        specs.append(ModelSpec(name, kind, str(dest), version))
    return specs


def serve_main(
    config: Any,
    http_port: int | None = None,
    grpc_port: int | None = None,
    clip_dir: str | Path | None = None,
    lipsync_dir: str | Path | None = None,
) -> int:
    """``clipsync serve``: serve a client's champions (or explicit folders) on ``serving.host``; blocks.

    Args:
        config: The client's ``ClientConfig`` (its ``serving`` section, default :class:`ServingConfig`).
        http_port: Overrides ``serving.http_port``.
        grpc_port: Overrides ``serving.grpc_port``.
        clip_dir: Serve this CLIP model folder instead of the champion.
        lipsync_dir: Serve this lip-sync model folder instead of the champion.

    Returns:
        The exit code (2 when there is nothing to serve).
    """
    from components.deploy.core import champions_file

    configure_logging()
    settings = config.serving
    settings = replace(
        settings,
        http_port=settings.http_port if http_port is None else http_port,
        grpc_port=settings.grpc_port if grpc_port is None else grpc_port,
    )
    specs = champion_specs(config, clip_dir, lipsync_dir)
    if not specs:
        logger.error("nothing to serve for %s: no champion and no explicit model folder", config.client_id)
        return 2
    server, models = build_server(
        settings,
        specs,
        champions_file(Path(config.state_dir)),
        config.cache_dir,
        settings.query_log_uri or config.storage.artifacts_uri,
        config.frame_extraction,
        config.face_tracking,
    )
    run_server(server, models)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictor", choices=PREDICTOR_KINDS, help="KServe runtime mode: the predictor kind")
    p.add_argument("--model_name", help="KServe runtime mode: the model name")
    p.add_argument("--model_dir", help="KServe runtime mode: the model folder (/mnt/models)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model to serve (repeatable)")
    p.add_argument("--champions", help="champions.json re-read by the repository load endpoint")
    p.add_argument("--config", help="client config YAML (serving, frame_extraction, face_tracking sections)")
    p.add_argument("--host", help="bind address (default: serving.host; 0.0.0.0 in KServe runtime mode)")
    p.add_argument("--http_port", type=int)
    p.add_argument("--grpc_port", type=int)
    p.add_argument("--cache_dir", help="MediaPipe face models (default: the config's cache_dir)")
    p.add_argument("--query_log_uri", help="object store of the query log (default: the config's artifacts_uri)")
    p.add_argument("--batch_max", type=int)
    p.add_argument("--batch_wait_ms", type=float)
    p.add_argument("--max_upload_mb", type=float)
    p.add_argument("--max_duration_s", type=float)
    p.add_argument("--request_timeout_s", type=float)
    p.add_argument("--query_log_flush_entries", type=int)
    p.add_argument("--auth_token_env")
    args, _unknown = p.parse_known_args(argv)  # KServe's own flags may be passed along
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line of the server (the ServingRuntime's entry point)."""

    configure_logging()
    args = _parse(argv)
    config = None
    if args.config:
        from components.common.config import load_config

        config = load_config(args.config)
    # Started the KServe way (no --config), the server runs on the section's defaults.
    from serving.config import ServingConfig

    settings = config.serving if config is not None else ServingConfig()
    overrides = {
        k: getattr(args, k)
        for k in (
            "http_port",
            "grpc_port",
            "host",
            "batch_max",
            "batch_wait_ms",
            "max_upload_mb",
            "max_duration_s",
            "request_timeout_s",
            "query_log_flush_entries",
            "auth_token_env",
        )
        if getattr(args, k) is not None
    }
    specs: list[ModelSpec] = []
    if args.predictor:
        if not (args.model_name and args.model_dir):
            sys.stderr.write("--predictor needs --model_name and --model_dir\n")
            return 2
        specs.append(ModelSpec(args.model_name, args.predictor, args.model_dir))
        overrides.setdefault("host", "0.0.0.0")  # inside a KServe pod the queue proxy connects from outside
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            sys.stderr.write(f"--model expects NAME=DIR, got {item!r}\n")
            return 2
        specs.append(ModelSpec(name, detect_kind(path, name), str(Path(path).resolve())))
    champions = Path(args.champions) if args.champions else None
    if champions is not None and champions.is_file():
        known = {s.name for s in specs}
        for name, entry in json.loads(champions.read_text()).items():
            if name not in known:
                specs.append(
                    ModelSpec(name, detect_kind(entry["path"], name), entry["path"], str(entry.get("version", "")))
                )
    if not specs:
        sys.stderr.write("nothing to serve: give --model NAME=DIR, --champions FILE or --predictor/--model_dir\n")
        return 2
    settings = replace(settings, **overrides)
    cache_dir = args.cache_dir or (config.cache_dir if config is not None else os.environ.get("CLIPSYNC_CACHE_DIR"))
    query_log_uri = args.query_log_uri or settings.query_log_uri or (config.storage.artifacts_uri if config else "")
    server, models = build_server(
        settings,
        specs,
        champions,
        cache_dir,
        query_log_uri,
        config.frame_extraction if config is not None else None,
        config.face_tracking if config is not None else None,
    )
    run_server(server, models)
    return 0


if __name__ == "__main__":
    sys.exit(main())

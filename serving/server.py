"""The model server's entry points: ``python -m serving.server`` (KServe runtimes) and ``clipsync serve``.

One process, one ``kserve.ModelServer`` (:class:`serving.kserve_adapter.ClipsyncModelServer`) holding models of
many clients side by side (``clip-<client>``, ``lipsync-<client>``). Where the models come from:

- ``--model_name NAME --model_dir DIR``: one model in DIR, the layout KServe's storage initializer gives an
  InferenceService with a ``storageUri`` (``/mnt/models``): the per-client ServingRuntime.
- ``--repository_dir DIR``: KServe multi-model serving. The model agent pulls each ``TrainedModel`` into
  ``DIR/<name>/`` and calls ``POST /v2/repository/models/<name>/load`` (``.../unload`` when it is deleted);
  folders already present at start are loaded. ``--base_model REF`` loads the base CLIP every adapter shares.
- ``--load NAME=DIR`` (repeatable) and ``--champions FILE`` (local deploy's record, re-read on every load).
- ``clipsync serve`` (:func:`serve_main`): the client's champions from ``{state_dir}/serving/champions.json``
  (what deploy recorded), else from the registry, on ``serving.host`` (127.0.0.1 by default).

Every ``serving`` setting is also an option of the same name (``--max_upload_mb``...), over ``--client_config``.
Option names never abbreviate and never collide with kserve's own parser (``tests/test_kserve_adapter.py``);
unknown options are an error, so a typo in a ServingRuntime fails the pod at start. A model folder that cannot
be served (missing file, wrong checksum, other base) stops the start with the file named (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger("clipsync.serving")

#: Exit status of a server that could not start (bad option: 2, as argparse).
EXIT_STARTUP_FAILED = 1


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


# ------------------------------------------------------------------------------------------------ building


def _size_thread_pools(settings: Any) -> int:
    """Size torch's and faiss' thread pools from ``serving.threads`` (0: the CPUs the process may use, its cgroup
    quota or affinity, never the node's core count) and cap numpy's BLAS threads at ``serving.blas_threads``.

    A one-query product over a library below ``approx_threshold`` takes about 0.2 ms single-threaded; a
    multi-threaded OpenBLAS on a busy node spent about 8 ms handing the work between its threads (measured on
    the 2-core development machine, 10k x 128 vectors): BLAS keeps its own, smaller cap (0 leaves its default).

    Returns:
        The thread count given to torch, faiss and the video decoder.
    """
    import faiss
    import torch

    threads = settings.cpu_threads
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    if settings.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=settings.blas_threads, user_api="blas")
    logger.info("threads: %d for torch, faiss and video decoding, %d for BLAS", threads, settings.blas_threads)
    return threads


def build_server(
    settings: Any,
    specs: list[Any],
    *,
    champions: Path | None = None,
    cache_dir: str | Path | None = None,
    query_log_uri: str = "",
    frame_config: Any = None,
    face_config: Any = None,
    repository_dir: str | Path | None = None,
    kind: str | None = None,
    base_model: str | None = None,
    require_release: bool = False,
    policy: Any = None,
    encryption: Any = None,
) -> tuple[Any, list[Any]]:
    """Load the models and build the server (not started).

    Args:
        settings: :class:`serving.config.ServingConfig`.
        specs: :class:`serving.repository.ModelSpec` of the models to load at start (readiness after them).
        champions: ``champions.json`` the repository's load endpoint re-reads (local deploy writes it).
        cache_dir: MediaPipe face models (lipsync) and fetched base models.
        query_log_uri: Object store(s) of the query log and the feedback (``{client}`` allowed); ``""`` or
            ``"off"``: none (and no feedback is accepted).
        frame_config: ``FrameExtractionConfig`` of the client (lipsync); default settings if ``None``.
        face_config: ``FaceTrackingConfig`` of the client (lipsync).
        repository_dir: KServe's model agent folder (``/mnt/models``): models load by name from ``<dir>/<name>``;
            folders already there are loaded at start.
        kind: The one predictor kind of this server (a KServe runtime); ``None``: detected per folder.
        base_model: The base CLIP shared by every adapter (loaded now); ``None``: any base, on demand.
        require_release: Refuse model folders without ``release.json`` (cluster runtimes).
        policy: Who may call what (:class:`serving.auth.AccessPolicy`); ``None``: from the settings'
            ``tokens_env`` / ``tokens_file`` / ``admin_token_env``.
        encryption: The client config's ``encryption`` settings for the query log's objects (``None``: none).

    Returns:
        The server and the models loaded at start.

    Raises:
        components.common.errors.ConfigError: A token setting names an unset variable, a file that is not a
            valid token map, or no token is configured on a server listening beyond loopback.
        serving.folder_error.ModelFolderError: If a start model's folder cannot be served (file named).
        components.face_tracking.models.FaceModelError: If a lip-sync server's face models are missing or altered.
    """
    from serving import kserve_adapter  # first: kserve must be imported with a clean command line
    from serving.admission import Admission
    from serving.auth import load_policy
    from serving.feedback import FeedbackLog
    from serving.querylog import QueryLog, open_query_log_store
    from serving.repository import ClipsyncRepository, ModelFactory
    from serving.routes import RouteContext, install

    policy = load_policy(settings) if policy is None else policy
    admission = Admission(settings.max_queue, settings.request_timeout_s)
    _size_thread_pools(settings)
    if kind == "lipsync" or any(s.kind == "lipsync" for s in specs):
        from components.face_tracking.models import verify_face_models

        if cache_dir is None:
            raise FileNotFoundError("a lip-sync server needs --cache_dir with the MediaPipe face models")
        verify_face_models(Path(cache_dir))  # a pod with missing or altered face models fails at start
    log_store = open_query_log_store(query_log_uri, encryption)
    query_log = QueryLog(log_store, settings.query_log_flush_entries, settings.query_log_flush_s)
    feedback_log = FeedbackLog(log_store, settings.feedback_per_minute)
    factory = ModelFactory(settings, cache_dir, query_log, frame_config, face_config, base_model, feedback_log)
    repository = ClipsyncRepository(
        factory,
        {s.name: s for s in specs},
        champions,
        Path(repository_dir) if repository_dir else None,
        kind,
        require_release,
    )
    for spec in specs:
        repository.load(spec.name)
    repository.load_present()
    server = kserve_adapter.ClipsyncModelServer(
        host=settings.host,
        registered_models=repository,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        policy=policy,
        admission=admission,
        max_message=settings.max_upload_bytes + 1024 * 1024,
        install_routes=lambda app: install(app, RouteContext(repository, settings, policy, admission)),
        agent_port=settings.agent_port,
        on_shutdown=lambda: _close_logs(feedback_log, query_log),
    )
    return server, list(repository.get_models().values())


def _close_logs(*logs: Any) -> None:
    """At shutdown: write what the feedback and query logs still hold."""
    for log in logs:
        log.close()


# ------------------------------------------------------------------------------------------------ clipsync serve


def champion_specs(config: Any, clip_dir: str | Path | None = None, lipsync_dir: str | Path | None = None) -> list[Any]:
    """The models ``clipsync serve`` loads for a client.

    ``clip-<client>`` from ``clip_dir``, else the version local deploy recorded in ``champions.json`` (the last
    deploy or rollback that completed: it agrees with the registry), else the registry's ``champion``
    (downloaded once into ``{state_dir}/serving/models/<name>/v<version>``); the same for ``lipsync-<client>``.
    A model with none of them is skipped with a warning.
    """
    from components.common import tracking as tr
    from components.common.champions import champion_version, read_champions
    from components.common.names import registered_name
    from serving.repository import ModelSpec

    state_dir = Path(config.state_dir)
    recorded = read_champions(state_dir)
    specs: list[ModelSpec] = []
    for model, kind, explicit in (("clip", "clip-search", clip_dir), ("lipsync", "lipsync", lipsync_dir)):
        name = registered_name(model, config.client_id)
        if explicit:
            specs.append(ModelSpec(name, kind, str(Path(explicit).resolve())))
        elif name in recorded:
            specs.append(ModelSpec(name, kind, recorded[name]["path"], str(recorded[name].get("version", ""))))
        else:
            version = champion_version(config.tracking, model, config.client_id)
            if version is None:
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
    tokens_env: str | None = None,
    tokens_file: str | None = None,
    admin_token_env: str | None = None,
) -> int:
    """``clipsync serve``: serve a client's champions (or explicit folders) on ``serving.host``; blocks.

    Args:
        config: The client's ``ClientConfig`` (its ``serving`` section, default :class:`ServingConfig`).
        http_port: Overrides ``serving.http_port``.
        grpc_port: Overrides ``serving.grpc_port``.
        clip_dir: Serve this CLIP model folder instead of the champion.
        lipsync_dir: Serve this lip-sync model folder instead of the champion.
        tokens_env: Overrides ``serving.tokens_env`` (the variable holding the client tokens' JSON map).
        tokens_file: Overrides ``serving.tokens_file`` (a file holding that map).
        admin_token_env: Overrides ``serving.admin_token_env`` (the variable holding the admin token).

    Returns:
        The exit code (2 when there is nothing to serve, 1 when the server could not start).
    """
    from components.common.champions import champions_file
    from components.common.errors import ConfigError

    configure_logging()
    overrides = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "tokens_env": tokens_env,
        "tokens_file": tokens_file,
        "admin_token_env": admin_token_env,
    }
    try:
        settings = replace(config.serving, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        logger.error("model server not started: %s", exc)
        sys.stderr.write(f"model server not started: {exc}\n")
        return EXIT_STARTUP_FAILED
    specs = champion_specs(config, clip_dir, lipsync_dir)
    if not specs:
        logger.error("nothing to serve for %s: no champion and no explicit model folder", config.client_id)
        return 2
    return _start(
        settings,
        specs,
        champions=champions_file(Path(config.state_dir)),
        cache_dir=config.cache_dir,
        query_log_uri=settings.query_log_uri or config.storage.artifacts_uri,
        encryption=config.encryption,
        frame_config=config.frame_extraction,
        face_config=config.face_tracking,
    )


def _start(settings: Any, specs: list[Any], **kwargs: Any) -> int:
    """Build and run the server; a start-up failure is logged with its cause and gives exit status 1."""
    from components.common.errors import ConfigError
    from components.face_tracking.models import FaceModelError

    try:
        server, models = build_server(settings, specs, **kwargs)
    except (ConfigError, FaceModelError, FileNotFoundError, RuntimeError, ValueError) as exc:
        logger.error("model server not started: %s", exc)
        sys.stderr.write(f"model server not started: {exc}\n")
        return EXIT_STARTUP_FAILED
    server.start(models)
    return 0


# ------------------------------------------------------------------------------------------------ python -m


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m serving.server`` (no abbreviations: see the module doc)."""
    from serving.config import PREDICTOR_KINDS, ServingConfig

    p = argparse.ArgumentParser(
        prog="python -m serving.server", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    p.add_argument("--kind", choices=PREDICTOR_KINDS, help="the one predictor kind of this server (KServe runtime)")
    p.add_argument("--model_name", help="name of the model in --model_dir (KServe: the InferenceService name)")
    p.add_argument("--model_dir", help="one model's folder (KServe storage initializer: /mnt/models)")
    p.add_argument("--repository_dir", help="a folder of model folders loaded by name (KServe model agent)")
    p.add_argument("--base_model", help="the base CLIP every adapter on this server shares (loaded at start)")
    p.add_argument("--load", action="append", default=[], metavar="NAME=DIR", help="a model to serve (repeatable)")
    p.add_argument("--champions", help="champions.json re-read by the repository load endpoint")
    p.add_argument("--client_config", help="client config YAML (serving, frame_extraction, face_tracking sections)")
    p.add_argument("--cache_dir", help="MediaPipe face models (default: the client config's cache_dir)")
    types = {"int": int, "float": float, "str": str, "bool": _bool}
    for f in fields(ServingConfig):
        p.add_argument(f"--{f.name}", type=types[str(f.type)], help=f"serving.{f.name} (default {f.default!r})")
    return p


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _specs_from(args: argparse.Namespace) -> list[Any]:
    from serving.repository import ModelSpec, detect_kind

    specs = []
    if args.model_dir:
        specs.append(ModelSpec(args.model_name, detect_kind(args.model_dir, args.model_name), args.model_dir))
    for item in args.load:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--load expects NAME=DIR, got {item!r}")
        specs.append(ModelSpec(name, detect_kind(path, name), str(Path(path).resolve())))
    champions = Path(args.champions) if args.champions else None
    if champions is not None and champions.is_file():
        known = {s.name for s in specs}
        for name, entry in json.loads(champions.read_text()).items():
            if name not in known:
                specs.append(
                    ModelSpec(name, detect_kind(entry["path"], name), entry["path"], str(entry.get("version", "")))
                )
    return specs


def main(argv: list[str] | None = None) -> int:
    """Command line of the server (the ServingRuntimes' entry point); blocks while serving."""
    from serving.config import ServingConfig

    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.model_dir) != bool(args.model_name):
        parser.error("--model_dir and --model_name go together")
    overrides = {f.name: getattr(args, f.name) for f in fields(ServingConfig) if getattr(args, f.name) is not None}
    try:  # a bad config file or an out-of-range option: a usage error naming the setting
        config = None
        if args.client_config:
            from components.config import load_config

            config = load_config(args.client_config)
        settings = replace(config.serving if config is not None else ServingConfig(), **overrides)
        specs = _specs_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not specs and not args.repository_dir:
        parser.error("nothing to serve: give --model_name/--model_dir, --repository_dir, --load or --champions")
    in_cluster = bool(args.model_dir or args.repository_dir)
    cache_dir = args.cache_dir or (config.cache_dir if config is not None else None)
    query_log_uri = settings.query_log_uri or (config.storage.artifacts_uri if config is not None else "")
    if not query_log_uri:
        logger.warning("no query log: set --query_log_uri (or serving.query_log_uri)")
    return _start(
        settings,
        specs,
        champions=Path(args.champions) if args.champions else None,
        cache_dir=cache_dir,
        query_log_uri=query_log_uri,
        encryption=config.encryption if config is not None else None,
        frame_config=config.frame_extraction if config is not None else None,
        face_config=config.face_tracking if config is not None else None,
        repository_dir=args.repository_dir,
        kind=args.kind,
        base_model=args.base_model,
        require_release=in_cluster,
    )


if __name__ == "__main__":
    sys.exit(main())

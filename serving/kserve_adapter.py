"""The one module that imports kserve and touches its internals (kserve 0.21); the rest of clipsync takes kserve's
public names (``Model``, ``InferRequest``, ``InvalidInput``...) and its SDK (``kserve.V1beta1InferenceService``...)
from here.

What it changes, and why:

- Import: ``kserve.model_server`` parses ``sys.argv`` when it is first imported, and our options (or
  ``clipsync serve --config``, ``clipsync render-manifests --config``) are prefixes of its own (``--config`` ->
  ``--configure_logging``): the process exited at import. This module imports kserve with an empty command line;
  our entry points parse every option themselves and pass kserve what it needs as constructor arguments.
  ``tests/test_kserve_adapter.py`` checks that no other module imports kserve.
- Binding: KServe hardcodes ``0.0.0.0`` (uvicorn) and ``[::]`` (gRPC); :class:`ClipsyncModelServer` binds
  ``host`` (127.0.0.1 for ``clipsync serve``, every address in a pod).
- One FastAPI app per server (:func:`build_app`) instead of kserve's module-level ``app``, so the deploy step can
  run the same app in-process to verify a version (no global routes registered twice).
- gRPC: a bearer-token interceptor and a receive limit that fits a video upload.
- Model metadata names the loaded version (``versions: ["3"]``): deploy's probe.
- Repository load/unload: loads run in a worker thread (the other models keep answering) and keep their error
  class (unknown model: 404, a bad model folder: 400) instead of kserve's blanket 503.

``KSERVE_INTERNALS_SHA256`` records the SHA-256 of each kserve function whose behaviour is re-implemented or relied on
here; ``tests/test_kserve_adapter.py`` recomputes them, so a kserve upgrade that changes one fails loudly and this
module is re-checked against the new code.
"""

from __future__ import annotations

import sys

# kserve.model_server parses sys.argv at import: give it an empty command line (see the module doc).
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    import kserve.model_server as _kserve_model_server
finally:
    sys.argv = _argv

import asyncio
import contextlib
import hashlib
import inspect
import logging
import signal
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from grpc import aio
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from kserve.utils.utils import from_np_dtype

#: kserve's public names, for the rest of clipsync (import them from here, never from kserve).
__all__ = [
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InferenceError",
    "InvalidInput",
    "Model",
    "ModelNotFound",
    "ModelRepository",
    "from_np_dtype",
    "kserve",
]

logger = logging.getLogger("clipsync.serving")

#: Options of kserve's own parser that our servers also take, with the same meaning.
SHARED_OPTIONS = frozenset({"--http_port", "--grpc_port", "--model_name"})

#: kserve callables whose code this module re-implements or relies on -> SHA-256 of their source (kserve 0.21.0).
KSERVE_INTERNALS_SHA256 = {
    "ModelServer.__init__": "1029569ff98894af0f4dafb28473cbe8a320e114613e088074722eb7ad5c6570",
    "ModelServer.start": "efa96502018b04e9e1908fd8734fbddc84071d24256ae4cbd25d0e31bdd27d84",
    "ModelServer._register_and_check_atleast_one_model_is_ready": "ea1c6e647744e3fdf0fc2c8fe20a0560b0f344ed69440a4d30654aca50b48b73",  # noqa: E501
    "GRPCServer.__init__": "d2f75891584958f5dc6572c2897a684c5c1e02834ec68d55314e25c577edbdd3",
    "GRPCServer.start": "f4ea7b4eb6f0d9f7ac4947c7bda31531f4bf870529f9de0964a2dad2f6a7fb5e",
    "RESTServer.__init__": "c85b4ca79cab7f7c6156be4617962e06d2b3218f1f36bd23180fcf95f67ecbc7",
    "RESTServer._register_endpoints": "841b714394633cb5213a28996b019eb7f9796babcc62ffe5cdb2790ef99e6b9e",
    "RESTServer._add_exception_handlers": "ca0a28c1b356a6eb905d3cd11e2eaf431235a84ec2d1649cba07f2be48c27bc1",
    "RESTServer._add_middlewares": "eb71860ac9500c56d880d745367d2afe7edf315ef81a1f8e0e12921ee160f4df",
    "RESTServer.start": "5889df83b6d57baa944904f35fd0d8acfa032d664c3b983543d6e349ca93f5a3",
    "DataPlane.model_metadata": "df238ff202a15b32922f2e4c70c172ddf760c5d6411de90a1f90da112407c72c",
    "ModelRepositoryExtension.load": "410a47ae35bfec12c6d8bc2f896c11832b96371bdcbc47d96b23f89eb4e6f7c0",
    "ModelRepositoryExtension.unload": "a0de50cea4472c10324c71603df454f8e236398721ba7f845d78276af426b1de",
    "model_server.parser": "a12e95b256df2a3e7a58d7b4cffdfab8fafbe15a51687ddd85db133c3a5ab49e",
}


def kserve_option_strings() -> set[str]:
    """Every option string of kserve's own command-line parser (``--http_port``, ``--configure_logging``...)."""
    return {s for action in _kserve_model_server.parser._actions for s in action.option_strings}


def internals_fingerprints() -> dict[str, str]:
    """SHA-256 of the current source of every entry of ``KSERVE_INTERNALS_SHA256`` (the parser: of its module)."""
    classes = {
        "ModelServer": ModelServer,
        "GRPCServer": GRPCServer,
        "RESTServer": RESTServer,
        "DataPlane": DataPlane,
        "ModelRepositoryExtension": ModelRepositoryExtension,
        "model_server": _kserve_model_server,
    }
    out = {}
    for name in KSERVE_INTERNALS_SHA256:
        owner, _, attr = name.partition(".")
        obj = _kserve_model_server if attr == "parser" else getattr(classes[owner], attr)
        out[name] = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------ data plane


class ClipsyncDataPlane(DataPlane):
    """V2 model metadata also names the loaded registry version (``versions``): what deploy's probe reads."""

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        version = str(getattr(self.get_model_from_registry(model_name), "version", "") or "")
        if version:
            metadata["versions"] = [version]
        return metadata


class ClipsyncRepositoryExtension(ModelRepositoryExtension):
    """Repository load in a worker thread, with the error class kept (404 unknown, 400 bad folder, 503 else)."""

    async def load(self, model_name: str) -> dict:
        try:
            await asyncio.to_thread(self._model_registry.load, model_name)
        except (ModelNotFound, InvalidInput):
            raise
        except Exception as exc:
            raise ModelNotReady(model_name, f"{type(exc).__name__}: {exc}") from None
        if not await self._model_registry.is_model_ready(model_name):
            raise ModelNotReady(model_name)
        return {"name": model_name, "load": True}

    async def unload(self, model_name: str) -> dict:
        await super().unload(model_name)
        return {"name": model_name, "unload": True}


def build_app(dataplane: DataPlane, extension: ModelRepositoryExtension) -> FastAPI:
    """A fresh FastAPI app with kserve's V1/V2 endpoints, middlewares and error handlers (no module globals)."""
    app = FastAPI(title="clipsync model server", docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)
    rest = RESTServer(app, dataplane, extension, 0)
    rest._add_middlewares(app)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    return app


# ------------------------------------------------------------------------------------------------ gRPC


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
    """KServe's gRPC server on ``host:port`` (not ``[::]:port``), with auth and a receive limit for uploads."""

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


# ------------------------------------------------------------------------------------------------ server


class ClipsyncModelServer(ModelServer):
    """``ModelServer`` bound to ``host``, on its own app, with auth, limits and a clean shutdown.

    Args:
        host: Address of both listeners.
        registered_models: The model repository.
        http_port: REST port.
        grpc_port: gRPC port.
        token: Bearer token for gRPC (REST checks it in :mod:`serving.routes`); empty: none.
        max_message: Smallest gRPC receive limit (bytes).
        install_routes: Called with the fresh app to add clipsync's routes and middleware.
        on_shutdown: Called once both listeners stopped and the models were unloaded (query log flush).
    """

    def __init__(
        self,
        host: str,
        registered_models: ModelRepository,
        http_port: int,
        grpc_port: int,
        token: str = "",
        max_message: int = 0,
        install_routes: Callable[[FastAPI], None] | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            workers=1,
            registered_models=registered_models,
            enable_docs_url=False,
            grace_period=5,
        )
        self.dataplane = ClipsyncDataPlane(model_registry=self.registered_models)
        self.model_repository_extension = ClipsyncRepositoryExtension(model_registry=self.registered_models)
        self.host = host
        self.token = token
        self.max_message = max_message
        self.on_shutdown = on_shutdown
        self.app = build_app(self.dataplane, self.model_repository_extension)
        if install_routes is not None:
            install_routes(self.app)

    def start(self, models: list[Any]) -> None:
        """Serve until SIGINT/SIGTERM (blocks): REST on ``host:http_port``, gRPC on ``host:grpc_port``."""
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            self.app,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        logger.info("REST server on %s:%d", self.host, self.http_port)
        # The app is complete (build_app): serve it as is, without kserve's create_application on its global app.
        self.servers.append(self._rest_server._server.serve())
        if self.enable_grpc:
            self._grpc_server = HostGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=vars(_kserve_model_server.args),
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

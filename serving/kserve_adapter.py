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
  ``host`` (127.0.0.1 for ``clipsync serve``, every address in a pod), plus an optional loopback-only listener for
  KServe's model agent (repository load/unload only, see ``serving.auth``).
- One FastAPI app per server (:func:`build_app`) instead of kserve's module-level ``app``, so the deploy step can
  run the same app in-process to verify a version (no global routes registered twice).
- A search's path, ``POST /v1/models/<name>:predict``, is answered by :class:`LeanV1Predict` (an ASGI middleware
  inside the access gate) with kserve's own V1 handler, without FastAPI's router and dependency resolution: on a
  lone search FastAPI's and Starlette's code had a fifth of the event loop's time.
- Open Inference Protocol conformance: every malformed request is HTTP 400 / INVALID_ARGUMENT with a short
  message (kserve answered 500 and echoed payloads: a video sent with the binary extension, a non-numeric
  ``Inference-Header-Content-Length``, FastAPI's 422 bodies); the binary extension carries any bytes (kserve
  decoded them as UTF-8); metadata always has ``versions`` (a list, never ``null``: deploy's probe reads it) and
  the models' tensors, also over gRPC, and over REST the model's ``parameters`` (the OIP's optional metadata
  field; a search index's build and recall figures); gRPC answers fill ``raw_output_contents`` (the predictors hand
  numpy outputs over); Triton's ``ModelConfig`` over gRPC (:mod:`serving.model_config`).
- Access and load: a gRPC interceptor applies the same tokens, per-client permissions and per-model queues as the
  REST gate (:mod:`serving.routes`); every inference has a deadline; a model that is not ready is HTTP 503 /
  UNAVAILABLE (kserve's data plane would reload it inline); typed refusals (:mod:`serving.errors`) keep their
  status on both protocols, and anything unexpected is a 500 / INTERNAL without details (the log has them).
- Repository load/unload: loads run in a worker thread (the other models keep answering) and keep their error
  class (unknown model: 404, a bad model folder: 400) instead of kserve's blanket 503.

``KSERVE_INTERNALS_SHA256`` records the SHA-256 of each kserve function whose behaviour is re-implemented or relied on
here; ``tests/test_kserve_adapter.py`` recomputes them, so a kserve upgrade that changes one fails loudly and this
module is re-checked against the new code.

Why this file is long: every use of kserve, its internals included, is here on purpose, so that a kserve
upgrade is checked in one place (tests/test_kserve_adapter.py fingerprints what it relies on).
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
import math
import re
import signal
import struct
import uuid
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse, Response
from grpc import aio
from kserve import InferInput, InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import RequestedOutput, deserialize_bytes_tensor
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from kserve.utils.numpy_codec import from_np_dtype, to_np_dtype
from starlette.exceptions import HTTPException

#: kserve's public names, for the rest of clipsync (import them from here, never from kserve).
__all__ = [
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
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
#: Longest error message a caller gets (a message never carries the payload; this bounds any that would).
MAX_MESSAGE = 300
HEADER_LENGTH = "inference-header-content-length"
_V1_PREDICT = re.compile(r"^/v1/models/([^/]+):predict$")  # the path Starlette's route for kserve's would match

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
    "RESTServer.start": "5889df83b6d57baa944904f35fd0d8acfa032d664c3b983543d6e349ca93f5a3",
    "DataPlane.model_metadata": "df238ff202a15b32922f2e4c70c172ddf760c5d6411de90a1f90da112407c72c",
    "ModelRepositoryExtension.load": "410a47ae35bfec12c6d8bc2f896c11832b96371bdcbc47d96b23f89eb4e6f7c0",
    "ModelRepositoryExtension.unload": "a0de50cea4472c10324c71603df454f8e236398721ba7f845d78276af426b1de",
    "model_server.parser": "a12e95b256df2a3e7a58d7b4cffdfab8fafbe15a51687ddd85db133c3a5ab49e",
    "DataPlane.get_model": "2d5cbc38f433d29737487e38484ca252bfc290423340d34a6a95d65b44efee05",
    "DataPlane.decode": "d24588584bae5b4cb8a2aa3471c54f8d6ff0aa79707e6bdc2b12216d17536134",
    "DataPlane.decode_inference_request": "d9b169889aa3e5640287be64d1a86dffcebe3e69a692abb0c189344030b3b3c4",
    "DataPlane.infer": "c2d45f0682235cdc2907c0fd0d786f00502a4faead0e1065c7e6f148219b2148",
    "InferenceServicer.ModelMetadata": "5a8a0d47b9ee471ff1980ba037261df6b74d594a03594cd972da470450c798a6",
    "InferenceServicer.ModelInfer": "49bf48c9159ebe9f774b162212c855f6fae6bd1ef72198efcaa66350c03a4efa",
    "ExceptionToStatusInterceptor.handle_exception": "f9a4d0abc9843c24283d2b17aadcfe692726ef6815da57e8beb65b88677f63dc",
    "V1Endpoints.predict": "b1da6ffcb904c89de5ad68ad7fbae203cccce62f174dc462678cbb8533fa065e",
    "V2Endpoints.infer": "57fdb35815a30a116dcc973cc640dda4970b6d00e58988e193d50e1484bc4f94",
    "V2Endpoints.load": "f0ee6005e63fec842fb17126b99b06f12a5d7a3aacf79d2e18c1a4a345703591",
    "V2Endpoints.unload": "fe03d04297b39b1a61b1f92924fdd1d3ef6e0cc8ecff11a58f06e539a60453b7",
    "InferInput.__init__": "7e7020cf23440573367e0bd646e9b31fdd967fb371fb57e45a9ad65cb1a699a5",
    "InferRequest.__init__": "98ae5376e2f6915ad91829b81177a5210a84b09dace8b18de8e7af8a1d7f5709",
    "InferRequest.from_inference_request": "ea0ef57d24c079c84d37e60fd8e118eabcdf2aca7f43a4dc4958abf023dcda44",
    "InferResponse.to_rest": "94aecc96b19983f569dd53c85d028766555c3066c650a4c9dae0d62cf6f97952",
    "InferResponse.to_grpc": "d6a37d4aa131004080c59081daff2a4b05df90495be51c9aa142e16bf8f2a33f",
    "Model.__call__": "acf019685a2c07deba6359321ff27806fd062e86902caf72b930779867e04ee1",
    "deserialize_bytes_tensor": "b6748b09da9e60c39956228c82fbbfaaa2f7e9675c4a716de6f4fd835edb8d05",
}


def kserve_option_strings() -> set[str]:
    """Every option string of kserve's own command-line parser (``--http_port``, ``--configure_logging``...)."""
    return {s for action in _kserve_model_server.parser._actions for s in action.option_strings}


def internals_fingerprints() -> dict[str, str]:
    """SHA-256 of the current source of every entry of ``KSERVE_INTERNALS_SHA256`` (the parser: of its module)."""
    owners = {
        "ModelServer": ModelServer,
        "GRPCServer": GRPCServer,
        "RESTServer": RESTServer,
        "DataPlane": DataPlane,
        "ModelRepositoryExtension": ModelRepositoryExtension,
        "InferenceServicer": InferenceServicer,
        "ExceptionToStatusInterceptor": ExceptionToStatusInterceptor,
        "V1Endpoints": V1Endpoints,
        "V2Endpoints": V2Endpoints,
        "InferInput": InferInput,
        "InferResponse": InferResponse,
        "InferRequest": InferRequest,
        "Model": Model,
        "deserialize_bytes_tensor": deserialize_bytes_tensor,
    }
    out = {}
    for name in KSERVE_INTERNALS_SHA256:
        owner, _, attr = name.partition(".")
        if attr == "parser":
            obj = _kserve_model_server
        elif attr:
            obj = getattr(owners[owner], attr)
        else:
            obj = owners[owner]
        out[name] = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    return out


def short(message: object) -> str:
    """A message for a caller: one line, at most :data:`MAX_MESSAGE` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


# ------------------------------------------------------------------------------------------------ V2 tensors

#: JSON element checks per datatype: (python types accepted, inclusive range or None).
_INT_RANGES = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}


def _flatten(data: Any, out: list[Any], limit: int) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out, limit)
        else:
            out.append(item)
        if len(out) > limit:
            return


def input_tensor(inp: InferInput, datatypes: tuple[str, ...], max_elements: int) -> np.ndarray:
    """An input of a V2 request (REST JSON, REST binary extension, gRPC contents or raw) as a checked array.

    Args:
        inp: The request input.
        datatypes: The datatypes this input may have.
        max_elements: Most elements accepted.

    Raises:
        InvalidInput: Another datatype, a shape that is not a list of non-negative integers or does not match
            the data, more elements than ``max_elements``, a value out of the datatype's range, bytes that are not
            a serialized BYTES tensor (each with a short message naming the input, never its data).
    """
    name = inp.name
    if inp.datatype not in datatypes:
        raise InvalidInput(f"input '{name}' must be {' or '.join(datatypes)}, got {short(inp.datatype)[:20]}")
    shape = inp.shape
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > max_elements:
        raise InvalidInput(f"input '{name}': shape {list(shape)[:8]} holds more than {max_elements} elements")
    raw = getattr(inp, "_raw_data", None)
    if raw is not None:
        if inp.datatype == "BYTES":
            try:
                values = deserialize_bytes_tensor(raw)
            except struct.error:
                raise InvalidInput(f"input '{name}': binary data is not a serialized BYTES tensor") from None
        else:
            itemsize = np.dtype(to_np_dtype(inp.datatype)).itemsize
            if len(raw) != count * itemsize:
                raise InvalidInput(f"input '{name}': {len(raw)} bytes of data for shape {list(shape)}")
            values = np.frombuffer(raw, dtype=to_np_dtype(inp.datatype))
        if len(values) != count:
            raise InvalidInput(f"input '{name}': {len(values)} elements for shape {list(shape)}")
        return values.reshape(shape)
    data = inp.data
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': 'data' must be a list")
    flat: list[Any] = []
    _flatten(data, flat, count)
    if len(flat) != count:
        raise InvalidInput(
            f"input '{name}': {'more than ' if len(flat) > count else ''}{len(flat)} elements for shape {list(shape)}"
        )
    if inp.datatype == "BYTES":
        if not all(isinstance(v, str | bytes) for v in flat):
            raise InvalidInput(f"input '{name}': BYTES elements must be strings")
        return np.array(flat, dtype=np.object_).reshape(shape)
    if inp.datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input '{name}': BOOL elements must be true or false")
    elif inp.datatype in _INT_RANGES:
        low, high = _INT_RANGES[inp.datatype]
        if not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in flat):
            raise InvalidInput(f"input '{name}': {inp.datatype} elements must be integers in {low}..{high}")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in flat):
        raise InvalidInput(f"input '{name}': {inp.datatype} elements must be finite numbers")
    return np.array(flat, dtype=to_np_dtype(inp.datatype)).reshape(shape)


def input_text(value: Any, name: str, where: str) -> str:
    """A text element of a request (``str``, or UTF-8 ``bytes`` from a BYTES tensor), stripped.

    Raises:
        InvalidInput: Bytes that are not UTF-8, or not a string at all.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}: '{name}' is not UTF-8") from None
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    return value.strip()


def output(name: str, array: np.ndarray) -> InferOutput:
    """An output tensor holding ``array`` as is: REST writes it as JSON (or binary when asked), gRPC as
    ``raw_output_contents`` (what KServe's own servers do and tritonclient's ``as_numpy`` reads)."""
    array = np.asarray(array)
    datatype = "BYTES" if array.dtype == np.object_ else from_np_dtype(array.dtype)
    return InferOutput(name=name, shape=list(array.shape), datatype=datatype, data=array)


def requested_outputs(request: InferRequest) -> set[str]:
    return {o.name for o in (request.request_outputs or [])}


def v2_response(
    request: InferRequest, model: str, version: str, outputs: list[InferOutput], parameters: dict | None = None
) -> InferResponse:
    """The answer to a V2 request: its id, the requested outputs, binary when REST asked for it (gRPC always
    sends numpy outputs raw; passing kserve the request's flag there makes it test an array's truth value)."""
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model,
        model_version=version,
        infer_outputs=outputs,
        parameters=parameters,
        use_binary_outputs=request.use_binary_outputs and not request.from_grpc,
        requested_outputs=request.request_outputs,
    )


# ------------------------------------------------------------------------------------------------ data plane


def _decode_binary_request(body: bytes, header_length: str, model_name: str) -> InferRequest:
    """A V2 REST request with the binary data extension: a JSON header of ``header_length`` bytes, then the
    binary data of the inputs that declare ``parameters.binary_data_size``, in order (any bytes: a video too)."""
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise InvalidInput("Inference-Header-Content-Length must be an integer from 1 to the body length")
    split = int(header_length)
    try:
        header = orjson.loads(body[:split])
    except orjson.JSONDecodeError:
        raise InvalidInput("the inference header is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("the inference header must be a JSON object with a list 'inputs'")
    inputs, offset = [], split
    for i, item in enumerate(header["inputs"]):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("name", "datatype")):
            raise InvalidInput(f"input {i}: expected an object with 'name', 'shape', 'datatype'")
        params = item.get("parameters") or {}
        inp = InferInput(item["name"], item.get("shape"), item["datatype"], item.get("data"), params or None)
        if not isinstance(params, dict):
            raise InvalidInput(f"input '{inp.name}': 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(body) - offset:
                raise InvalidInput(f"input '{inp.name}': binary_data_size does not fit the body")
            inp._raw_data = body[offset : offset + size]
            offset += size
        elif item.get("data") is None:
            raise InvalidInput(f"input '{inp.name}': neither 'data' nor parameters.binary_data_size")
        inputs.append(inp)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes after the inputs' binary data")
    outputs = header.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    request_id = header.get("id")
    return InferRequest(
        model_name,
        inputs,
        request_id=request_id if isinstance(request_id, str) else None,
        parameters=header.get("parameters") if isinstance(header.get("parameters"), dict) else None,
        request_outputs=[RequestedOutput(o["name"], o.get("parameters")) for o in outputs] if outputs else None,
    )


class ClipsyncDataPlane(DataPlane):
    """kserve's data plane with clipsync's request decoding, metadata, readiness and deadline.

    Args:
        model_registry: The model repository.
        admission: The per-model queues and the deadline (:class:`serving.admission.Admission`).
    """

    def __init__(self, model_registry: ModelRepository, admission: Any) -> None:
        super().__init__(model_registry=model_registry)
        self.admission = admission

    async def model_metadata(self, model_name: str) -> dict:
        model = self.get_model_from_registry(model_name)
        version = str(getattr(model, "version", "") or "")
        metadata = {
            "name": model_name,
            "versions": [version] if version else [],
            "platform": "clipsync",
            "inputs": model.get_input_types(),
            "outputs": model.get_output_types(),
        }
        parameters = getattr(model, "metadata_parameters", dict)()
        return {**metadata, "parameters": parameters} if parameters else metadata

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        if not isinstance(body, bytes):
            return InferRequest.from_inference_request(body, model_name)
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        if HEADER_LENGTH in lowered:
            return _decode_binary_request(body, str(lowered[HEADER_LENGTH]).strip(), model_name)
        # A JSON body FastAPI did not parse (no JSON content type: tritonclient's JSON mode).
        from kserve.protocol.rest.v2_datamodels import InferenceRequest

        try:
            parsed = InferenceRequest.model_validate_json(body)
        except ValueError as exc:
            raise InvalidInput(f"invalid inference request: {_validation_summary(exc)}") from None
        return InferRequest.from_inference_request(parsed, model_name)

    async def infer(self, model_name: str, request: Any, headers: dict | None = None) -> tuple[Any, dict]:
        model = self.get_model_from_registry(model_name)
        if not model.ready:
            from serving.errors import NotReady

            raise NotReady(
                f"{model_name} is not ready (loading or stopping); retry shortly", headers={"Retry-After": "5"}
            )
        return await self.admission.within_deadline(super().infer(model_name, request, headers))


def _validation_summary(exc: Exception) -> str:
    """Where a body failed validation and why, without the offending values (pydantic echoes them)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors()[:3]]
        return short("; ".join(parts))
    return type(exc).__name__


class ClipsyncRepositoryExtension(ModelRepositoryExtension):
    """Repository load in a worker thread, with the error class kept (404 unknown, 400 bad folder, 503 else)."""

    async def load(self, model_name: str) -> dict:
        try:
            await asyncio.to_thread(self._model_registry.load, model_name)
        except (ModelNotFound, InvalidInput):
            raise
        except Exception as exc:
            raise ModelNotReady(model_name, short(f"{type(exc).__name__}: {exc}")) from None
        if not await self._model_registry.is_model_ready(model_name):
            raise ModelNotReady(model_name)
        return {"name": model_name, "load": True}

    async def unload(self, model_name: str) -> dict:
        await super().unload(model_name)
        return {"name": model_name, "unload": True}


# ------------------------------------------------------------------------------------------------ REST


async def _serving_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


async def _invalid_input(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": short(exc)}, status_code=400)


async def _invalid_body(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": f"invalid request body: {_validation_summary(exc)}"}, status_code=400)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": short(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": short(exc)}, status_code=404)


async def _not_ready(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": short(exc)}, status_code=503, headers={"Retry-After": "5"})


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return JSONResponse({"error": "internal error (logged by the server)"}, status_code=500)


def add_error_handlers(app: FastAPI) -> None:
    """clipsync's answers for every error class (after kserve's, which they replace)."""
    from serving.errors import ServingError

    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ModelNotReady, _not_ready)
    app.add_exception_handler(Exception, _unexpected)


def _without_nulls(value: Any) -> Any:
    """JSON without ``null`` members: the OIP schema types ``parameters``, ``model_version``... as object/string."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _v2_infer_route(dataplane: ClipsyncDataPlane) -> Callable:
    """``POST /v2/models/{name}/infer``: kserve's handler minus FastAPI's body parsing (its 422 answers echo the
    payload and accept no binary extension without a JSON content type) and minus the response model (which
    writes ``"parameters": null``, outside the OIP schema)."""

    async def infer(request: Request, model_name: str) -> Any:
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        headers = dict(request.headers)
        infer_request = dataplane.decode_inference_request(await request.body(), headers, model_name)
        response, _ = await dataplane.infer(model_name, infer_request, headers)
        rest, json_length = response.to_rest()
        if json_length is not None:  # the binary data extension (parameters.binary_data_output)
            binary_headers = {"inference-header-content-length": str(json_length)}
            return Response(rest, media_type="application/octet-stream", headers=binary_headers)
        return ORJSONResponse(_without_nulls(rest))

    return infer


def _v2_metadata_route(dataplane: ClipsyncDataPlane) -> Callable:
    """``GET /v2/models/{name}``: the metadata with its ``parameters`` (kserve's response model drops them)."""

    async def metadata(model_name: str) -> ORJSONResponse:
        return ORJSONResponse(await dataplane.model_metadata(model_name))

    return metadata


class LeanV1Predict:
    """ASGI middleware that answers ``POST /v1/models/{name}:predict`` (a search's path) itself and passes every
    other request on.

    The answer is kserve's own V1 handler's (``V1Endpoints.predict``: the model's readiness, orjson decoding, the
    data plane, an ORJSONResponse), reached without FastAPI's router (a match against every route) and its
    per-request dependency resolution: on a lone search FastAPI's and Starlette's code had a fifth of the event
    loop's time, a twentieth now (serving/README.md, the batching benchmark). Its errors get the app's own exception
    handlers, looked up by class as Starlette's ``ExceptionMiddleware`` does; one with no handler but
    ``Exception``'s goes on up to ``ServerErrorMiddleware`` (HTTP 500, logged), as from a route.

    Args:
        app: The rest of the middleware stack.
        dataplane: The server's data plane.
        owner: The FastAPI app whose exception handlers apply.
    """

    def __init__(self, app: Callable, dataplane: ClipsyncDataPlane, owner: FastAPI) -> None:
        self.app = app
        self.v1 = V1Endpoints(dataplane)
        self.owner = owner

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        match = _V1_PREDICT.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            response = await self.v1.predict(match.group(1), request)
        except Exception as exc:
            handler = next(
                (
                    self.owner.exception_handlers[cls]
                    for cls in type(exc).__mro__
                    if cls is not Exception and cls in self.owner.exception_handlers
                ),
                None,
            )
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def build_app(
    dataplane: ClipsyncDataPlane, extension: ModelRepositoryExtension, install: Callable[[FastAPI], None] | None = None
) -> FastAPI:
    """A fresh FastAPI app: ``install``'s routes and middleware and the V2 infer route first (they win), then
    kserve's V1/V2 endpoints and error handlers, then clipsync's error handlers (no module globals);
    :class:`LeanV1Predict` answers V1 predict requests once ``install``'s gate let them through.

    kserve's timing middleware is left out: it logs two lines per request on the event loop, and under 128
    clients the server admitted 160-230 searches/s with it and 234-337 without (``benchmarks/serving_load.py``,
    on the shared 2-core machine); uvicorn's access log still records every request.
    """
    app = FastAPI(title="clipsync model server", docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)
    app.add_middleware(LeanV1Predict, dataplane=dataplane, owner=app)  # inside install's gate (added after it)
    if install is not None:
        install(app)
    app.add_api_route("/v2/models/{model_name}/infer", _v2_infer_route(dataplane), methods=["POST"])
    app.add_api_route("/v2/models/{model_name}", _v2_metadata_route(dataplane), methods=["GET"])
    rest = RESTServer(app, dataplane, extension, 0)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    add_error_handlers(app)
    return app


def build_agent_app(extension: ModelRepositoryExtension) -> FastAPI:
    """The loopback listener's app: repository load and unload only, as KServe's model agent calls them."""
    app = FastAPI(title="clipsync model agent endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    v2 = V2Endpoints(dataplane=None, model_repository_extension=extension)
    app.add_api_route("/v2/repository/models/{model_name}/load", v2.load, methods=["POST"])
    app.add_api_route("/v2/repository/models/{model_name}/unload", v2.unload, methods=["POST"])
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(ModelNotFound, _not_found)
    app.add_exception_handler(ModelNotReady, _not_ready)
    app.add_exception_handler(Exception, _unexpected)
    return app


# ------------------------------------------------------------------------------------------------ gRPC

_MODEL_FIELD = {  # method -> request field naming the model
    "ModelInfer": "model_name",
    "ModelMetadata": "name",
    "ModelReady": "name",
    "ModelConfig": "name",
    "RepositoryModelLoad": "model_name",
    "RepositoryModelUnload": "model_name",
}
_OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
_ADMIN_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})


async def _abort(context: Any, err: Exception) -> None:
    await context.abort(grpc.StatusCode[err.grpc_code], short(err.message))


class AccessInterceptor(aio.ServerInterceptor):
    """The REST gate's rules for gRPC: token, per-client permission, admin methods, the model's queue."""

    def __init__(self, policy: Any, admission: Any, registry: ModelRepository) -> None:
        self.policy = policy
        self.admission = admission
        self.registry = registry

    async def intercept_service(self, continuation, details):
        from serving.errors import Forbidden, ServingError, Unauthenticated

        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or handler.unary_unary is None or method in _OPEN_METHODS:
            return handler
        metadata = dict(details.invocation_metadata or ())
        caller = self.policy.caller(metadata.get("authorization"))
        inner = handler.unary_unary

        async def guarded(request, context):
            try:
                if caller is None:
                    raise Unauthenticated("missing or unknown bearer token")
                if method in _ADMIN_METHODS and not caller.admin:
                    raise Forbidden("this method needs the admin token")
                model = getattr(request, _MODEL_FIELD.get(method, ""), None) if method in _MODEL_FIELD else None
                if model is not None and not caller.may_call(model):
                    raise Forbidden(f"this token may not call {short(model)[:80]}")
                if method == "ModelInfer" and self.registry.get_model(model) is not None:
                    with self.admission.admit(model):
                        return await inner(request, context)
            except ServingError as err:
                await _abort(context, err)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


class ClipsyncExceptionToStatus(ExceptionToStatusInterceptor):
    """Exceptions to gRPC status: kserve's classes and clipsync's typed refusals with short messages; anything
    unexpected is INTERNAL without details (kserve sent InferenceError as INVALID_ARGUMENT, and ``ex.reason``
    of classes that have none)."""

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str):
        from serving.errors import ServingError

        if isinstance(ex, aio.AbortError):  # the handler aborted with its own status already
            raise ex
        if isinstance(ex, ServingError):
            await _abort(context, ex)
        if isinstance(ex, InvalidInput):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, short(ex))
        if isinstance(ex, ModelNotReady):
            await context.abort(grpc.StatusCode.UNAVAILABLE, short(ex))
        if isinstance(ex, ModelNotFound):
            await context.abort(grpc.StatusCode.NOT_FOUND, short(ex))
        if isinstance(ex, NotImplementedError):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by this server")
        logger.error("unexpected error in %s: %s: %s", method_name, type(ex).__name__, ex, exc_info=ex)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")


class ClipsyncServicer(InferenceServicer):
    """kserve's servicer; model metadata also carries ``versions`` (the REST form's fields)."""

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        metadata = await self._data_plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
        )


def _model_config_handler(registry: ModelRepository) -> grpc.GenericRpcHandler:
    """``inference.GRPCInferenceService/ModelConfig`` (Triton's; kserve's servicer has none)."""
    from serving.model_config import ModelConfigRequest, ModelConfigResponse, model_config_response

    async def model_config(request: Any, context: Any) -> Any:
        model = registry.get_model(request.name)
        if model is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Model with name {short(request.name)[:80]} does not exist."
            )
        return model_config_response(model)

    handler = grpc.unary_unary_rpc_method_handler(
        model_config,
        request_deserializer=ModelConfigRequest.FromString,
        response_serializer=ModelConfigResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelConfig": handler})


class HostGRPCServer(GRPCServer):
    """KServe's gRPC server on ``host:port`` (not ``[::]:port``), with clipsync's interceptors, ``ModelConfig``
    and a receive limit for uploads."""

    def __init__(self, *args: Any, host: str, access: AccessInterceptor, max_message: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.host = host
        self.access = access
        self.max_message = max_message

    async def start(self, max_workers: int) -> None:
        servicer = ClipsyncServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[self.access, LoggingInterceptor(), ClipsyncExceptionToStatus()],
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
        self._server.add_generic_rpc_handlers((_model_config_handler(self._data_plane.model_registry),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._server.add_insecure_port(f"{host}:{self._port}")
        logger.info("gRPC server on %s:%d", self.host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()


# ------------------------------------------------------------------------------------------------ server


class _AgentServer(uvicorn.Server):
    """The agent listener's uvicorn: it leaves SIGINT/SIGTERM to the main REST server and stops after it."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class ClipsyncModelServer(ModelServer):
    """``ModelServer`` bound to ``host``, on its own app, with access control, limits and a clean shutdown.

    Args:
        host: Address of both listeners.
        registered_models: The model repository.
        http_port: REST port.
        grpc_port: gRPC port.
        policy: Who may call what (:class:`serving.auth.AccessPolicy`).
        admission: The per-model queues and the deadline (:class:`serving.admission.Admission`).
        max_message: Smallest gRPC receive limit (bytes).
        install_routes: Called with the fresh app (before kserve's routes) to add clipsync's routes and gate.
        agent_port: Port of the loopback-only listener for KServe's model agent (0: none).
        on_shutdown: Called once every listener stopped and the models were unloaded (query log flush).
    """

    def __init__(
        self,
        host: str,
        registered_models: ModelRepository,
        http_port: int,
        grpc_port: int,
        policy: Any,
        admission: Any,
        max_message: int = 0,
        install_routes: Callable[[FastAPI], None] | None = None,
        agent_port: int = 0,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            workers=1,
            registered_models=registered_models,
            enable_docs_url=False,
            grace_period=5,
            # kserve's "kserve.trace" line (pre/predict/post ms) per request, written on the event loop beside
            # uvicorn's access line; the query log already records each search's latency.
            enable_latency_logging=False,
        )
        self.dataplane = ClipsyncDataPlane(self.registered_models, admission)
        self.model_repository_extension = ClipsyncRepositoryExtension(model_registry=self.registered_models)
        self.host = host
        self.access = AccessInterceptor(policy, admission, self.registered_models)
        self.max_message = max_message
        self.agent_port = agent_port
        self.on_shutdown = on_shutdown
        self._agent_server: uvicorn.Server | None = None
        self.app = build_app(self.dataplane, self.model_repository_extension, install_routes)

    def start(self, models: list[Any]) -> None:
        """Serve until SIGINT/SIGTERM (blocks): REST on ``host:http_port``, gRPC on ``host:grpc_port``, the agent
        listener on ``127.0.0.1:agent_port``."""
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
        if self.agent_port:
            agent = uvicorn.Config(
                build_agent_app(self.model_repository_extension),
                host="127.0.0.1",
                port=self.agent_port,
                log_config=None,
                lifespan="off",
                timeout_graceful_shutdown=self.grace_period,
            )
            logger.info("model agent listener on 127.0.0.1:%d (repository load/unload only)", self.agent_port)
            self._agent_server = _AgentServer(agent)
            self.servers.append(self._agent_server.serve())
        if self.enable_grpc:
            self._grpc_server = HostGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=vars(_kserve_model_server.args),
                grace_period=self.grace_period,
                host=self.host,
                access=self.access,
                max_message=self.max_message,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        # uvicorn handles SIGINT/SIGTERM and, once it has shut down, re-raises the signal to the handler that
        # was installed before it: a no-op here, so that _serve goes on to stop gRPC and flush the query log.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.setup_event_loop()  # on the loop that serves (before asyncio.run, it configured a loop never used)
        tasks = [asyncio.ensure_future(s) for s in self.servers]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._grpc_server is not None:
                with contextlib.suppress(Exception):
                    await self._grpc_server.stop()
            if self._agent_server is not None:
                self._agent_server.should_exit = True
                await asyncio.wait(tasks, timeout=self.grace_period)
            for t in tasks:
                t.cancel()
            for name in list(self.registered_models.get_models()):
                with contextlib.suppress(Exception):
                    self.registered_models.unload(name)
            if self.on_shutdown is not None:
                self.on_shutdown()
            logger.info("model server stopped")

"""clipsync's additions to the model server's REST app: the gate in front of every route, and the extra routes.

The gate (:class:`Gate`, an ASGI middleware) decides before any handler runs and before the body is read:

- who calls (:mod:`serving.auth`): health and server metadata are open; the repository (load, unload, index) and
  ``/metrics`` need the admin token; a route naming a model (V1, V2, ``/api/lip-sync?model=``) needs a token of
  that model's client (HTTP 401 without a known token, 403 for another client's model, whether it exists or not);
- whether the model has room (:mod:`serving.admission`): HTTP 429 with ``Retry-After`` beyond
  ``serving.max_queue`` requests of one model at once;
- how large the body is: a declared ``Content-Length`` over the limit is HTTP 413 at once; any other body (chunked
  included) is counted while it is read and refused with HTTP 413 as soon as it passes the limit, never read whole;
- Open Inference Protocol paths: ``/v2/models/<name>/versions/<v>[/ready|/infer|/config]`` is the model's own
  route when ``v`` is the version it serves and HTTP 404 otherwise; ``/v2/`` is ``/v2``.

Routes: ``POST /api/lip-sync`` (the seed's multipart endpoint; ``?model=lipsync-<client>`` when the caller may use
several), ``POST /api/feedback`` (feedback on a search's results, :mod:`serving.feedback`; ``?model=clip-<client>``
when the caller may use several; bodies up to 256 KiB), ``POST /v2/repository/index`` (every model with its
version and state, and why a load failed: deploy's probe reports it), ``GET /v1/models`` and ``GET /v2/models``
(only the models the caller may use), ``GET /v2/models/<name>/config`` (the Triton-style model configuration
tritonclient reads).

The handlers read their context from ``app.state.clipsync`` (:class:`RouteContext`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.admission import Admission
from serving.auth import AccessPolicy, Caller
from serving.config import ServingConfig
from serving.errors import Forbidden, NotFound, NotReady, PayloadTooLarge, ServingError, Unauthenticated
from serving.feedback import MAX_BODY_BYTES as FEEDBACK_MAX_BODY
from serving.feedback import parse_body as parse_feedback_body
from serving.kserve_adapter import InvalidInput, ModelNotFound, short
from serving.model_config import model_config

OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready", "/v2"})
ADMIN_PATHS = frozenset({"/metrics", "/v2/repository/index"})
REPOSITORY = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)$")
MODEL_ROUTE = re.compile(r"^/v[12]/models/([^/:]+)(:predict|:explain|/infer)?(?:/.*)?$")
VERSIONED = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/ready|/infer|/config)?$")
LIP_SYNC = "/api/lip-sync"
FEEDBACK = "/api/feedback"
STATE_CALLER = "clipsync_caller"
STATE_MODEL = "clipsync_model"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class RouteContext:
    """What the gate and the routes need: the loaded models, the settings, who may call, the model queues."""

    repository: Any
    settings: ServingConfig
    policy: AccessPolicy
    admission: Admission


async def _reply(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def target_model(ctx: RouteContext, path: str, query: str, caller: Caller) -> str:
    """The model ``/api/lip-sync`` (a lip-sync model) or ``/api/feedback`` (a clip-search model) is for:
    ``?model=``, else the one of that kind the caller may use.

    Raises:
        Forbidden: ``?model=`` names a model of another client.
        ModelNotFound: No such model of that kind is loaded.
        InvalidInput: Several are loaded for this caller and none is named.
        NotReady: None is loaded for this caller, or it is not ready.
    """
    if path == LIP_SYNC:
        from serving.lipsync import LipSyncModel as kind

        what = "lip-sync"
    else:
        from serving.clip_search import ClipSearchModel as kind

        what = "clip-search"
    named = parse_qs(query).get("model", [None])[0]
    if named is not None:
        if not caller.may_call(named):
            raise Forbidden(f"this token may not call {short(named)[:80]}")
        if not isinstance(ctx.repository.get_model(named), kind):
            raise ModelNotFound(named)
        mine = [named]
    else:
        mine = sorted(n for n, m in ctx.repository.get_models().items() if isinstance(m, kind) and caller.may_call(n))
    if len(mine) == 1:
        if not ctx.repository.get_model(mine[0]).ready:
            raise NotReady(f"{mine[0]} is not ready (loading or stopping); retry shortly", headers={"Retry-After": "5"})
        return mine[0]
    if not mine:
        raise NotReady(f"no {what} model is loaded", headers={"Retry-After": "5"})
    raise InvalidInput(f"{len(mine)} {what} models are loaded; pass ?model=<name> ({mine})")


class Gate:
    """ASGI middleware: access, admission, body limit and OIP path forms (see the module doc)."""

    def __init__(self, app: Callable, ctx_of: Callable[[], RouteContext]) -> None:
        self.app = app
        self.ctx_of = ctx_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ctx = self.ctx_of()
        model = None
        try:
            if scope["path"] == "/v2/":
                _set_path(scope, "/v2")
            caller = self._check_access(scope, scope["path"], ctx)
            path = self._unversioned_path(scope, ctx)
            model = self._inference_target(scope, path, ctx, caller)
            if model is not None and ctx.repository.get_model(model) is not None:
                ctx.admission.acquire(model)
            else:
                model = None
            limit, which = (
                (FEEDBACK_MAX_BODY, "for feedback")
                if path == FEEDBACK
                else (ctx.settings.max_body_bytes, "(serving.max_upload_mb)")
            )
            receive = await self._bounded_body(scope, receive, limit, which)
        except ServingError as err:
            if model is not None:
                ctx.admission.release(model)
            return await _reply(send, err.http_status, err.body(), err.headers)
        except (InvalidInput, ModelNotFound) as err:
            return await _reply(send, 404 if isinstance(err, ModelNotFound) else 400, {"error": str(err)})
        try:
            await self.app(scope, receive, send)
        finally:
            if model is not None:
                ctx.admission.release(model)

    @staticmethod
    def _unversioned_path(scope: Scope, ctx: RouteContext) -> str:
        """A versioned OIP path -> the model's own path when it is the version served (else HTTP 404)."""
        match = VERSIONED.match(scope["path"])
        if match:
            name, version, tail = match.groups()
            model = ctx.repository.get_model(name)
            served = str(getattr(model, "version", "") or "")
            if model is not None and served != version:
                detail = f" (it serves version {served})" if served else " (it has no registry version)"
                raise NotFound(f"{name} has no version {version}{detail}")
            _set_path(scope, f"/v2/models/{name}{tail or ''}")
        return scope["path"]

    @staticmethod
    def _check_access(scope: Scope, path: str, ctx: RouteContext) -> Caller:
        if path in OPEN_PATHS:
            return Caller()
        headers = dict(scope.get("headers") or ())
        caller = ctx.policy.caller((headers.get(b"authorization") or b"").decode("latin-1"))
        if caller is None:
            raise Unauthenticated("missing or unknown bearer token")
        scope.setdefault("state", {})[STATE_CALLER] = caller
        if path in ADMIN_PATHS or REPOSITORY.match(path):
            if not caller.admin:
                raise Forbidden("this route needs the admin token")
            return caller
        match = MODEL_ROUTE.match(path)
        if match and not caller.may_call(match.group(1)):
            raise Forbidden(f"this token may not call {short(match.group(1))[:80]}")
        return caller

    @staticmethod
    def _inference_target(scope: Scope, path: str, ctx: RouteContext, caller: Caller) -> str | None:
        """The model an inference request is for (admission), ``None`` for any other request."""
        if scope["method"] != "POST":
            return None
        if path in (LIP_SYNC, FEEDBACK):
            model = target_model(ctx, path, scope.get("query_string", b"").decode("latin-1"), caller)
            scope.setdefault("state", {})[STATE_MODEL] = model
            return model if path == LIP_SYNC else None  # feedback has its own per-token limit, not the model's queue
        match = MODEL_ROUTE.match(path)
        return match.group(1) if match and match.group(2) else None

    @staticmethod
    async def _bounded_body(scope: Scope, receive: Receive, limit: int, which: str) -> Receive:
        """Read the body up to ``limit`` bytes (refusing it as soon as it passes) and replay it to the app."""
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length", b"")
        too_large = f"request body exceeds the limit of {limit} bytes {which}"
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(too_large)
        if scope["method"] in ("GET", "HEAD"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message])
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(too_large)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _set_path(scope: Scope, path: str) -> None:
    scope["path"] = path
    scope["raw_path"] = path.encode()


def _replay(messages: list[dict[str, Any]], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages`` first, then (for a disconnect) the real ``receive``."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


# ------------------------------------------------------------------------------------------------ routes


def _caller(request: Request) -> Caller:
    return request.scope.get("state", {}).get(STATE_CALLER) or Caller()


async def lip_sync(request: Request):
    """The seed's endpoint: multipart ``video_file``; the model was chosen by the gate (``?model=``)."""
    ctx: RouteContext = request.app.state.clipsync
    name = request.scope.get("state", {}).get(STATE_MODEL) or target_model(
        ctx, LIP_SYNC, request.url.query, _caller(request)
    )
    model = ctx.repository.get_model(name)
    limit = ctx.settings.max_upload_bytes
    try:
        form = await request.form(max_part_size=limit + 1)
    except Exception as exc:  # a malformed multipart body; the parser's message names no path
        raise InvalidInput(f"expected a multipart/form-data body with 'video_file' ({type(exc).__name__})") from None
    upload = form.get("video_file")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("missing the multipart file field 'video_file'")
    data = await upload.read(limit + 1)
    return await ctx.admission.within_deadline(model.analyze(data))


async def feedback(request: Request) -> JSONResponse:
    """``POST /api/feedback``: one answer ``{"query_id", "video_id", "relevant", "label"?}`` or a list of them,
    stored before the reply (:mod:`serving.feedback`); the clip-search model was chosen by the gate (``?model=``)."""
    ctx: RouteContext = request.app.state.clipsync
    name = request.scope.get("state", {}).get(STATE_MODEL) or target_model(
        ctx, FEEDBACK, request.url.query, _caller(request)
    )
    items = parse_feedback_body(await request.body())
    entries = await ctx.admission.within_deadline(
        ctx.repository.get_model(name).record_feedback(items, request.headers.get("authorization"), "rest")
    )
    return JSONResponse(
        {
            "model": name,
            "accepted": [
                {k: e[k] for k in ("feedback_id", "query_id", "video_id", "relevant", "query_known")} for e in entries
            ],
        }
    )


async def repository_index(request: Request) -> JSONResponse:
    """Triton's repository index: ``[{"name", "version", "state", "reason"}]``."""
    return JSONResponse(request.app.state.clipsync.repository.index())


def _visible_models(request: Request) -> list[str]:
    caller = _caller(request)
    return sorted(n for n in request.app.state.clipsync.repository.get_models() if caller.may_call(n))


async def list_models_v1(request: Request) -> dict[str, list[str]]:
    return {"models": _visible_models(request)}


async def list_models_v2(request: Request) -> dict[str, list[str]]:
    return {"models": _visible_models(request)}


async def config_v2(request: Request, model_name: str) -> dict[str, Any]:
    """Triton's model configuration (``GET /v2/models/<name>/config``) from the model's tensor metadata."""
    model = request.app.state.clipsync.repository.get_model(model_name)
    if model is None:
        raise ModelNotFound(model_name)
    return model_config(model)


def install(app: FastAPI, ctx: RouteContext) -> None:
    """Add the gate and clipsync's routes to ``app`` (before kserve's, so that these win)."""
    app.state.clipsync = ctx
    app.add_middleware(Gate, ctx_of=lambda: app.state.clipsync)
    app.add_api_route(LIP_SYNC, lip_sync, methods=["POST"])
    app.add_api_route(FEEDBACK, feedback, methods=["POST"])
    app.add_api_route("/v2/repository/index", repository_index, methods=["POST"])
    app.add_api_route("/v1/models", list_models_v1, methods=["GET"])
    app.add_api_route("/v2/models", list_models_v2, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/config", config_v2, methods=["GET"])

"""clipsync's additions to the model server's REST app: access guard, limits, error codes, ``/api/lip-sync``.

- Bearer token (``serving.auth_token_env``): every route except health needs ``Authorization: Bearer <token>``.
  KServe's model agent calls the repository load/unload endpoints from inside the pod (``localhost:8080``)
  without a token; such a call is let through only from a loopback peer that carries no forwarding header
  (a proxy in front of the server - Knative's queue-proxy, Envoy - adds ``X-Forwarded-For``/``Forwarded``).
- Request size: a declared ``Content-Length`` over the upload limit gets HTTP 413 before the body is read.
- HTTP 413 / 504 for the lip-sync limits (``PayloadTooLarge``, ``RequestTimeout``).
- ``POST /api/lip-sync``: the seed's multipart endpoint (``video_file``; ``?model=lipsync-<client>`` when several
  lip-sync models are loaded).
- ``POST /v2/repository/index``: every model with its version and state, and why a load failed (deploy's probe
  reports it).

The handlers read their context from ``app.state.clipsync`` (:class:`RouteContext`), so they are plain module
functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.config import ServingConfig
from serving.kserve_adapter import InvalidInput
from serving.lipsync import LipSyncModel, PayloadTooLarge, RequestTimeout

OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready", "/v2", "/metrics"})
REPOSITORY_PREFIX = "/v2/repository/"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "x-envoy-external-address")


@dataclass(frozen=True)
class RouteContext:
    """What the routes need: the repository (loaded models), the settings and the bearer token ("" = none)."""

    repository: Any
    settings: ServingConfig
    token: str = ""

    @property
    def body_limit(self) -> int:
        # JSON / base64 carry a video in at most 4/3 of its size; the predictor checks the exact size later.
        return int(self.settings.max_upload_bytes * 4 / 3) + 1024 * 1024


def _from_local_agent(request: Request) -> bool:
    """A direct call from inside the pod (KServe's model agent), not one relayed by a proxy."""
    peer = request.client.host if request.client else ""
    return peer in LOOPBACK and not any(h in request.headers for h in FORWARDING_HEADERS)


async def guard(request: Request, call_next):
    """Bearer token and declared body size, before any handler runs."""
    ctx: RouteContext = request.app.state.clipsync
    path = request.url.path
    authorized = not ctx.token or request.headers.get("authorization") == f"Bearer {ctx.token}"
    agent = path.startswith(REPOSITORY_PREFIX) and _from_local_agent(request)
    if not (authorized or path in OPEN_PATHS or agent):
        return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > ctx.body_limit:
        limit = f"{ctx.settings.max_upload_mb:g} MiB"
        return JSONResponse({"error": f"request body of {int(length)} bytes exceeds the {limit} upload limit"}, 413)
    return await call_next(request)


async def too_large(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=413)


async def timed_out(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=504)


async def lip_sync(request: Request):
    """The seed's endpoint: multipart ``video_file``; ``?model=lipsync-<client>`` when several are served."""
    ctx: RouteContext = request.app.state.clipsync
    model = request.query_params.get("model")
    candidates = {n: m for n, m in ctx.repository.get_models().items() if isinstance(m, LipSyncModel) and m.ready}
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
    limit = ctx.settings.max_upload_bytes
    try:
        form = await request.form(max_part_size=limit + 1)
    except Exception as exc:  # malformed multipart body
        raise InvalidInput(f"expected a multipart/form-data body with 'video_file': {exc}") from None
    upload = form.get("video_file")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("missing the multipart file field 'video_file'")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"video is larger than the limit of {ctx.settings.max_upload_mb:g} MiB")
    return await chosen.analyze(data)


async def repository_index(request: Request) -> JSONResponse:
    """Triton's repository index: ``[{"name", "version", "state", "reason"}]``."""
    return JSONResponse(request.app.state.clipsync.repository.index())


def install(app: FastAPI, ctx: RouteContext) -> None:
    """Add the guard, the 413/504 handlers, ``POST /api/lip-sync`` and the repository index to ``app``."""
    app.state.clipsync = ctx
    app.middleware("http")(guard)
    app.add_exception_handler(PayloadTooLarge, too_large)
    app.add_exception_handler(RequestTimeout, timed_out)
    app.add_api_route("/api/lip-sync", lip_sync, methods=["POST"])
    app.add_api_route(f"{REPOSITORY_PREFIX}index", repository_index, methods=["POST"])

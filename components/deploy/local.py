"""deploy on this machine: ``champions.json`` and the local model server.

The version is recorded in ``{state_dir}/serving/champions.json`` (the server's repository reads it), then:

- a server answers at ``deploy.local_server_url`` (``clipsync serve``): it is told to load the version
  (``POST /v2/repository/models/<name>/load``) and must then answer with it (``loaded``);
- no server answers: the same server app is built in-process, loads the version from the record and must answer
  with it (``verified``: the next ``clipsync serve`` serves it).

When a step fails, the former record is written back and a running server is told to load the former version
again (or to drop the model if there was none), so what is served and the record stay as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.common.champions import champions_file, read_champions, write_champions
from components.deploy.endpoint import ServingEndpoint, probe_token
from components.deploy.errors import DeployError

logger = logging.getLogger("clipsync.deploy")


@dataclass(frozen=True)
class LocalRollout:
    """A version served locally, and how to put the former one back.

    Attributes:
        serving: ``loaded`` (the running server serves it) or ``verified`` (checked in-process; no server ran).
        location: The version's folder.
        undo: Puts the former record (and the former version into a running server) back; never raises.
    """

    serving: str
    location: str
    undo: Callable[[], None]


async def _verify_in_process(name: str, version: str, champions: Path, serving: Any, cache_dir: Any, timeout: float):
    """Load ``name`` from the record into an in-process instance of the model server and probe it."""
    import httpx

    from serving.auth import AccessPolicy
    from serving.config import ServingConfig
    from serving.server import build_server

    # In-process: no listener, no token, no query log, and this process's BLAS threads left as they are.
    settings = replace(serving or ServingConfig(), host="127.0.0.1", query_log_uri="off", blas_threads=0)
    server, _ = build_server(
        settings, [], champions=champions, cache_dir=cache_dir, query_log_uri="off", policy=AccessPolicy()
    )
    try:
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://in-process", timeout=timeout) as client:
            endpoint = ServingEndpoint(client, "the model server (in-process check, no server running)")
            await endpoint.load(name)
            await endpoint.expect_version(name, version)
    finally:
        for loaded in list(server.registered_models.get_models()):
            with contextlib.suppress(Exception):
                server.registered_models.unload(loaded)


async def _load_into(url: str, name: str, version: str | None, token: str, timeout: float) -> str:
    """Make the server at ``url`` serve ``version`` of ``name`` (``None``: drop it); ``no-server`` if none runs."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        endpoint = ServingEndpoint(client, f"local server {url}", token)
        try:
            if version is None:
                await endpoint.unload(name)
                return "loaded"
            await endpoint.load(name)
        except httpx.ConnectError:
            return "no-server"
        except httpx.HTTPError as exc:
            raise DeployError(f"local server {url}: {type(exc).__name__}: {exc}") from exc
        await endpoint.expect_version(name, version)
        return "loaded"


def rollout_local(
    name: str,
    version: str,
    version_dir: Path,
    state_dir: Path,
    url: str,
    timeout_s: float,
    serving: Any = None,
    cache_dir: Any = None,
) -> LocalRollout:
    """Record ``version_dir`` as what serves ``name`` and make the local server (or an in-process one) serve it.

    Args:
        name: Model name on the server (the registered name, ``clip-acme``).
        version: Registry version; the server must answer with it.
        version_dir: The version's folder (with its ``release.json``).
        state_dir: The client's state folder (``serving/champions.json``).
        url: The local server.
        timeout_s: Longest a load and probe may take.
        serving: The ``serving`` settings (bearer token variable).
        cache_dir: MediaPipe face models for an in-process lip-sync check.

    Returns:
        What was done and how to undo it.

    Raises:
        DeployError: If the server refused, failed or answered with another version; everything is as before.
    """
    before = read_champions(state_dir)
    former = before.get(name)
    record = {
        **before,
        name: {
            "path": str(Path(version_dir).resolve()),
            "version": str(version),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    token = probe_token(serving)
    write_champions(state_dir, record)
    loaded = False
    try:
        outcome = asyncio.run(_load_into(url, name, str(version), token, timeout_s))
        loaded = outcome == "loaded"
        if outcome == "no-server":
            logger.info("no model server answers at %s: checking %s v%s in-process", url, name, version)
            asyncio.run(
                _verify_in_process(name, str(version), champions_file(state_dir), serving, cache_dir, timeout_s)
            )
    except BaseException as exc:
        _restore(state_dir, before, url, name, former, token, timeout_s, loaded or isinstance(exc, DeployError))
        if isinstance(exc, DeployError):
            raise
        raise DeployError(f"{name} v{version} could not be served: {type(exc).__name__}: {exc}") from exc

    def undo() -> None:
        _restore(state_dir, before, url, name, former, token, timeout_s, loaded)

    logger.info("%s v%s %s (%s)", name, version, "loaded by " + url if loaded else "verified in-process", version_dir)
    return LocalRollout("loaded" if loaded else "verified", str(version_dir), undo)


def _restore(
    state_dir: Path,
    before: dict,
    url: str,
    name: str,
    former: dict | None,
    token: str,
    timeout_s: float,
    server_touched: bool,
) -> None:
    """Write the former record back and, when a server may have swapped, make it serve the former version."""
    write_champions(state_dir, before)
    if not server_touched:
        return
    try:
        asyncio.run(_load_into(url, name, former.get("version") if former else None, token, timeout_s))
    except Exception as exc:  # logged: the record is back, the next serve or load serves the former version
        logger.error("local server %s: could not put %s back to its former version: %s", url, name, exc)

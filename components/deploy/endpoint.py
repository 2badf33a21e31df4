"""The model server as deploy sees it: repository load/unload and the probe that reads the served version.

Over HTTP to a running server (local or in the cluster), or to the same server app in-process (httpx's ASGI
transport). The probe is ``GET /v2/models/<name>``: the server's V2 metadata names the loaded registry version
(``versions``), which deploy compares with the version it rolled out before it moves any alias.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from typing import Any

from components.deploy.errors import DeployError


def probe_token(serving: Any) -> str:
    """The model servers' admin token (``serving.admin_token_env``), "" when none is configured: deploy loads
    and unloads models and reads any client's metadata and the repository index, which only the admin may.

    Raises:
        DeployError: If the variable is configured but not set here (the probe could not authenticate).
    """
    env = getattr(serving, "admin_token_env", "") if serving is not None else ""
    if not env:
        return ""
    token = os.environ.get(env, "")
    if not token:
        raise DeployError(f"serving.admin_token_env names {env}, which is not set: cannot call the model server")
    return token


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class ServingEndpoint:
    """Repository and metadata calls on one model server.

    Args:
        client: An ``httpx.AsyncClient`` whose ``base_url`` is the server (or whose transport is its app).
        where: How the server is named in error messages.
        token: Bearer token sent with every call ("" = none).
    """

    def __init__(self, client: Any, where: str, token: str = "") -> None:
        self.client = client
        self.where = where
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _post(self, path: str, what: str) -> None:
        response = await self.client.post(path, headers=self.headers, json={})
        if response.status_code != 200:
            raise DeployError(f"{self.where}: {what}: HTTP {response.status_code} {response.text[:500]}")

    async def load(self, name: str) -> None:
        """``POST /v2/repository/models/<name>/load`` (the server re-reads where ``name`` comes from)."""
        await self._post(f"/v2/repository/models/{_quote(name)}/load", f"loading {name} failed")

    async def unload(self, name: str) -> None:
        await self._post(f"/v2/repository/models/{_quote(name)}/unload", f"unloading {name} failed")

    async def served_version(self, name: str) -> str | None:
        """The version ``name`` answers with, ``None`` when it is not loaded (404)."""
        response = await self.client.get(f"/v2/models/{_quote(name)}", headers=self.headers)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DeployError(f"{self.where}: metadata of {name}: HTTP {response.status_code} {response.text[:300]}")
        versions = response.json().get("versions") or []
        return str(versions[0]) if versions else ""

    async def load_failure(self, name: str) -> str:
        """``"; the server says: <why its last load failed>"`` from the repository index, or ``""``."""
        try:
            response = await self.client.post("/v2/repository/index", headers=self.headers, json={})
            rows = response.json() if response.status_code == 200 else []
        except Exception:  # the reason is a bonus: the probe's own answer is the error
            return ""
        reasons = [r.get("reason") for r in rows if isinstance(r, dict) and r.get("name") == name and r.get("reason")]
        return f"; the server says: {reasons[0]}" if reasons else ""

    async def expect_version(self, name: str, version: str, timeout_s: float = 0.0) -> None:
        """Probe until ``name`` answers with ``version`` (once when ``timeout_s`` is 0).

        Raises:
            DeployError: With the last answer (another version, not loaded, an error) when the time is up.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                served = await self.served_version(name)
                last = "not loaded" if served is None else f"answers with version {served or '(none)'}"
            except DeployError as exc:
                last = str(exc)
            except Exception as exc:  # the endpoint is not reachable (yet)
                last = f"not reachable: {type(exc).__name__}: {exc}"
            else:
                if served == str(version):
                    return
            if time.monotonic() >= deadline:
                why = await self.load_failure(name)
                raise DeployError(f"{self.where}: {name} should answer with version {version} but {last}{why}")
            await asyncio.sleep(min(1.0, max(0.05, timeout_s / 50)))

"""Who may call what on a model server shared by many clients (standard library only).

Tokens (the format issue 16's onboarding writes): a JSON object mapping each client token to the client ids it may
call, from the variable named by ``serving.tokens_env`` or the file ``serving.tokens_file`` (a mounted Kubernetes
Secret)::

    {"<token of acme>": ["acme"], "<token of a reseller>": ["beta", "gamma"]}

A client token reaches only the models of its clients (``clip-<id>``, ``lipsync-<id>``): any other model is HTTP 403
/ gRPC PERMISSION_DENIED, whether it exists or not. The admin token (``serving.admin_token_env``) may call every
model and is the only one accepted by the repository endpoints (load, unload, index) and ``/metrics``. Without any
token configured the server is open, which it allows only on a loopback address (``clipsync serve`` on a laptop);
a server listening on other addresses without tokens refuses to start.

Tokens are compared by their SHA-256, never logged, never echoed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.config import CLIENT_ID_PATTERN
from components.common.errors import ConfigError

#: Model names are ``<prefix><client id>``.
MODEL_PREFIXES = ("clip-", "lipsync-")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def client_of(model_name: str) -> str | None:
    """The client id a model belongs to (``clip-acme`` -> ``acme``), ``None`` for a name of no client."""
    for prefix in MODEL_PREFIXES:
        if model_name.startswith(prefix) and CLIENT_ID_PATTERN.match(model_name[len(prefix) :]):
            return model_name[len(prefix) :]
    return None


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the admin, or a client token with its client ids."""

    admin: bool = False
    clients: frozenset[str] = frozenset()

    def may_call(self, model_name: str) -> bool:
        """Whether this caller may use ``model_name`` (inference, metadata, readiness)."""
        return self.admin or client_of(model_name) in self.clients

    def __repr__(self) -> str:  # never a token: only what it may do
        return "Caller(admin)" if self.admin else f"Caller(clients={sorted(self.clients)})"


ADMIN = Caller(admin=True)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AccessPolicy:
    """The tokens a server accepts.

    Args:
        client_tokens: Token -> the client ids it may call.
        admin_token: The admin token ("" = none).
    """

    def __init__(self, client_tokens: Mapping[str, Iterable[str]] | None = None, admin_token: str = "") -> None:
        self._callers = {_digest(t): Caller(clients=frozenset(ids)) for t, ids in (client_tokens or {}).items()}
        if admin_token:
            self._callers[_digest(admin_token)] = ADMIN

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (otherwise every caller is treated as the admin)."""
        return bool(self._callers)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller an ``Authorization`` header value names; ``None`` for a missing or unknown token."""
        if not self.enabled:
            return ADMIN
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._callers.get(_digest(token.strip()))


def parse_token_map(text: str, setting: str) -> dict[str, frozenset[str]]:
    """Parse and check a token map (JSON object: token -> list of client ids).

    Raises:
        ConfigError: Naming ``setting``: not JSON, not an object, an empty token, a client id that is not one.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{setting}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{setting}: expected a JSON object mapping each token to a list of client ids")
    tokens: dict[str, frozenset[str]] = {}
    for n, (token, ids) in enumerate(data.items()):
        if not token.strip() or token != token.strip() or len(token) < 16:
            raise ConfigError(f"{setting}: token #{n + 1} must be at least 16 characters without surrounding spaces")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"{setting}: token #{n + 1} must map to a non-empty list of client ids")
        bad = [i for i in ids if not CLIENT_ID_PATTERN.match(i)]
        if bad:
            raise ConfigError(f"{setting}: token #{n + 1} names invalid client ids {bad}")
        tokens[token] = frozenset(ids)
    return tokens


def load_policy(settings: Any, environ: Mapping[str, str] | None = None) -> AccessPolicy:
    """The policy of ``settings`` (``serving.tokens_env`` / ``tokens_file`` / ``admin_token_env``).

    Raises:
        ConfigError: Naming the setting: a variable that is not set, a file that cannot be read or is not a
            valid token map, an admin token equal to a client token, or no token at all on a server that
            listens beyond loopback.
    """
    env = os.environ if environ is None else environ
    tokens: dict[str, frozenset[str]] = {}
    if settings.tokens_env:
        text = env.get(settings.tokens_env, "")
        if not text:
            raise ConfigError(f"serving.tokens_env names {settings.tokens_env}, which is not set or empty")
        tokens = parse_token_map(text, f"serving.tokens_env ({settings.tokens_env})")
    elif settings.tokens_file:
        try:
            text = Path(settings.tokens_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"serving.tokens_file: cannot read {settings.tokens_file}: {exc.strerror}") from None
        tokens = parse_token_map(text, f"serving.tokens_file ({settings.tokens_file})")
    admin = ""
    if settings.admin_token_env:
        admin = env.get(settings.admin_token_env, "")
        if not admin:
            raise ConfigError(f"serving.admin_token_env names {settings.admin_token_env}, which is not set or empty")
        if admin in tokens:
            raise ConfigError("serving.admin_token_env: the admin token is also a client token; they must differ")
    policy = AccessPolicy(tokens, admin)
    if not policy.enabled and settings.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"serving.host is {settings.host}, beyond loopback, and no token is configured: set serving.tokens_env "
            "(or tokens_file) and serving.admin_token_env"
        )
    return policy

"""Infrastructure faults versus content problems, and the one bounded retry for transient faults.

An outage of the object store, the tracking server or an API is never a property of the client's data: a stage
retries a transient fault a bounded number of times with exponential backoff (:func:`retry_call`), then fails
with the cause, so that a KFP retry or a rerun takes over. Only content problems (a corrupt video, a bad name)
become per-item reasons. Every per-item ``except`` in a stage re-raises what :func:`is_infrastructure_error`
recognizes.

The retry budget of object-store calls comes from the environment, read when a store is opened:
``CLIPSYNC_STORE_RETRY_ATTEMPTS`` (default 6) and ``CLIPSYNC_STORE_RETRY_SECONDS`` (default 60: no new attempt
starts once that much time has passed since the first).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger("clipsync.faults")

T = TypeVar("T")

#: OS errors that come from the machine or a network file system, not from the file's content.
INFRASTRUCTURE_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EROFS,
    }
)
#: MLflow error codes that say the tracking server is unavailable or refuses us, not that the request is wrong.
#: (INTERNAL_ERROR is also MlflowException's default code, so it says nothing; a 5xx that outlasts MLflow's own
#: retries surfaces as "API request to ... failed", which is recognized by its message.)
_TRACKING_INFRA_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "UNAUTHENTICATED", "PERMISSION_DENIED"}
)


class InfrastructureError(Exception):
    """A store, tracking server or API failed; never a property of the data. The stage fails with it."""


class TransientError(InfrastructureError):
    """An infrastructure fault worth retrying: unreachable, timed out, 5xx, throttled."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transient fault is retried before the call fails.

    Attributes:
        attempts: Calls in all (the first included).
        first_wait_s: Wait after the first failure; it doubles after each further one (plus up to as much jitter).
        max_wait_s: Longest single wait.
        deadline_s: No new attempt starts once this much time has passed since the first one began.
    """

    attempts: int = 6
    first_wait_s: float = 1.0
    max_wait_s: float = 15.0
    deadline_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_wait_s < 0 or self.max_wait_s < 0 or self.deadline_s < 0:
            raise ValueError(f"invalid retry policy {self}: attempts >= 1 and non-negative times required")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The object-store policy, with ``CLIPSYNC_STORE_RETRY_ATTEMPTS`` / ``_SECONDS`` when set.

        Raises:
            ValueError: Naming the variable that is not a number.
        """
        values: dict[str, float] = {}
        for name, field, kind in (
            ("CLIPSYNC_STORE_RETRY_ATTEMPTS", "attempts", int),
            ("CLIPSYNC_STORE_RETRY_SECONDS", "deadline_s", float),
        ):
            raw = os.environ.get(name, "").strip()
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
        return cls(**values)


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of the infrastructure (store, tracking server, network, disk), not of the data.

    Recognizes :class:`InfrastructureError`, OS errors of :data:`INFRASTRUCTURE_ERRNOS`, and the connection,
    timeout, 5xx and authentication failures of the MLflow, requests and urllib3 clients (checked only when
    those libraries are already imported, so this module imports none of them).
    """
    if isinstance(exc, InfrastructureError):
        return True
    if isinstance(exc, OSError) and exc.errno in INFRASTRUCTURE_ERRNOS:
        return True
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        # The REST client wraps a connection failure or exhausted retries as "API request to ... failed".
        return exc.error_code in _TRACKING_INFRA_CODES or str(exc.message).startswith("API request to ")
    requests_exceptions = sys.modules.get("requests.exceptions")
    if requests_exceptions is not None and isinstance(
        exc, requests_exceptions.ConnectionError | requests_exceptions.Timeout | requests_exceptions.RetryError
    ):
        return True
    urllib3_exceptions = sys.modules.get("urllib3.exceptions")
    return urllib3_exceptions is not None and isinstance(exc, urllib3_exceptions.HTTPError)


def retry_call(what: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """Call ``fn``, retrying :class:`TransientError` with bounded exponential backoff.

    Any other exception propagates at once. When the budget is spent, the last error is raised again with
    the number of attempts and the time spent added to its message.

    Args:
        what: What the call does, for the log (``get videos/a.mp4 on s3://bucket``).
        fn: The call; it raises :class:`TransientError` (or a subclass) for a fault worth retrying.
        policy: The budget; the defaults of :class:`RetryPolicy` when ``None``.

    Returns:
        What ``fn`` returned.
    """
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_before_delay
    from tenacity import wait_exponential_jitter as backoff

    policy = policy or RetryPolicy()
    started = time.monotonic()

    def log_retry(state) -> None:
        logger.warning(
            "%s failed (attempt %d of %d, retrying in %.1f s): %s",
            what,
            state.attempt_number,
            policy.attempts,
            state.next_action.sleep if state.next_action else 0.0,
            state.outcome.exception() if state.outcome else "",
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.deadline_s),
        wait=backoff(multiplier=policy.first_wait_s, max=policy.max_wait_s, jitter=policy.first_wait_s),
        retry=retry_if_exception_type(TransientError),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(fn)
    except TransientError as exc:
        attempts = retrying.statistics.get("attempt_number", 1)
        raise type(exc)(f"{exc} (gave up after {attempts} attempts in {time.monotonic() - started:.1f} s)") from exc

"""One run per client at a time: a lease object in the client's artifacts store.

start_run takes the lease (:func:`acquire`) before it opens the DAG run's MLflow run, and the run's exit handler
gives it back (:func:`release`). A second run of the same client meanwhile is refused with
:class:`RunInProgressError`, which names the first. A lease stops counting when it expires (``storage.lease_hours``
after it was taken) or, for a run driven from this machine (``clipsync run``), as soon as its driving process is
gone, so a crashed or killed run never blocks its client for long.

The lease is a JSON object written with an ordinary put and read back to check who won; two runs started
within the same instant could both pass that check, which the recurring run's ``max_concurrency=1`` and a
person's pace make unlikely. Releasing rewrites the object (stores have no delete, on purpose).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from components.common.storage import ObjectNotFoundError, ObjectStore

logger = logging.getLogger("clipsync.lease")

LEASE_KEY = "runs/lease.json"
#: ``host:pid`` of the local process that drives the DAG (set by pipelines.local.run_local for its tasks).
DRIVER_ENV = "CLIPSYNC_RUN_DRIVER"


class RunInProgressError(RuntimeError):
    """Another run of the same client holds the lease."""


@dataclass(frozen=True)
class Lease:
    """Who runs a client's DAG now.

    Attributes:
        holder: The DAG run's id (the KFP run's uuid).
        client_id: The client.
        started_at: When the lease was taken (ISO 8601, UTC).
        expires_at: When it stops counting even if never released.
        run_id: The DAG run's parent MLflow run, once opened.
        host: The machine of the driving process.
        pid: The local driving process (``clipsync run``), 0 when there is none to watch (a cluster run).
        released_at: When the holder gave it back; empty while held.
        released_reason: How the holder's run ended.
    """

    holder: str
    client_id: str
    started_at: str
    expires_at: str
    run_id: str = ""
    host: str = ""
    pid: int = 0
    released_at: str = ""
    released_reason: str = ""

    def describe(self) -> str:
        """One line naming the run that holds (or held) the lease."""
        mlflow = f" (MLflow parent run {self.run_id})" if self.run_id else ""
        by = f" by process {self.pid} on {self.host}" if self.pid else f" on {self.host}" if self.host else ""
        return f"DAG run {self.holder}{mlflow}, started {self.started_at}{by}; lease expires {self.expires_at}"


def _now() -> datetime:
    return datetime.now(UTC)


def read_lease(store: ObjectStore) -> Lease | None:
    """The lease object, or ``None`` if there is none (or it cannot be parsed, which is logged)."""
    try:
        raw = store.get_bytes(LEASE_KEY)
    except ObjectNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Lease(**data)
    except (ValueError, TypeError) as exc:
        logger.warning("lease %s is unreadable (%s); treated as free", store.uri_for(LEASE_KEY), exc)
        return None


def staleness(lease: Lease, now: datetime | None = None) -> str:
    """Why ``lease`` no longer counts (``""`` while it does): released, expired, or its local process is gone."""
    now = now or _now()
    if lease.released_at:
        return f"released at {lease.released_at} ({lease.released_reason})"
    if now >= datetime.fromisoformat(lease.expires_at):
        return f"expired at {lease.expires_at}"
    if lease.pid and lease.host == socket.gethostname():
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return f"its process {lease.pid} on {lease.host} is gone"
        except PermissionError:  # exists, owned by someone else
            pass
    return ""


def _write(store: ObjectStore, lease: Lease) -> None:
    body = json.dumps(dataclasses.asdict(lease), indent=1, sort_keys=True).encode()
    store.put_bytes(LEASE_KEY, body, content_type="application/json")


def acquire(
    store: ObjectStore, client_id: str, holder: str, hours: float, now: datetime | None = None
) -> tuple[Lease, str]:
    """Take the client's lease for the DAG run ``holder`` (again, if it already holds it: a retried task).

    Args:
        store: The client's artifacts store.
        client_id: The client.
        holder: The DAG run's id.
        hours: How long the lease counts if it is never released.
        now: The current time (tests).

    Returns:
        The lease, and a note naming the previous lease when a stale one was taken over (``""`` otherwise).

    Raises:
        RunInProgressError: Another run holds a lease that still counts; the message names it.
    """
    now = now or _now()
    current = read_lease(store)
    if current is not None and current.holder == holder and not current.released_at:
        return current, ""
    note = ""
    if current is not None and not current.released_at:
        why = staleness(current, now)
        if not why:
            raise RunInProgressError(
                f"client {client_id!r} already has a run in progress: {current.describe()} "
                f"({store.uri_for(LEASE_KEY)}). This run was not started; start it again once that run has ended."
            )
        note = f"took over the lease of {current.describe()}: {why}"
        logger.warning("%s", note)
    host, _, pid = os.environ.get(DRIVER_ENV, "").rpartition(":")
    lease = Lease(
        holder=holder,
        client_id=client_id,
        started_at=now.isoformat(timespec="seconds"),
        expires_at=(now + timedelta(hours=hours)).isoformat(timespec="seconds"),
        host=host or socket.gethostname(),
        pid=int(pid) if pid.isdigit() else 0,
    )
    _write(store, lease)
    won = read_lease(store)
    if won is None or won.holder != holder:
        raise RunInProgressError(
            f"client {client_id!r}: another run took the lease at the same moment ({won.describe() if won else '?'})"
        )
    logger.info("lease of %s taken: %s", client_id, lease.describe())
    return lease, note


def record_run(store: ObjectStore, lease: Lease, run_id: str) -> Lease:
    """Write the parent MLflow run id into the lease (so a refused run can name it)."""
    updated = dataclasses.replace(lease, run_id=run_id)
    _write(store, updated)
    return updated


def release(store: ObjectStore, holder: str, reason: str, now: datetime | None = None) -> bool:
    """Give the lease back if ``holder`` holds it.

    Returns:
        Whether it was released (``False``: someone else holds it, or nobody).
    """
    current = read_lease(store)
    if current is None or current.holder != holder or current.released_at:
        return False
    when = (now or _now()).isoformat(timespec="seconds")
    _write(store, dataclasses.replace(current, released_at=when, released_reason=reason))
    logger.info("lease of %s released (%s)", current.client_id, reason)
    return True

"""The ``fleet`` section of a client's config: where the client lives in a cluster shared by many clients, when its
monthly run starts, and which endpoints count as inside the cluster (standard library only).

``pipelines/fleet.py`` (onboard, offboard, the schedule plan) and ``pipelines/doctor.py`` read it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from components.common.errors import require

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class FleetConfig:
    """One client among many: its namespace, its schedule slot, the endpoints it may reach.

    Attributes:
        namespace: The client's Kubernetes namespace (its Kubeflow profile namespace: its runs, its Secret
            ``clipsync-minio-<client>``, its ServiceAccount, its NetworkPolicy). Default (``""``):
            ``clipsync-<client>``.
        kfp_host: The Kubeflow Pipelines API onboarding creates the recurring run on (``""``: none).
        s3_endpoint: The in-cluster MinIO (``host:port``) named in the client's Secret and KFP launcher settings;
            the doctor checks it (and ``MINIO_ENDPOINT``). Default ``minio.clipsync.svc:9000``.
        schedule_first_day: First day of the month the monthly run may start on (1..28).
        schedule_last_day: Last such day (1..28, so that every month has it).
        schedule_first_hour: First hour (UTC) of the start window on those days (0..23).
        schedule_last_hour: Last hour (UTC) of the window (0..23, at least ``schedule_first_hour``).
        cron: A 6-field KFP cron that replaces the client's planned slot (``""``: the stable hash of the client id
            picks a day, hour and minute inside the window).
        allowed_hosts: Endpoints outside the cluster's own names and private addresses that ``clipsync doctor``
            accepts: host names, ``*.suffix`` wildcards or CIDR blocks (``10.20.0.0/16``).
    """

    namespace: str = ""
    kfp_host: str = ""
    s3_endpoint: str = "minio.clipsync.svc:9000"
    schedule_first_day: int = 1
    schedule_last_day: int = 7
    schedule_first_hour: int = 0
    schedule_last_hour: int = 23
    cron: str = ""
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(
            not self.namespace or bool(_DNS_LABEL.match(self.namespace)),
            f"fleet.namespace must be a DNS label (lower-case, digits, dashes), got {self.namespace!r}",
        )
        require(
            not self.kfp_host or self.kfp_host.startswith(("http://", "https://")),
            f"fleet.kfp_host must be the KFP API URL (http(s)://...), got {self.kfp_host!r}",
        )
        host, _, port = self.s3_endpoint.rpartition(":")
        require(
            bool(host) and port.isdigit() and "/" not in self.s3_endpoint,
            f"fleet.s3_endpoint must be host:port, got {self.s3_endpoint!r}",
        )
        require(
            1 <= self.schedule_first_day <= self.schedule_last_day <= 28,
            "fleet.schedule_first_day / schedule_last_day must satisfy 1 <= first <= last <= 28, got "
            f"{self.schedule_first_day} / {self.schedule_last_day}",
        )
        require(
            0 <= self.schedule_first_hour <= self.schedule_last_hour <= 23,
            "fleet.schedule_first_hour / schedule_last_hour must satisfy 0 <= first <= last <= 23, got "
            f"{self.schedule_first_hour} / {self.schedule_last_hour}",
        )
        if self.cron:
            from components.common.cron import CronError, validate_cron

            try:
                validate_cron(self.cron)
            except CronError as exc:
                require(False, f"fleet.cron: {exc}")
        for entry in self.allowed_hosts:
            require(isinstance(entry, str), f"fleet.allowed_hosts: each entry must be a string, got {entry!r}")
            try:
                ipaddress.ip_network(entry, strict=False)
                continue
            except ValueError:
                pass
            require(
                bool(_HOST.match(entry)),
                f"fleet.allowed_hosts: {entry!r} is neither a host name, a *.suffix wildcard nor a CIDR block",
            )


#: Key of the client's Secret that holds its SSE-C key (``encryption.mode: sse-c``), read into
#: ``encryption.sse_c_key_env``.
SSE_C_SECRET_KEY = "CLIPSYNC_SSE_C_KEY"


def client_secret_name(client_id: str) -> str:
    """The client's own MinIO credentials Secret, referenced only by its pipeline tasks and predictors."""
    return f"clipsync-minio-{client_id}"


def client_service_account(client_id: str) -> str:
    """The client's ServiceAccount in its namespace: its pipeline runs and its per-client predictors."""
    return f"clipsync-{client_id}"

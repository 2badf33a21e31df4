"""Running many clients: one-command onboarding and offboarding, staggered monthly schedules.

A fleet folder (``--fleet-dir``, default ``{state_dir}/fleet``) holds one folder per onboarded client::

    <fleet>/<client>/config.yaml      the client's config (what `clipsync run/compile/doctor` read)
    <fleet>/<client>/onboard.json     what onboarding created (the buckets it made, the name it was asked for)
    <fleet>/<client>/manifests/       the client's Kubernetes objects (pipelines/fleet_manifests.py)
    <fleet>/serving-tokens.json       the serving token map, token -> client ids (serving/auth.py's format)

:func:`onboard` builds a plan of steps, each ``create``, ``update``, ``unchanged``, ``check`` or ``skip``; a dry run
prints it, a real run applies it. A second onboarding of the same client finds everything ``unchanged``.
:func:`offboard` removes what onboarding and the monthly runs created (never the client's uploads).

Only the standard library is imported at module level.

Why this file is long: onboarding and offboarding are one plan of the same steps (folders, buckets, secrets,
registry, schedule) applied forwards or backwards; split, each step's create and remove would drift apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.errors import ConfigError

logger = logging.getLogger("clipsync.fleet")

CONFIG_FILE = "config.yaml"
RECORD_FILE = "onboard.json"
TOKENS_FILE = "serving-tokens.json"
MANIFESTS = "manifests"
MODELS = ("clip", "lipsync")
CLIENT_TAG = "clipsync.client"


# ------------------------------------------------------------------------------------------ names and schedules


def normalise_client_id(raw: str) -> str:
    """The client id of a requested name: lower case, runs of ``_``, ``.``, spaces and dashes become one dash.

    Raises:
        ConfigError: Naming ``--client`` when nothing valid is left.
    """
    from components.common.names import CLIENT_ID_RULE, is_client_id

    text = re.sub(r"[\s_.\-]+", "-", str(raw).strip().lower()).strip("-")
    if not is_client_id(text):
        raise ConfigError(f"--client {raw!r} does not normalise to a client id ({CLIENT_ID_RULE})")
    return text


def planned_cron(client_id: str, fleet: Any) -> tuple[str, str]:
    """The client's monthly start: ``fleet.cron`` when set, else a stable slot from a hash of the client id.

    The SHA-256 of the id picks one minute among every minute of the window (days ``schedule_first_day`` ..
    ``schedule_last_day``, hours ``schedule_first_hour`` .. ``schedule_last_hour``, UTC), so the slot never changes
    for a client and a fleet spreads evenly over the window.

    Returns:
        The 6-field KFP cron and where it came from (``fleet.cron`` or ``hash``).
    """
    if fleet.cron:
        return " ".join(fleet.cron.split()), "fleet.cron"
    days = fleet.schedule_last_day - fleet.schedule_first_day + 1
    hours = fleet.schedule_last_hour - fleet.schedule_first_hour + 1
    slot = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big") % (days * hours * 60)
    day, rest = divmod(slot, hours * 60)
    hour, minute = divmod(rest, 60)
    return f"0 {minute} {fleet.schedule_first_hour + hour} {fleet.schedule_first_day + day} * *", "hash"


def default_fleet_dir(state_dir: str | Path) -> Path:
    """Where the fleet's client folders live by default."""
    return Path(state_dir) / "fleet"


def load_fleet(fleet_dir: Path) -> dict[str, Any]:
    """Every onboarded client's config, by client id (a folder whose config does not load is an error)."""
    from components.config import load_config

    configs = {}
    for path in sorted(Path(fleet_dir).glob(f"*/{CONFIG_FILE}")):
        config = load_config(path)
        if config.client_id != path.parent.name:
            raise ConfigError(f"{path}: client_id {config.client_id!r} does not match its folder {path.parent.name!r}")
        configs[config.client_id] = config
    return configs


@dataclass(frozen=True)
class PlanRow:
    """One client's place in the fleet's schedule."""

    client_id: str
    cron: str
    source: str
    same_minute_as: tuple[str, ...] = ()


def schedule_plan(configs: dict[str, Any]) -> list[PlanRow]:
    """The fleet's monthly starts, in order of the month; clients sharing a start minute are named."""
    crons = {cid: planned_cron(cid, cfg.fleet) for cid, cfg in configs.items()}

    def order(item: tuple[str, tuple[str, str]]) -> tuple:
        fields = item[1][0].split()
        return (*[int(f) if f.isdigit() else 99 for f in (fields[3], fields[2], fields[1])], item[0])

    rows = []
    for cid, (cron, source) in sorted(crons.items(), key=order):
        twins = tuple(sorted(o for o, (c, _) in crons.items() if c == cron and o != cid))
        rows.append(PlanRow(cid, cron, source, twins))
    return rows


def format_plan(rows: list[PlanRow]) -> str:
    """The plan as a Markdown table."""
    lines = ["| client | cron (UTC, seconds first) | starts | from | shares its minute with |", "|---|---|---|---|---|"]
    for row in rows:
        f = row.cron.split()
        starts = f"day {f[3]} {int(f[2]):02d}:{int(f[1]):02d}" if all(x.isdigit() for x in f[1:4]) else row.cron
        lines.append(f"| {row.client_id} | `{row.cron}` | {starts} | {row.source} | {', '.join(row.same_minute_as)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ ownership


def _locations(config: Any) -> dict[str, str]:
    """Setting -> the location it names (``bucket/prefix`` for S3, an absolute path for a folder)."""
    found = {
        "storage.source_uri": config.storage.source_uri,
        "storage.artifacts_uri": config.storage.artifacts_uri,
        "deploy.storage_uri_prefix": config.deploy.storage_uri_prefix.replace("{client}", config.client_id),
    }
    if config.serving.query_log_uri:
        found["serving.query_log_uri"] = config.serving.query_log_uri.replace("{client}", config.client_id)
    return {k: (v[len("s3://") :] if v.startswith("s3://") else v).rstrip("/") for k, v in found.items()}


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def check_ownership(config: Any, others: dict[str, Any]) -> None:
    """Refuse a config that names a location of another client (the same, inside it, or around it).

    Raises:
        ConfigError: Naming the setting, the other client and its setting.
    """
    mine = _locations(config)
    for other_id, other in sorted(others.items()):
        if other_id == config.client_id:
            continue
        for setting, location in mine.items():
            for other_setting, other_location in _locations(other).items():
                if _overlap(location, other_location):
                    raise ConfigError(
                        f"{setting} ({location}) is client {other_id}'s location ({other_setting} {other_location}): "
                        "each client's buckets and prefixes are its own"
                    )


def check_isolation(config: Any) -> None:
    """Settings a shared cluster needs for a client to stay isolated.

    Raises:
        ConfigError: A per-client InferenceService that would not run in the client's namespace as its own
            ServiceAccount (it would read another Secret than the client's).
    """
    from components.common.fleet_config import client_service_account

    deploy = config.deploy
    if deploy.target == "kserve" and deploy.kserve_mode == "per-client":
        want = (config.fleet.namespace, client_service_account(config.client_id))
        if (deploy.namespace, deploy.service_account) != want:
            raise ConfigError(
                f"deploy.namespace / deploy.service_account: per-client predictors must run in {want[0]} as "
                f"{want[1]} (the only ServiceAccount carrying the client's Secret), got "
                f"{deploy.namespace} / {deploy.service_account}"
            )


# ------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Step:
    """One thing onboarding or offboarding does (or found already done)."""

    what: str
    action: str  # create | update | remove | unchanged | check | skip
    detail: str = ""


@dataclass
class Plan:
    """The steps of one onboarding or offboarding, with the functions that apply the changing ones."""

    client_id: str
    command: str
    steps: list[Step] = field(default_factory=list)
    appliers: list[Callable[[], None] | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, action: str, detail: str = "", apply: Callable[[], None] | None = None) -> None:
        self.steps.append(Step(what, action, detail))
        self.appliers.append(apply)

    @property
    def changes(self) -> bool:
        return any(s.action in ("create", "update", "remove") for s in self.steps)

    def apply(self) -> None:
        for step, fn in zip(self.steps, self.appliers, strict=True):
            if fn is not None and step.action in ("create", "update", "remove"):
                logger.info("%s: %s %s", self.command, step.action, step.what)
                fn()

    def to_text(self, dry_run: bool) -> str:
        head = f"{self.command} {self.client_id}" + (" (dry run: nothing changed)" if dry_run else "")
        lines = [head] + [f"  {s.action:9} {s.what}" + (f": {s.detail}" if s.detail else "") for s in self.steps]
        if not self.changes:
            lines.append("  nothing to change: everything is already in place")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".clipsync-tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _file_step(plan: Plan, what: str, path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_file() and path.read_text() == text:
        plan.add(what, "unchanged", str(path))
    else:
        plan.add(what, "update" if path.exists() else "create", str(path), lambda: _write_text(path, text, mode))


# ------------------------------------------------------------------------------------------ tokens


def read_tokens(path: Path) -> dict[str, list[str]]:
    """The fleet's serving token map (empty when the file does not exist yet).

    Raises:
        ConfigError: Naming the file when it is not a valid token map.
    """
    from serving.auth import parse_token_map

    if not path.is_file():
        return {}
    parsed = parse_token_map(path.read_text(), f"serving.tokens_file ({path})")
    return {token: sorted(ids) for token, ids in parsed.items()}


def _token_text(tokens: dict[str, list[str]]) -> str:
    return json.dumps(tokens, indent=1, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------------ S3


def _s3_client() -> Any:
    """A minio client from the ``MINIO_*`` variables (bucket administration: create, default encryption)."""
    from minio import Minio

    from components.common.storage import s3_settings_from_env

    settings = s3_settings_from_env()
    return Minio(
        settings["endpoint"],
        access_key=settings["access_key"],
        secret_key=os.environ["MINIO_SECRET_KEY"],
        secure=settings["secure"],
        region=settings["region"],
    )


def _bucket_of(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def _client_buckets(config: Any) -> dict[str, str]:
    """Bucket -> its role, for every ``s3://`` location onboarding sets up."""
    roles: dict[str, str] = {}
    for role, uri in (
        ("uploads (read-only to clipsync)", config.storage.source_uri),
        ("artifacts", config.storage.artifacts_uri),
        ("models", config.deploy.storage_uri_prefix.replace("{client}", config.client_id)),
    ):
        if uri.startswith("s3://"):
            roles.setdefault(_bucket_of(uri)[0], role)
    return roles


def _bucket_steps(plan: Plan, config: Any, created: list[str]) -> None:
    from minio.sseconfig import Rule, SSEConfig

    from components.common.encryption import bucket_default_rule

    client = _s3_client()
    algorithm, key_id = bucket_default_rule(config.encryption)
    for bucket, role in _client_buckets(config).items():
        exists = client.bucket_exists(bucket)
        if exists:
            plan.add(f"bucket {bucket}", "unchanged", role)
        else:
            plan.add(f"bucket {bucket}", "create", role, lambda b=bucket: (client.make_bucket(b), created.append(b)))
        if not config.encryption.enabled:
            plan.add(f"default encryption of {bucket}", "skip", "encryption.mode is none")
            continue
        current = client.get_bucket_encryption(bucket) if exists else None
        have = (current.rule.sse_algorithm, current.rule.kms_master_key_id or "") if current else None
        want = f"{algorithm}" + (f" with key {key_id}" if key_id else "")
        if have == (algorithm, key_id):
            plan.add(f"default encryption of {bucket}", "unchanged", want)
            continue
        rule = Rule.new_sse_kms_rule(key_id) if algorithm == "aws:kms" else Rule.new_sse_s3_rule()
        plan.add(
            f"default encryption of {bucket}",
            "update" if have else "create",
            want,
            lambda b=bucket, r=rule: client.set_bucket_encryption(b, SSEConfig(r)),
        )


# ------------------------------------------------------------------------------------------ MLflow, KFP


def _mlflow_steps(plan: Plan, config: Any) -> None:
    from components.common.tracking import _client

    client = _client(config.tracking)
    tags = {CLIENT_TAG: config.client_id}
    name = config.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "active":
        plan.add(f"MLflow experiment {name}", "unchanged")
    elif experiment is not None:
        plan.add(
            f"MLflow experiment {name}",
            "update",
            "restore",
            lambda: client.restore_experiment(experiment.experiment_id),
        )
    else:
        location = config.tracking.artifact_location or None
        plan.add(
            f"MLflow experiment {name}",
            "create",
            "",
            lambda: client.create_experiment(name, artifact_location=location, tags=tags),
        )
    from components.deploy.core import registered_name

    for model in MODELS:
        registered = registered_name(model, config.client_id)
        found = client.search_registered_models(filter_string=f"name = '{registered}'")
        if found:
            plan.add(f"registry name {registered}", "unchanged")
        else:
            plan.add(
                f"registry name {registered}",
                "create",
                "",
                lambda n=registered: client.create_registered_model(n, tags=tags),
            )


def _kfp(host: str, kfp_client: Any) -> Any:
    from pipelines.schedule import _connect

    return _connect(host, kfp_client)


def _recurring_runs(kfp_client: Any, config: Any) -> tuple[Any, list[Any]]:
    """The client's KFP experiment (``None`` if absent) and its recurring runs named ``clipsync-<id>-monthly``."""
    name, job = f"clipsync-{config.client_id}", f"clipsync-{config.client_id}-monthly"
    try:
        experiment = kfp_client.get_experiment(experiment_name=name, namespace=config.fleet.namespace)
    except ValueError:
        return None, []
    runs = kfp_client.list_recurring_runs(experiment_id=experiment.experiment_id, page_size=100).recurring_runs or []
    return experiment, [r for r in runs if r.display_name == job]


def _schedule_step(plan: Plan, config: Any, config_text: str, host: str, kfp_client: Any) -> None:
    from pipelines.schedule import schedule

    cron, source = planned_cron(config.client_id, config.fleet)
    if not host and kfp_client is None:
        plan.add("recurring run", "skip", f"no fleet.kfp_host (planned: {cron}, from {source})")
        return
    kfp_client = _kfp(host, kfp_client)
    _, runs = _recurring_runs(kfp_client, config)
    current = [r.trigger.cron_schedule.cron for r in runs if r.trigger and r.trigger.cron_schedule]
    detail = f"{cron} (from {source}), namespace {config.fleet.namespace}"
    if current == [cron]:
        plan.add("recurring run", "unchanged", detail)
        return
    plan.add(
        "recurring run",
        "update" if runs else "create",
        detail,
        lambda: schedule(
            host,
            config.client_id,
            config_text,
            cron,
            replace=True,
            kfp_client=kfp_client,
            namespace=config.fleet.namespace,
        ),
    )


# ------------------------------------------------------------------------------------------ onboard


def _client_config_text(client_id: str, config_text: str, existing: Path) -> str:
    import yaml

    if not config_text.strip():
        return existing.read_text() if existing.is_file() else f"client_id: {client_id}\n"
    data = yaml.safe_load(config_text) or {}
    if not isinstance(data, dict):
        raise ConfigError("--config must hold a mapping at the top level")
    data["client_id"] = client_id
    return yaml.safe_dump(data, sort_keys=False)


def onboard(
    requested: str,
    *,
    config_text: str = "",
    fleet_dir: Path | None = None,
    cluster: bool | None = None,
    dry_run: bool = False,
    kfp_client: Any = None,
) -> Plan:
    """Set a client up (idempotent: a second call finds every step ``unchanged``).

    Args:
        requested: The client id as asked for (normalised: ``Acme_Corp`` -> ``acme-corp``).
        config_text: The client's YAML config (``""``: the one already in the fleet folder, else the defaults).
        fleet_dir: The fleet folder (default ``{state_dir}/fleet``).
        cluster: Set up the cluster side too (buckets, Kubernetes objects, MLflow names, recurring run); ``None``:
            when the config's ``deploy.target`` is ``kserve``.
        dry_run: Only plan.
        kfp_client: An existing ``kfp.Client`` (tests); default: one for ``fleet.kfp_host``.

    Returns:
        The plan, applied unless ``dry_run``.

    Raises:
        ConfigError: An id that collides with another client's after normalisation, a config naming another
            client's location, an invalid config, an unreadable uploads location.
    """
    import yaml

    from components.common.config import default_state_dir
    from components.common.fleet_config import client_secret_name
    from components.config import from_dict

    client_id = normalise_client_id(requested)
    fleet_dir = Path(fleet_dir) if fleet_dir is not None else None
    text_probe = yaml.safe_load(config_text) if config_text.strip() else {}
    data = {**(text_probe or {}), "client_id": client_id}
    state = Path(data.get("state_dir") or default_state_dir())
    fleet_dir = fleet_dir or default_fleet_dir(state)
    folder = fleet_dir / client_id
    record_path = folder / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record and record.get("requested_as", client_id) != str(requested).strip() and str(requested) != client_id:
        raise ConfigError(
            f"--client {requested!r} normalises to {client_id!r}, which client {record['requested_as']!r} already "
            "has: choose another id"
        )
    text = _client_config_text(client_id, config_text, folder / CONFIG_FILE)
    config = from_dict({**(yaml.safe_load(text) or {}), "client_id": client_id})
    others = {cid: cfg for cid, cfg in load_fleet(fleet_dir).items() if cid != client_id} if fleet_dir.is_dir() else {}
    check_ownership(config, others)
    check_isolation(config)
    cluster = config.deploy.target == "kserve" if cluster is None else cluster

    plan = Plan(client_id, "onboard")
    created: list[str] = list(record.get("created_buckets", []))
    _file_step(plan, "config file", folder / CONFIG_FILE, text)
    for uri, role in ((config.storage.source_uri, "uploads"), (config.storage.artifacts_uri, "artifacts")):
        if "://" not in uri:
            path = Path(uri)
            subdirs = (
                [path / config.storage.videos_prefix, path / config.storage.labels_prefix]
                if role == "uploads"
                else [path]
            )
            missing = [p for p in subdirs if not p.is_dir()]
            if missing:
                plan.add(
                    f"{role} folder",
                    "create",
                    str(path),
                    lambda m=missing: [p.mkdir(parents=True, exist_ok=True) for p in m],
                )
            else:
                plan.add(f"{role} folder", "unchanged", str(path))
    if cluster:
        _bucket_steps(plan, config, created)
        for name, obj in _manifest_texts(config).items():
            _file_step(plan, f"manifest {name}", folder / MANIFESTS / name, obj)
        _mlflow_steps(plan, config)
    tokens_path = fleet_dir / TOKENS_FILE
    tokens = read_tokens(tokens_path)
    if any(client_id in ids for ids in tokens.values()):
        plan.add("serving token", "unchanged", f"in {tokens_path}")
    else:
        new = {**tokens, secrets.token_urlsafe(32): [client_id]}
        plan.add(
            "serving token",
            "create",
            f"{tokens_path} (0600): routes clip-{client_id}, lipsync-{client_id}",
            lambda: _write_text(tokens_path, _token_text(new), 0o600),
        )
    if cluster:
        _schedule_step(plan, config, text, config.fleet.kfp_host, kfp_client)
    new_record = {"client_id": client_id, "requested_as": record.get("requested_as", str(requested).strip())}
    new_record["created_buckets"] = created
    if not dry_run:
        plan.apply()
        if plan.changes or not record_path.is_file():
            _write_text(record_path, json.dumps(new_record, indent=1, sort_keys=True) + "\n")
        plan.add("uploads readable", "check", _check_uploads(config))
    if cluster:
        plan.notes.append(f"apply the Kubernetes objects: kubectl apply -k {folder / MANIFESTS}")
        plan.notes.append(
            f"fill Secret {client_secret_name(client_id)} in {config.fleet.namespace} from your secret store; give the "
            f"client's MinIO user the policy {folder / MANIFESTS / 'minio-policy.json'}"
        )
    return plan


def _manifest_texts(config: Any) -> dict[str, str]:
    import yaml

    from pipelines.fleet_manifests import client_objects

    texts = {}
    for name, obj in client_objects(config).items():
        if name.endswith(".json"):
            texts[name] = json.dumps(obj, indent=1) + "\n"
        else:
            texts[name] = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)
    return texts


def _check_uploads(config: Any) -> str:
    """List the uploads location (nothing is generated): readable, and how many videos it holds.

    Raises:
        ConfigError: Naming ``storage.source_uri`` when it cannot be read.
    """
    from components.common.storage import StorageError, open_store

    try:
        count = sum(1 for _ in open_store(config.storage.source_uri).list(config.storage.videos_prefix))
    except StorageError as exc:
        raise ConfigError(f"storage.source_uri {config.storage.source_uri} is not readable: {exc}") from None
    return f"{config.storage.source_uri} readable, {count} object(s) under {config.storage.videos_prefix}"


# ------------------------------------------------------------------------------------------ offboard


def _inside(a: str, b: str) -> bool:
    return _overlap(a.rstrip("/"), b.rstrip("/"))


def _remove_s3_prefix(client: Any, bucket: str, prefix: str) -> int:
    from minio.deleteobjects import DeleteObject

    names = [o.object_name for o in client.list_objects(bucket, prefix=prefix + "/" if prefix else "", recursive=True)]
    errors = list(client.remove_objects(bucket, [DeleteObject(n) for n in names]))
    if errors:
        raise RuntimeError(f"could not remove {len(errors)} object(s) from {bucket}: {errors[0]}")
    return len(names)


def _delete_pipeline(kfp_client: Any, pipeline_id: str) -> None:
    """Delete a KFP pipeline and its versions (the server refuses to delete a pipeline that has versions)."""
    versions = kfp_client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    for version in versions:
        kfp_client.delete_pipeline_version(pipeline_id, version.pipeline_version_id)
    kfp_client.delete_pipeline(pipeline_id)


def offboard(
    client_id: str,
    *,
    confirm: str,
    fleet_dir: Path | None = None,
    dry_run: bool = False,
    kfp_client: Any = None,
) -> Plan:
    """Remove what clipsync created for a client: its recurring run, MLflow experiment and registered models, its
    artifacts and published models, its serving token and its fleet folder's config. Never its uploads.

    Args:
        client_id: The client.
        confirm: Must repeat ``client_id`` (``--confirm``): nothing is removed otherwise.
        fleet_dir: The fleet folder (default ``{state_dir}/fleet``).
        dry_run: Only plan.
        kfp_client: An existing ``kfp.Client`` (tests).

    Raises:
        ConfigError: Not confirmed, not onboarded, or an artifacts location that overlaps the uploads.
    """
    from components.common.config import default_state_dir
    from components.config import load_config

    if confirm != client_id:
        raise ConfigError(f"--confirm must repeat the client id ({client_id!r}) to offboard it; nothing was removed")
    fleet_dir = Path(fleet_dir) if fleet_dir is not None else default_fleet_dir(default_state_dir())
    folder = fleet_dir / client_id
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"client {client_id!r} is not onboarded in {fleet_dir} (no {CONFIG_FILE})")
    config = load_config(folder / CONFIG_FILE)
    record = json.loads((folder / RECORD_FILE).read_text()) if (folder / RECORD_FILE).is_file() else {}
    source = config.storage.source_uri
    plan = Plan(client_id, "offboard")
    cluster = config.deploy.target == "kserve"

    if cluster and (config.fleet.kfp_host or kfp_client is not None):
        kfp_client = _kfp(config.fleet.kfp_host, kfp_client)
        experiment, runs = _recurring_runs(kfp_client, config)
        for run in runs:
            plan.add(
                f"recurring run {run.display_name}",
                "remove",
                run.recurring_run_id,
                lambda r=run: kfp_client.delete_recurring_run(r.recurring_run_id),
            )
        if not runs:
            plan.add("recurring run", "unchanged", "none")
        from pipelines.schedule import pipeline_name

        pipeline_id = kfp_client.get_pipeline_id(pipeline_name(client_id))
        if pipeline_id is not None:
            plan.add(
                f"pipeline {pipeline_name(client_id)}",
                "remove",
                pipeline_id,
                lambda: _delete_pipeline(kfp_client, pipeline_id),
            )

    from components.common import tracking as tr
    from components.deploy.core import registered_name

    client = tr._client(config.tracking)
    for model in MODELS:
        name = registered_name(model, client_id)
        if client.search_registered_models(filter_string=f"name = '{name}'"):
            plan.add(f"registry name {name}", "remove", "", lambda n=name: client.delete_registered_model(n))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None and experiment.lifecycle_stage == "active":
        plan.add(
            f"MLflow experiment {config.tracking.experiment}",
            "remove",
            "",
            lambda: client.delete_experiment(experiment.experiment_id),
        )

    places = [("artifacts", config.storage.artifacts_uri)]
    if cluster:
        places.append(("published models", config.deploy.storage_uri_prefix.replace("{client}", client_id)))
    for role, uri in places:
        if _inside(uri, source):
            raise ConfigError(
                f"storage.artifacts_uri / deploy.storage_uri_prefix {uri} overlaps the uploads {source}: "
                "refusing to remove anything there"
            )
        if uri.startswith("s3://"):
            s3 = _s3_client()
            bucket, prefix = _bucket_of(uri)
            if not s3.bucket_exists(bucket):
                continue
            if not prefix and bucket not in record.get("created_buckets", []):
                plan.add(f"{role} {uri}", "skip", "a whole bucket onboarding did not create: left as it is")
                continue
            plan.add(
                f"{role} {uri}",
                "remove",
                "every object under it",
                lambda s3=s3, b=bucket, p=prefix: _remove_s3_prefix(s3, b, p),
            )
        elif Path(uri).is_dir():
            plan.add(f"{role} {uri}", "remove", "the folder", lambda p=Path(uri): shutil.rmtree(p))

    tokens_path = fleet_dir / TOKENS_FILE
    tokens = read_tokens(tokens_path)
    kept = {t: [i for i in ids if i != client_id] for t, ids in tokens.items()}
    kept = {t: ids for t, ids in kept.items() if ids}
    if kept != tokens:
        plan.add(
            "serving token", "remove", str(tokens_path), lambda: _write_text(tokens_path, _token_text(kept), 0o600)
        )
    for name in (CONFIG_FILE, RECORD_FILE):
        plan.add(f"fleet file {name}", "remove", str(folder / name), lambda p=folder / name: p.unlink(missing_ok=True))
    plan.notes.append(f"uploads kept: {source}")
    if (folder / MANIFESTS).is_dir():
        plan.notes.append(
            f"delete the Kubernetes objects: kubectl delete -k {folder / MANIFESTS} (then remove that folder)"
        )
    if not dry_run:
        plan.apply()
    return plan

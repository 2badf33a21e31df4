"""Fleet operations: onboarding (local, and the cluster side against moto's S3 server, MLflow on sqlite and the KFP
API stand-in), offboarding, staggered schedules, per-client Kubernetes objects (kubernetes-validate --strict), the
per-client Secret in the compiled package, and the on-premises doctor."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml
from crd_schemas import validate_crd
from s3_servers import ACCESS, SECRET, moto_http

from components.common.config import ConfigError
from components.config import from_dict, load_config
from pipelines import fleet
from pipelines.doctor import classify, report
from pipelines.fleet_manifests import client_objects

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib

    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ schedules


def test_planned_slots_are_stable_inside_the_window_and_spread():
    config = from_dict({"fleet": {"schedule_first_day": 2, "schedule_last_day": 4, "schedule_last_hour": 5}})
    ids = [f"client-{n:03d}" for n in range(100)]
    crons = [fleet.planned_cron(i, config.fleet) for i in ids]
    assert crons == [fleet.planned_cron(i, config.fleet) for i in ids]  # stable
    assert {source for _, source in crons} == {"hash"}
    fields = [c.split() for c, _ in crons]
    assert all(f[0] == "0" and 2 <= int(f[3]) <= 4 and 0 <= int(f[2]) <= 5 and f[4:] == ["*", "*"] for f in fields)
    assert len({c for c, _ in crons}) >= 90  # 1080 minutes: about 4.5 shared minutes expected (birthdays)
    hours = Counter((f[3], f[2]) for f in fields)  # 18 day-hours for 100 clients
    assert len(hours) == 18 and max(hours.values()) <= 12
    override = from_dict({"fleet": {"cron": "0 30 1 5 * *"}})
    assert fleet.planned_cron("x1", override.fleet) == ("0 30 1 5 * *", "fleet.cron")


def test_schedule_list_shows_the_fleets_plan(state_dir):
    for name in ("acme", "beta"):
        fleet.onboard(name)
    fleet.onboard("gamma", config_text="fleet:\n  cron: '0 0 3 1 * *'\n")
    code, out, _ = _cli("schedule", "--list")
    assert code == 0
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "client" not in line]
    crons = {r[1].strip(): r[2].strip().strip("`") for r in rows}
    assert crons == {
        c: fleet.planned_cron(c, load_config(state_dir / "fleet" / c / "config.yaml").fleet)[0] for c in crons
    }
    assert sorted(crons) == ["acme", "beta", "gamma"]
    starts = [tuple(int(x) for x in reversed(crons[r[1].strip()].split()[1:4])) for r in rows]
    assert starts == sorted(starts)  # in order of the month
    assert "`0 0 3 1 * *` | day 1 03:00 | fleet.cron" in out
    assert f"`{fleet.planned_cron('acme', from_dict({}).fleet)[0]}`" in out


def test_schedule_uses_the_clients_slot(kfp_server, tmp_path):
    url, fake = kfp_server
    config = tmp_path / "beta.yaml"
    config.write_text("client_id: beta\nfleet:\n  schedule_first_day: 3\n  schedule_last_day: 3\n")
    code, _, err = _cli("schedule", "--host", url, "--config", str(config))
    assert code == 0, err
    (job,) = fake.recurring.values()
    expected = fleet.planned_cron("beta", load_config(config).fleet)[0]
    assert job["trigger"]["cron_schedule"]["cron"] == expected and expected.split()[3] == "3"


# ------------------------------------------------------------------ onboarding, local


def test_local_onboarding_is_idempotent_and_dry_run_changes_nothing(state_dir):
    dry = fleet.onboard("Acme_Corp", dry_run=True)
    assert dry.changes and not (state_dir / "fleet").exists() and not (state_dir / "buckets").exists()
    first = fleet.onboard("Acme_Corp")
    assert first.client_id == "acme-corp"
    assert {s.what: s.action for s in first.steps} == {
        "config file": "create",
        "uploads folder": "create",
        "artifacts folder": "create",
        "serving token": "create",
        "uploads readable": "check",
    }
    assert (state_dir / "buckets" / "acme-corp" / "videos").is_dir()
    assert load_config(state_dir / "fleet" / "acme-corp" / "config.yaml").client_id == "acme-corp"
    tokens_file = state_dir / "fleet" / "serving-tokens.json"
    assert oct(tokens_file.stat().st_mode & 0o777) == "0o600"
    tokens = json.loads(tokens_file.read_text())
    assert list(tokens.values()) == [["acme-corp"]]
    before = {p: p.stat().st_mtime_ns for p in (state_dir / "fleet").rglob("*") if p.is_file()}
    second = fleet.onboard("Acme_Corp")
    assert not second.changes and "nothing to change" in second.to_text(False)
    assert {p: p.stat().st_mtime_ns for p in (state_dir / "fleet").rglob("*") if p.is_file()} == before
    # the serving token file is what the servers read (serving.tokens_file)
    from serving.auth import load_policy
    from serving.config import ServingConfig

    policy = load_policy(ServingConfig(tokens_file=str(tokens_file)))
    (token,) = tokens
    assert policy.caller(f"Bearer {token}").may_call("clip-acme-corp")
    assert not policy.caller(f"Bearer {token}").may_call("clip-beta")


def test_bad_input_is_refused_naming_the_setting(state_dir):
    fleet.onboard("Acme_Corp")
    with pytest.raises(ConfigError, match=r"--client 'ACME.corp' normalises to 'acme-corp', which client 'Acme_Corp'"):
        fleet.onboard("ACME.corp")
    with pytest.raises(ConfigError, match="--client '__' does not normalise"):
        fleet.onboard("__")
    theirs = state_dir / "buckets" / "acme-corp"
    with pytest.raises(ConfigError, match=r"storage.source_uri .* is client acme-corp's location \(storage.source_uri"):
        fleet.onboard("beta", config_text=f"storage:\n  source_uri: {theirs}\n")
    with pytest.raises(ConfigError, match=r"storage.artifacts_uri .* is client acme-corp's location"):
        fleet.onboard("beta", config_text=f"storage:\n  artifacts_uri: {theirs}/sub\n")
    (state_dir / "fleet" / "serving-tokens.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"serving.tokens_file .*serving-tokens.json.*not valid JSON"):
        fleet.onboard("beta")
    code, _, err = _cli("offboard", "--client", "acme-corp")
    assert code == 2 and "--confirm must repeat the client id" in err
    assert (state_dir / "fleet" / "acme-corp" / "config.yaml").is_file()


# ------------------------------------------------------------------ onboarding and offboarding, cluster side

CLUSTER_YAML = """
storage:
  source_uri: s3://{id}-uploads
  artifacts_uri: s3://{art}/{id}
tracking:
  tracking_uri: sqlite:///{db}
deploy:
  target: kserve
  storage_uri_prefix: s3://{models}/{{client}}
serving:
  query_log_uri: s3://{art}/{{client}}
  tokens_env: CLIPSYNC_CLIENT_TOKENS
  admin_token_env: CLIPSYNC_ADMIN_TOKEN
encryption:
  mode: sse-kms
  kms_key_id: {id}-key
fleet:
  kfp_host: {kfp}
  allowed_hosts: [10.96.0.1/32]
"""


@pytest.fixture()
def s3_env(monkeypatch):
    with moto_http() as endpoint:
        monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
        monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
        monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
        from minio import Minio

        yield Minio(endpoint.split("://")[1], access_key=ACCESS, secret_key=SECRET, secure=False)


def test_cluster_onboarding_and_offboarding(state_dir, s3_env, kfp_server, monkeypatch):
    import kubernetes_validate
    import mlflow

    url, fake = kfp_server
    minio = s3_env
    cid = f"c{uuid.uuid4().hex[:6]}"
    # moto's backends are per process: bucket names of this test only
    art, models = f"{cid}-artifacts", f"{cid}-models"
    text = CLUSTER_YAML.format(id=cid, db=state_dir / "mlflow.db", kfp=url, art=art, models=models)
    minio.make_bucket(art)  # shared by the fleet: one prefix per client
    plan = fleet.onboard(cid, config_text=text, cluster=True)
    actions = {s.what: s.action for s in plan.steps}
    assert actions[f"bucket {cid}-uploads"] == "create" and actions[f"bucket {art}"] == "unchanged"
    assert actions[f"default encryption of {art}"] == "create"
    assert actions["recurring run"] == "create" and actions[f"registry name clip-{cid}"] == "create"
    for bucket in (f"{cid}-uploads", art, models):
        rule = minio.get_bucket_encryption(bucket).rule
        assert (rule.sse_algorithm, rule.kms_master_key_id) == ("aws:kms", f"{cid}-key"), bucket
    client = mlflow.MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    assert client.get_experiment_by_name(f"clipsync-{cid}").tags["clipsync.client"] == cid
    assert client.get_registered_model(f"lipsync-{cid}").tags == {"clipsync.client": cid}
    (job,) = fake.recurring.values()
    config = load_config(state_dir / "fleet" / cid / "config.yaml")
    assert job["trigger"]["cron_schedule"]["cron"] == fleet.planned_cron(cid, config.fleet)[0]
    experiment_posts = [json.loads(b) for m, u, b in fake.requests if m == "POST" and u.endswith("/experiments")]
    assert experiment_posts[0]["namespace"] == f"clipsync-{cid}"

    # the rendered objects: valid for Kubernetes (strict), only this client's Secret, in-cluster traffic only
    folder = state_dir / "fleet" / cid / "manifests"
    version = kubernetes_validate.latest_version()
    docs = {p.name: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
    for obj in docs.values():
        if obj["kind"] == "TrainingRuntime":  # a Kubeflow Trainer CRD
            validate_crd(obj)
        else:
            kubernetes_validate.validate(obj, version, strict=True)
    assert sorted(o["kind"] for o in docs.values()) == [
        "ConfigMap", "Namespace", "NetworkPolicy", "Role", "RoleBinding", "RoleBinding", "Secret", "ServiceAccount",
        "TrainingRuntime",
    ]  # fmt: skip
    (node,) = docs["trainingruntime.yaml"]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]["containers"]  # fmt: skip
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in node["env"]} == {f"clipsync-minio-{cid}"}
    policy = docs["networkpolicy.yaml"]["spec"]
    assert policy["egress"] == [{"to": [{"namespaceSelector": {}}]}, {"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}]}]
    assert policy["ingress"] == [{"from": [{"namespaceSelector": {}}]}] and policy["podSelector"] == {}
    assert docs["serviceaccount.yaml"]["secrets"] == [{"name": f"clipsync-minio-{cid}"}]
    assert set(docs["secret-minio.yaml"]["stringData"].values()) == {""}
    assert f"clipsync-minio-{cid}" in docs["configmap-kfp-launcher.yaml"]["data"]["providers"]
    iam = json.loads((folder / "minio-policy.json").read_text())
    uploads = [s for s in iam["Statement"] if f"arn:aws:s3:::{cid}-uploads/*" in s["Resource"]]
    assert [s["Action"] for s in uploads] == [["s3:GetObject"]]  # read-only to clipsync

    again = fleet.onboard(cid, cluster=True)
    assert not again.changes, again.to_text(False)

    # a month of objects, then offboarding: all of clipsync's are gone, the uploads stay
    minio.put_object(f"{cid}-uploads", "videos/a.mp4", io.BytesIO(b"video"), 5)
    minio.put_object(art, f"{cid}/runs/lease.json", io.BytesIO(b"{}"), 2)
    minio.put_object(art, "other/runs/lease.json", io.BytesIO(b"{}"), 2)
    minio.put_object(models, f"{cid}/clip-{cid}/v1/release.json", io.BytesIO(b"{}"), 2)
    with pytest.raises(ConfigError, match="--confirm"):
        fleet.offboard(cid, confirm="beta")
    gone = fleet.offboard(cid, confirm=cid)
    assert {s.action for s in gone.steps} == {"remove"}, gone.to_text(False)
    assert [o.object_name for o in minio.list_objects(f"{cid}-uploads", recursive=True)] == ["videos/a.mp4"]
    assert [o.object_name for o in minio.list_objects(art, recursive=True)] == ["other/runs/lease.json"]
    assert not list(minio.list_objects(models, recursive=True))
    assert not fake.recurring and not fake.pipelines
    assert not client.search_registered_models(filter_string=f"name = 'clip-{cid}'")
    assert client.get_experiment_by_name(f"clipsync-{cid}").lifecycle_stage == "deleted"
    assert json.loads((state_dir / "fleet" / "serving-tokens.json").read_text()) == {}
    assert not (state_dir / "fleet" / cid / "config.yaml").exists()


def test_compiled_package_reads_only_the_clients_own_secret(tmp_path):
    from pipelines.package import compile_pipeline

    refs, texts = {}, {}
    for cid, extra in (("acme", ""), ("beta", "encryption:\n  mode: sse-c\n")):
        out = compile_pipeline(tmp_path / f"{cid}.yaml", cid, f"client_id: {cid}\n{extra}")
        texts[cid] = out.read_text()
        platform = list(yaml.safe_load_all(texts[cid]))[1]["platforms"]["kubernetes"]["deploymentSpec"]
        refs[cid] = {
            (s["secretName"], e["secretKey"], e["envVar"])
            for executor in platform["executors"].values()
            for s in executor["secretAsEnv"]
            for e in s["keyToEnv"]
        }
    for cid, other in (("acme", "beta"), ("beta", "acme")):
        names = {name for name, _, _ in refs[cid]}
        assert names == {f"clipsync-minio-{cid}", "clipsync-serving-tokens"}, names
        assert f"clipsync-minio-{other}" not in texts[cid] and "clipsync-minio\n" not in texts[cid]
    assert ("clipsync-minio-beta", "CLIPSYNC_SSE_C_KEY", "CLIPSYNC_SSE_C_KEY") in refs["beta"]
    assert not any(key == "CLIPSYNC_SSE_C_KEY" for _, key, _ in refs["acme"])


def test_per_client_predictors_run_as_the_clients_own_service_account(state_dir):
    from components.deploy.kserve import build_inference_service

    bad = "deploy:\n  target: kserve\n  kserve_mode: per-client\nserving:\n  tokens_env: T\n  admin_token_env: A\n"
    with pytest.raises(ConfigError, match=r"deploy.namespace / deploy.service_account: per-client predictors"):
        fleet.onboard("acme", config_text=bad, cluster=False)
    good = bad.replace("per-client\n", "per-client\n  namespace: clipsync-acme\n  service_account: clipsync-acme\n")
    config = from_dict({**yaml.safe_load(good), "client_id": "acme"})
    fleet.check_isolation(config)
    isvc = build_inference_service("clip-acme", "s3://m/clip-acme/v1", config.deploy, "clip-search")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "clipsync-acme"
    assert client_objects(config)["serviceaccount.yaml"]["secrets"] == [{"name": "clipsync-minio-acme"}]


# ------------------------------------------------------------------ on premises


def test_onprem_example_config_passes_the_doctor(monkeypatch):
    monkeypatch.setenv("CLIPSYNC_SSE_C_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("MINIO_ENDPOINT", "http://minio.acme-onprem.svc.cluster.local:9000")
    config = load_config(REPO / "configs" / "example-onprem.yaml")
    text, ok = report(config)
    assert ok, text
    for kind in ("object store", "MLflow", "Kubeflow Pipelines", "Kubernetes API", "KServe"):
        assert f"| {kind}" in text, kind
    assert config.finetune_clip.base_model.startswith("s3://")


def test_doctor_fails_on_every_endpoint_outside_the_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.delenv("CLIPSYNC_SSE_C_KEY", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        "client_id: acme\nstorage:\n  artifacts_uri: s3://clipsync-artifacts/acme\n"
        "tracking:\n  tracking_uri: https://mlflow.example.com\n"
        "finetune_clip:\n  base_model: openai/clip-vit-base-patch32\n"
        "encryption:\n  mode: sse-c\n"
        "fleet:\n  kfp_host: http://10.0.0.5:8888\n  s3_endpoint: s3.amazonaws.com:443\n"
    )
    code, out, _ = _cli("doctor", "--client", "acme", "--config", str(config))
    assert code == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 4, out
    assert any("MLflow https://mlflow.example.com (tracking.tracking_uri)" in f for f in fails)
    assert any("model hub" in f and "finetune_clip.base_model" in f for f in fails)
    assert any("s3.amazonaws.com:443" in f and "storage.artifacts_uri" in f for f in fails)
    assert any("encryption.sse_c_key_env" in f for f in fails)
    assert "| Kubeflow Pipelines | http://10.0.0.5:8888 | fleet.kfp_host | yes: private" in out
    allowed = config.read_text().replace(
        "kfp_host", "allowed_hosts: [mlflow.example.com, '*.amazonaws.com']\n  kfp_host"
    )
    config.write_text(allowed.replace("openai/clip-vit-base-patch32", "s3://models/base").replace("sse-c", "sse-s3"))
    code, out, _ = _cli("doctor", "--client", "acme", "--config", str(config))
    assert code == 0, out


@pytest.mark.parametrize(
    ("host", "inside"),
    [
        ("minio.clipsync.svc", True),
        ("mlflow.clipsync.svc.cluster.local", True),
        ("172.20.1.1", True),
        ("172.32.0.1", False),
        ("192.168.0.10", True),
        ("::1", True),
        ("8.8.8.8", False),
        ("minio", False),
        ("svc.example.com", False),
        ("evil.svc.example.com", False),
        ("localhost", True),
    ],
)
def test_inside_the_cluster(host, inside):
    assert classify(host)[0] is inside

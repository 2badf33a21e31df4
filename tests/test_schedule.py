"""schedule/submit: cron validation, and the real kfp.Client against a tiny local stand-in of the KFP v2beta1
REST API that records what the client sends (healthz, pipeline upload, experiments, recurring runs, runs)."""

from __future__ import annotations

import pytest

from pipelines.schedule import DEFAULT_CRON, ScheduleError, schedule, submit, validate_cron


@pytest.mark.parametrize(
    "expr",
    [DEFAULT_CRON, "0 30 2 1 * ?", "0 0 */6 * * MON-FRI", "0 0 2 1 JAN,JUL *", "  0 0 2  1 * * ", "@monthly"],
)
def test_valid_cron(expr):
    assert validate_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 2 1 * *", "has 5 fields; KFP needs 6 (KFP wants seconds first"),
        ("0 0 2 1 * * *", "has 7 fields"),
        ("0 0 24 1 * *", "hour value '24' is outside 0-23"),
        ("0 0 2 0 * *", "day of month value '0' is outside 1-31"),
        ("0 0 2 1 13 *", "month value '13'"),
        ("0 0 2 1 * 7", "day of week value '7'"),
        ("0 0 2 1 * FOO", "day of week value 'FOO'"),
        ("0 */0 2 1 * *", "bad step '0'"),
        ("? 0 2 1 * *", "'?' is only allowed"),
        ("0 0 2 1,,2 * *", "empty list item"),
    ],
)
def test_invalid_cron(expr, message):
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(").replace("?", r"\?").replace("*", r"\*")):
        validate_cron(expr)


def test_bad_arguments_fail_before_any_network_call():
    with pytest.raises(ScheduleError, match="6"):
        schedule("http://127.0.0.1:9", "acme", cron="0 2 1 * *")
    with pytest.raises(ScheduleError, match="client id"):
        schedule("http://127.0.0.1:9", "ACME")
    with pytest.raises(ScheduleError, match="--host"):
        schedule("ml-pipeline:8888", "acme")
    with pytest.raises(ScheduleError, match="as_of"):
        submit("http://127.0.0.1:9", "acme", as_of="1 Nov")


def test_schedule_uploads_and_creates_a_monthly_recurring_run(kfp_server):
    url, fake = kfp_server
    config_yaml = "client_id: acme\nwindow:\n  days: 30\n"
    result = schedule(url, "acme", config_yaml)
    assert result.pipeline_id == "p1" and result.version_id == "p1-v1" and result.cron == "0 0 2 1 * *"
    assert fake.pipelines == {"clipsync-monthly-retrain-acme": "p1"}
    upload = next(body for method, u, body in fake.requests if "/pipelines/upload" in u)
    assert b"name: monthly-retrain" in upload and b'{"client_id": "acme", "window": {"days": 30}}' in upload
    (job,) = fake.recurring.values()
    assert job["display_name"] == "clipsync-acme-monthly"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 1 * *"
    assert job["max_concurrency"] == 1
    assert job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert job["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "p1-v1"}
    assert job["experiment_id"] == fake.experiments["clipsync-acme"]

    # Again: refused while the recurring run exists; --replace uploads a new version and swaps the run.
    with pytest.raises(ScheduleError, match="already exists"):
        schedule(url, "acme", config_yaml)
    again = schedule(url, "acme", config_yaml, cron="0 0 3 1 * *", replace=True)
    assert again.version_id == "p1-v2" and again.replaced == (result.recurring_run_id,)
    (job,) = fake.recurring.values()
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 1 * *"
    assert len(fake.experiments) == 1


def test_submit_launches_one_run(kfp_server):
    url, fake = kfp_server
    run_id = submit(url, "acme", "", as_of="2026-11-01", window_days=14)
    assert run_id == "run1"
    (run,) = fake.runs
    params = run["runtime_config"]["parameters"]
    assert params == {"client_id": "acme", "as_of": "2026-11-01", "window_days": 14}
    # With a Kubernetes platform spec (the MinIO secret) the client wraps both specs in one object.
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    assert spec["pipelineInfo"]["name"] == "monthly-retrain"


def test_unreachable_server_is_a_schedule_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ScheduleError, match="cannot reach the Kubeflow Pipelines API"):
        schedule(f"http://127.0.0.1:{port}", "acme")

"""The pipeline package compiles, loads back with kfp, and names the right tasks, images and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kfp import components

from components.common.config import ConfigError
from components.common.images import IMAGES
from pipelines.cli import main
from pipelines.package import compile_pipeline

# One name per concept: the display names are the stage names (per model for the gate and deploy).
EXPECTED_STAGES = {
    "start_run",
    "ingest",
    "frame_extraction",
    "face_tracking",
    "finetune_clip",
    "finetune_lipsync",
    "evaluate_clip",
    "evaluate_lipsync",
    "ab_gate_clip",
    "ab_gate_lipsync",
    "deploy_clip",
    "deploy_lipsync",
    "keep_clip",
    "keep_lipsync",
    "feedback",
    "monitor",
    "summary",
    "finish_run",
}


def test_compile_and_load_back(tmp_path: Path):
    out = compile_pipeline(tmp_path / "p.yaml", client_id="beta", config_yaml="window:\n  days: 14\n")
    spec = next(yaml.safe_load_all(out.read_text()))

    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "monthly-retrain"

    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    names = {t["taskInfo"]["name"] for dag in dags for t in dag["tasks"].values()}
    stages = {n for n in names if not n.startswith(("condition", "promote-", "keep-", "monthly-retrain-tasks"))}
    assert stages == EXPECTED_STAGES, stages
    # finish_run is the exit task of an ExitHandler around every other task: it runs whatever they do.
    root_tasks = spec["root"]["dag"]["tasks"]
    assert {t["taskInfo"]["name"] for t in root_tasks.values()} == {"finish_run", "monthly-retrain-tasks"}
    exit_task = root_tasks["finish-run"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert "taskFinalStatus" in exit_task["inputs"]["parameters"]["status"]
    assert spec["root"]["outputDefinitions"]["artifacts"]["Output"]["artifactType"]["schemaTitle"] == "system.Markdown"

    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryLimit"), name
        gpu = resources.get("accelerator", {})
        # Only the two fine-tune tasks ask for a GPU.
        assert (gpu.get("resourceType") == "nvidia.com/gpu") == name.startswith("exec-finetune"), name
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    # Last month's feedback feeds the CLIP fine-tune; the monitor waits for the lip-sync scores, not for a gate.
    assert "feedback" in tasks["finetune-clip"]["dependentTasks"]
    assert set(tasks["monitor"]["dependentTasks"]) == {"evaluate-lipsync", "frame-extraction", "start-run"}
    assert "monitor" in tasks["summary"]["dependentTasks"]
    ingest_task = tasks["ingest"]
    assert ingest_task["retryPolicy"]["maxRetryCount"] == 3
    assert ingest_task.get("cachingOptions", {}).get("enableCache") is not True
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, config in platform.items():
        env = {e["envVar"]: e["secretKey"] for e in config["secretAsEnv"][0]["keyToEnv"]}
        assert env["MINIO_SECRET_KEY"] == "AWS_SECRET_ACCESS_KEY", name
        # Only deploy calls the model servers (loads, probes), with their admin token; never the client tokens.
        tokens = [s for s in config["secretAsEnv"] if s["secretName"] == "clipsync-serving-tokens"]
        assert bool(tokens) == name.startswith("exec-deploy"), name
        if tokens:
            assert tokens[0]["keyToEnv"] == [{"secretKey": "admin", "envVar": "CLIPSYNC_ADMIN_TOKEN"}]

    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"client_id", "config_yaml", "as_of", "window_days"}
    assert params["client_id"]["defaultValue"] == "beta"
    assert json.loads(params["config_yaml"]["defaultValue"]) == {"window": {"days": 14}}

    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images <= set(IMAGES.values()), images
    for executor in spec["deploymentSpec"]["executors"].values():
        # install_kfp_package=False: the image provides kfp and clipsync; nothing is installed at run time.
        assert "pip install" not in " ".join(executor["container"].get("command", []))


def test_cli_compile(tmp_path: Path, capsys):
    out = tmp_path / "pkg.yaml"
    assert main(["compile", "--client", "acme", "-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_gpu_scheduling_comes_from_the_config(tmp_path: Path):
    """The GPU tasks' accelerator, node selector, tolerations and retries come from the ``pipeline_gpu`` section."""
    config = """
pipeline_gpu:
  accelerator_type: nvidia.com/gpu
  accelerator_count: 2
  node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}
  tolerations:
    - {key: dedicated, operator: Equal, value: training, effect: NoSchedule}
  evaluate: true
  retries: 5
  retry_backoff_s: 120
"""
    docs = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", config_yaml=config).read_text()))
    spec, platform = docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu_stages = {"finetune_clip", "finetune_lipsync", "evaluate_clip", "evaluate_lipsync"}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        stage = name.removeprefix("exec-").replace("-", "_")
        accelerator = executor["container"].get("resources", {}).get("accelerator", {})
        if stage in gpu_stages:
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "2"), name
            assert platform[name]["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
            assert platform[name]["tolerations"] == [
                {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
            ]
        else:
            assert not accelerator and "nodeSelector" not in platform[name] and "tolerations" not in platform[name]
    tasks = {
        t["taskInfo"]["name"]: t
        for c in [spec["root"], *spec["components"].values()]
        if "dag" in c
        for t in c["dag"]["tasks"].values()
    }
    for stage in gpu_stages:
        assert tasks[stage]["retryPolicy"] == {
            "backoffDuration": "120s",
            "backoffFactor": 2.0,
            "backoffMaxDuration": "3600s",
            "maxRetryCount": 5,
        }
    assert tasks["ingest"]["retryPolicy"]["backoffDuration"] == "30s"  # the store's own retries are unchanged

    # The defaults: fine-tune tasks only, the usual nvidia.com/gpu toleration, no node selector, 3 retries.
    docs = list(yaml.safe_load_all(compile_pipeline(tmp_path / "d.yaml").read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-finetune-clip"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "tolerations" not in platform["exec-evaluate-clip"] and "nodeSelector" not in platform["exec-finetune-clip"]
    with pytest.raises(ConfigError, match=r"pipeline_gpu\.tolerations: operator"):
        compile_pipeline(tmp_path / "bad.yaml", config_yaml="pipeline_gpu:\n  tolerations: [{key: a, operator: Is}]\n")

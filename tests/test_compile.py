"""The pipeline package compiles, loads back with kfp, and names the right tasks, images and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from kfp import components

from components.common.images import IMAGES
from pipelines.cli import main
from pipelines.package import compile_pipeline

EXPECTED_TASKS = {"start-run", "ingest", "frame-extraction", "face-tracking", "summary"}


def test_compile_and_load_back(tmp_path: Path):
    out = compile_pipeline(tmp_path / "p.yaml", client_id="beta", config_yaml="window:\n  days: 14\n")
    spec = next(yaml.safe_load_all(out.read_text()))

    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "monthly-retrain"

    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) >= EXPECTED_TASKS
    # One name per concept: the display name is the stage name.
    for key, task in tasks.items():
        assert task["taskInfo"]["name"] == key.replace("-", "_")

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

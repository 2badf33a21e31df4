from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import ConfigError
from components.config import ClientConfig, from_dict, load_config


def test_embedded_defaults_need_no_server(state_dir: Path):
    config = load_config()
    assert config.client_id == "acme"
    assert config.state_dir == str(state_dir)
    assert config.storage.source_uri == str(state_dir / "buckets" / "acme")
    assert config.tracking.tracking_uri == f"sqlite:///{state_dir / 'mlflow.db'}"
    assert config.tracking.artifact_location == str(state_dir / "mlartifacts")
    assert config.window.days == 30 and config.window.as_of == ""


def test_yaml_file_and_overrides(tmp_path: Path, state_dir: Path):
    path = tmp_path / "beta.yaml"
    path.write_text(
        "client_id: beta\n"
        "storage:\n  source_uri: s3://beta-uploads/2026\n"
        "tracking:\n  tracking_uri: http://127.0.0.1:5000\n"
        "window:\n  days: 14\n  as_of: '2026-11-01'\n"
        "ingest:\n  min_fps: 10\n"
    )
    config = load_config(path, client_id="gamma")
    assert config.client_id == "gamma"
    assert config.storage.source_uri == "s3://beta-uploads/2026"
    assert config.tracking.artifact_location == ""  # a server keeps its own artifact root
    assert config.window.days == 14 and config.window.as_of == "2026-11-01"
    assert config.ingest.min_fps == 10.0


def test_json_round_trip(state_dir: Path):
    config = load_config(client_id="delta")
    assert ClientConfig.from_json(config.to_json()) == config


def test_config_is_frozen(state_dir: Path):
    config = load_config()
    with pytest.raises(AttributeError):
        config.client_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"client_id": "Bad_Id"}, "client_id"),
        ({"colour": "red"}, "unknown top-level"),
        ({"window": {"days": 0}}, "window.days"),
        ({"window": {"as_of": "November"}}, "ISO date"),
        ({"window": {"days": "30"}}, "window.days must be int"),
        ({"ingest": {"val_fraction": 0.5, "test_fraction": 0.5}}, "sum to less than 1"),
        ({"ingest": {"min_side": 0}}, "min_side"),
        ({"storage": {"videos_prefix": "../videos/"}}, "videos_prefix"),
        ({"storage": {"bucket": "x"}}, "unknown setting(s) in [storage]"),
        ({"tracking": "sqlite://"}, "[tracking] must be a mapping"),
    ],
)
def test_invalid_settings_are_refused_clearly(state_dir: Path, data: dict, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        from_dict(data)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_example_cluster_config_is_valid():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "example-cluster.yaml")
    assert config.storage.source_uri.startswith("s3://")
    assert config.tracking.tracking_uri.startswith("http://")


def test_yaml_exponent_floats_are_read_as_numbers(tmp_path: Path, state_dir: Path):
    path = tmp_path / "c.yaml"
    path.write_text("finetune_lipsync:\n  lr_encoder: 1e-5\n")
    assert load_config(path).finetune_lipsync.lr_encoder == 1e-5


def test_nested_sections_load_and_round_trip(tmp_path: Path, state_dir: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "finetune_lipsync:\n"
        "  model: {fps: 30, crop_size: 64, fusion: cross_attention}\n"
        "  augment: {enabled: false, speed_max: 1.2}\n"
        "  epochs: 4\n"
    )
    config = load_config(path)
    lip = config.finetune_lipsync
    model = lip.model
    assert (model.fps, model.crop_size, model.fusion, model.window_s) == (30.0, 64, "cross_attention", 1.0)
    assert (lip.augment.enabled, lip.augment.speed_max, lip.augment.rotation_deg, lip.epochs) == (False, 1.2, 15.0, 4)
    assert ClientConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match=r"finetune_lipsync\.model: crop_size must be a multiple of 8"):
        from_dict({"finetune_lipsync": {"model": {"crop_size": 50}}})
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in \[finetune_lipsync\.augment\]: rotation"):
        from_dict({"finetune_lipsync": {"augment": {"rotation": 5}}})
    with pytest.raises(ConfigError, match=r"finetune_lipsync\.model\.n_mels must be int"):
        from_dict({"finetune_lipsync": {"model": {"n_mels": "40"}}})
    with pytest.raises(ConfigError, match=r"\[finetune_lipsync\.model\] must be a mapping"):
        from_dict({"finetune_lipsync": {"model": "big"}})


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"finetune_lipsync": {"window_s": 1.5}}, "finetune_lipsync.model.window_s"),
        ({"finetune_lipsync": {"model_fps": 30}}, "finetune_lipsync.model.fps"),
        ({"finetune_lipsync": {"fusion": "concat"}}, "finetune_lipsync.model.fusion"),
        ({"finetune_lipsync": {"use_augmentation": False}}, "finetune_lipsync.augment.enabled"),
        ({"finetune_lipsync": {"noise_std": 0.1}}, "finetune_lipsync.augment.noise_std"),
        ({"finetune_clip": {"mixed_precision": "no"}}, "finetune_clip.precision"),
    ],
)
def test_moved_settings_are_refused_with_their_new_place(state_dir: Path, old: dict, new: str):
    import re

    section, key = next((s, k) for s, v in old.items() for k in v)
    with pytest.raises(ConfigError, match=re.escape(f"setting {section}.{key} has moved: use {new}")):
        from_dict(old)

"""Federated LoRA with Flower (finetune_clip.federated): settings, the reply check, and 3 simulated sites.

The simulation tests run Flower's real simulation runtime (Ray, one actor) on a tiny CLIP: three sites with three
categories each, the federated adapter against each site's local-only adapter on the union test set, and
every reply the server received checked to be the adapter's tensors and the example count, nothing else.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic_frames import colour_videos, recall_at_1

torch = pytest.importorskip("torch")
pytest.importorskip("flwr")

from components.common.config import ConfigError  # noqa: E402
from components.finetune_clip.config import FederatedConfig, FinetuneClipConfig  # noqa: E402

#: Nine categories, three per site; a category's videos show its colour in the middle.
COLOURS = {
    "surgery": (200, 40, 40),
    "forklift": (40, 200, 40),
    "curling": (40, 40, 200),
    "welding": (200, 200, 40),
    "bakery": (200, 40, 200),
    "harbour": (40, 200, 200),
    "karate": (240, 140, 20),
    "pottery": (120, 120, 120),
    "glacier": (250, 250, 250),
}
SITES = {
    "north": ("surgery", "forklift", "curling"),
    "south": ("welding", "bakery", "harbour"),
    "east": ("karate", "pottery", "glacier"),
}


def test_federated_settings_are_validated():
    from components.config import from_dict

    cfg = from_dict({"finetune_clip": {"federated": {"enabled": True, "sites": ["a", "b"], "rounds": 3}}})
    assert cfg.finetune_clip.federated == FederatedConfig(enabled=True, sites=("a", "b"), rounds=3)
    assert FinetuneClipConfig().federated.enabled is False
    assert "federated" not in FinetuneClipConfig().training_fingerprint()
    assert cfg.finetune_clip.training_fingerprint()["federated"]["sites"] == ["a", "b"]
    bad = [
        ({"enabled": True, "sites": ["a"]}, "finetune_clip.federated: enabled needs at least 2 sites"),
        ({"sites": ["A/b", "c"]}, "sites must be folder names"),
        ({"sites": ["a", "a"]}, "sites must be distinct"),
        ({"rounds": 0}, "rounds must be 1..1000"),
        ({"local_epochs": 0}, "local_epochs must be 1..100"),
        ({"noise_multiplier": 1.0}, "needs clip_norm > 0"),
        ({"secure": True}, "unknown setting(s) in [finetune_clip.federated]: secure"),
        ({"rounds": "3"}, "finetune_clip.federated.rounds must be int"),
    ]
    for section, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            from_dict({"finetune_clip": {"federated": section}})
    with pytest.raises(ConfigError, match="strategy must be lora"):
        from_dict({"finetune_clip": {"strategy": "hybrid", "federated": {"enabled": True, "sites": ["a", "b"]}}})


def test_check_reply_accepts_only_the_adapter_and_the_count():
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from components.finetune_clip.federated import FederationError, check_reply

    expected = {"a.lora_A.weight": (4, 8), "a.lora_B.weight": (8, 4)}
    adapter = {name: torch.zeros(shape) for name, shape in expected.items()}

    def reply(arrays=None, metrics=None, **extra):
        arrays = adapter if arrays is None else arrays
        metrics = {"num-examples": 5} if metrics is None else metrics
        return RecordDict({"adapter": ArrayRecord(arrays), "metrics": MetricRecord(metrics), **extra})

    assert check_reply(reply(), expected) == 5
    refused = [
        reply(arrays={**adapter, "frames": torch.zeros(2, 3, 32, 32)}),  # an extra tensor
        reply(arrays={"a.lora_A.weight": torch.zeros(4, 8), "a.lora_B.weight": torch.zeros(8, 5)}),  # other shape
        reply(metrics={"num-examples": 5, "loss": 0.3}),  # another metric
        reply(metrics={"num-examples": 0}),
        reply(embeddings=ArrayRecord({"e": torch.zeros(5, 8)})),  # another record
        reply(ids=ConfigRecord({"video_id": "abc"})),
    ]
    for content in refused:
        with pytest.raises(FederationError):
            check_reply(content, expected)


# ------------------------------------------------------------------------------------------ simulation


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny randomly initialised CLIP (1 layer, width 32, 32 px; deterministic, unlike a briefly pretrained one)."""
    from hub_clip import write_hub_clip

    corpus = [f"{c} video" for c in COLOURS] + [f"a clip of {c}" for c in COLOURS] + ["a photo of a red square"]
    return write_hub_clip(tmp_path_factory.mktemp("base") / "tiny-clip", corpus * 20)


def _cfg(**kw) -> FinetuneClipConfig:
    base = {
        "batch_size": 4,
        "frames_per_video": 2,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "early_stopping_patience": 0,
        "device": "cpu",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "num_threads": 1,
    }
    base.update(kw)
    return FinetuneClipConfig(**base)


@pytest.mark.slow
def test_federated_adapter_beats_each_local_adapter_and_only_the_adapter_travels(tiny_base, tmp_path):
    from peft import get_peft_model_state_dict

    from components.finetune_clip.federated import train_federated
    from components.finetune_clip.model import apply_strategy, load_base_clip
    from components.finetune_clip.train import train_clip

    rounds, local_epochs = 10, 2
    cfg = _cfg(federated={"enabled": True, "sites": list(SITES), "rounds": rounds, "local_epochs": local_epochs})
    spec = load_base_clip(str(tiny_base)).image_spec
    sites = {
        name: colour_videos({c: COLOURS[c] for c in cats}, 6, seed=i, spec=spec)
        for i, (name, cats) in enumerate(SITES.items())
    }
    test = colour_videos(COLOURS, 3, seed=99, spec=spec)

    received: list[tuple[int, dict]] = []
    bundle = load_base_clip(str(tiny_base))
    fed = train_federated(bundle, None, sites, [], cfg, on_reply=lambda rnd, content: received.append((rnd, content)))
    federated_r1 = recall_at_1(bundle, fed.model, test)
    local_r1 = {}
    for name, samples in sites.items():
        local = load_base_clip(str(tiny_base))
        result = train_clip(local, samples, [], replace(cfg, epochs=rounds * local_epochs), tmp_path / name)
        local_r1[name] = recall_at_1(local, result.model, test)
    print(f"union test R@1: federated {federated_r1:.3f}, local-only {local_r1}")
    assert fed.epochs_run == rounds and fed.best_epoch == rounds
    assert all(federated_r1 > r for r in local_r1.values()), (federated_r1, local_r1)

    # What crossed the wire to the server: per round one reply per site, each exactly the LoRA state dict's
    # tensors (names and shapes of a fresh adapter of these settings) and the site's video count.
    fresh, _ = apply_strategy(load_base_clip(str(tiny_base)).model, cfg)
    adapter_shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(fresh).items()}
    assert all(".lora_A." in k or ".lora_B." in k for k in adapter_shapes)
    assert sorted(rnd for rnd, _ in received) == sorted(list(range(1, rounds + 1)) * len(SITES))
    for _, content in received:
        assert sorted(content.keys()) == ["adapter", "metrics"] and not content.config_records
        assert {k: tuple(a.shape) for k, a in content["adapter"].items()} == adapter_shapes
        assert dict(content["metrics"]) == {"num-examples": 18}  # 3 categories x 6 videos at every site


def _site_frames(root: Path, per_category: int) -> Path:
    """A frames Dataset whose uploads lie in one folder per site (``videos/<site>/...``), splits train/val/test."""
    from components.frame_extraction.dataset import FrameRecord, ShardWriter, write_frame_index

    rng = np.random.default_rng(0)
    rows = []
    root.mkdir(parents=True)
    with ShardWriter(root, "search", max_videos=16) as writer:
        for site, cats in SITES.items():
            for cat in cats:
                for i in range(per_category):
                    vid = f"{len(rows):016x}"
                    frames = rng.integers(0, 60, size=(3, 40, 40, 3)).astype(np.uint8)
                    frames[:, 10:30, 10:30] = COLOURS[cat]
                    rows.append(
                        FrameRecord(
                            video_id=vid,
                            key=f"videos/{site}/{vid}.mp4",
                            split=("train", "train", "val", "test")[i % 4],
                            labels=(f"{cat} video",),
                            category=cat,
                            search_shard=writer.add(vid, frames),
                            n_search=3,
                            search_times=(0.5, 1.5, 2.5),
                        )
                    )
    write_frame_index(root, rows)
    return root


@pytest.mark.slow
def test_stage_registers_the_federated_adapter_as_challenger_and_evaluate_reads_it(tiny_base, tmp_path):
    """run_finetune_clip with federated on: sites from the upload folders, MLflow on sqlite, then evaluate."""
    import mlflow

    from components.common import tracking
    from components.config import from_dict
    from components.evaluate.core import run_evaluate_clip
    from components.finetune_clip.core import run_finetune_clip

    frames = _site_frames(tmp_path / "frames", 4)
    config = from_dict(
        {"state_dir": str(tmp_path / "state"), "client_id": "acme", "window": {"as_of": "2026-11-01", "days": 30}}
    )
    fed = {"enabled": True, "sites": [*SITES, "west"], "rounds": 2, "local_epochs": 1, "clip_norm": 5.0}
    cfg = _cfg(base_model=str(tiny_base), federated=fed)
    report = run_finetune_clip(frames, tmp_path / "model", cfg, config.context())
    assert report.registered_version == "1" and report.n_train == 18 and report.epochs_run == 2
    assert tracking.get_version_by_alias(config.tracking, "clip-acme", "challenger") == "1"
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    assert [m.step for m in client.get_metric_history(report.run_id, "val_loss")] == [1, 2]
    params = client.get_run(report.run_id).data.params
    assert params["federated.enabled"] == "True" and params["federated.clip_norm"] == "5.0"
    ev = run_evaluate_clip(frames, tmp_path / "model", tmp_path / "eval", cfg, config.context())
    assert ev.n_test_videos == 9 and ev.challenger.queries == sorted(f"{c} video" for c in COLOURS)

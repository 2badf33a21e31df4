"""Training shards streamed across ranks and workers, and finetune_clip under ``torchrun --nproc_per_node 2`` (gloo).

The CLIP torchrun test compares a two-rank run with a one-process run on the same data and global batch (LoRA
dropout off: each rank draws its own dropout masks, so with dropout the runs agree in distribution only). Before
any update the gathered batch gives one process's loss (``TOL``); after updates the curves agree within
``CURVE_TOL`` only: the two ranks sum the vision tower's gradient in another order, and AdamW divides each gradient
element by its own running magnitude, so rounding differences in small elements are not damped. Measured on an AMD
EPYC: after one step the LoRA weights of the two runs differ by at most 7e-9, after two by up to 1e-4; the loss
curves were up to 3e-4 apart after two steps and 2e-4 to 1e-3 after four (under 1e-4 on the machine the test was
first written on). A two-rank run stopped after epoch 1 and resumed on both ranks from rank 0's checkpoint must
equal an uninterrupted two-rank run exactly (the same reductions in the same order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_frames import make_frames

torch = pytest.importorskip("torch")

from components.common.distributed import World, gather_rows, world_from_env  # noqa: E402
from components.common.shards import (  # noqa: E402
    ShardSource,
    ShardWriter,
    make_stream,
    rank_slice,
    read_listing,
    stream_loader,
    write_listing,
)

TOL = 1e-4  # max abs difference of a loss between one process and two ranks on the same weights
CURVE_TOL = 2e-3  # the same after a few AdamW steps (module docstring)
REPO = Path(__file__).resolve().parents[1]


def _key_fields(key: str, fields: dict) -> tuple[str, int]:
    return key, int(fields["x"][0])


def test_shards_stream_every_sample_once_across_ranks_and_workers(tmp_path):
    writer = ShardWriter(tmp_path, "toy", samples_per_shard=4)
    keys = [f"s{i:02d}" for i in range(11)]
    for i, key in enumerate(keys):
        writer.add(key, {"x": np.array([i, i], dtype=np.int64)})
    listing = write_listing(tmp_path, writer.close(), str(tmp_path / "store"), "unused")
    assert [len(k) for _, k in listing.shards] == [4, 4, 3]
    source = ShardSource(read_listing(tmp_path), str(tmp_path))
    rng = np.random.default_rng(0)
    order = [keys[i] for i in rng.permutation(len(keys))]
    plan = [order[0:4], order[4:8], order[8:11]]
    seen: dict[int, list] = {}
    for rank in (0, 1):
        loader = stream_loader(make_stream(source, plan, _key_fields, rank, 2), workers=2)
        batches = list(loader)
        assert [b for b, _ in batches] == [0, 1, 2]  # the plan's order, whatever worker read a batch
        for b, items in batches:
            assert [k for k, _ in items] == plan[b][rank_slice(len(plan[b]), rank, 2)]
            assert all(int(k[1:]) == x for k, x in items)  # the fields are the sample's own
            seen.setdefault(b, []).extend(k for k, _ in items)
    assert sorted(k for ks in seen.values() for k in ks) == keys  # once each, across the world
    assert [sorted(seen[b]) for b in range(3)] == [sorted(p) for p in plan]
    with pytest.raises(KeyError, match="no training shard holds"):
        source.read("missing")


def test_shards_in_an_s3_store_leave_the_dataset_and_stream_from_the_store(tmp_path, monkeypatch):
    """With an s3:// artifacts store (moto on loopback) the Dataset keeps only the listing; workers fetch shards."""
    from minio import Minio
    from s3_servers import ACCESS, SECRET, moto_http

    with moto_http() as endpoint:
        for name, value in (("MINIO_ENDPOINT", endpoint), ("MINIO_ACCESS_KEY", ACCESS), ("MINIO_SECRET_KEY", SECRET)):
            monkeypatch.setenv(name, value)
        Minio(endpoint.split("://", 1)[1], access_key=ACCESS, secret_key=SECRET, secure=False).make_bucket("art")
        dataset = tmp_path / "dataset"
        writer = ShardWriter(dataset, "toy", samples_per_shard=2)
        for i in range(5):
            writer.add(f"s{i}", {"x": np.full(3, i, dtype=np.int64)})
        write_listing(dataset, writer.close(), "s3://art/acme", "train-shards/toy/acme-w")
        assert sorted(p.name for p in dataset.iterdir()) == ["train_shards.json"]
        listing = read_listing(dataset)
        assert listing.store == "s3://art/acme" and listing.prefix == "train-shards/toy/acme-w"
        source = ShardSource(listing, str(dataset), str(tmp_path / "spool"))
        plan = [["s4", "s0"], ["s2", "s1", "s3"]]
        got = {b: items for b, items in stream_loader(make_stream(source, plan, _key_fields), workers=2)}
        assert got == {0: [("s4", 4), ("s0", 0)], 1: [("s2", 2), ("s1", 1), ("s3", 3)]}
        assert len(list((tmp_path / "spool").rglob("*.safetensors"))) == 3  # fetched once each, to disk


def test_rank_slices_cover_a_batch_and_world_comes_from_torchrun_env(monkeypatch):
    for n in (2, 5, 12):
        parts = [rank_slice(n, r, 3) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(2, 1, 1) and not world_from_env().is_main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="outside WORLD_SIZE 2"):
        world_from_env()
    x = torch.ones(3, 2)
    assert gather_rows(x, [3], World()) is x  # one process: nothing to gather


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from components.finetune_clip.base_model import build_demo_base_clip

    out = tmp_path_factory.mktemp("base") / "base-clip"
    return build_demo_base_clip(
        out, seed=0, time_budget_s=20, max_steps=3, batch_size=8, image_size=32, patch_size=16, width=32, layers=1
    )


@pytest.mark.slow
def test_clip_stage_streams_its_training_videos_and_remembers_them_as_prepared(tiny_base, tmp_path):
    """run_finetune_clip on a frames Dataset with shards: the same training as from memory, the same history."""
    from components.config import from_dict
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import run_finetune_clip
    from components.frame_extraction.train_shards import write_search_shards

    cfg = FinetuneClipConfig(base_model=str(tiny_base), epochs=2, batch_size=4, frames_per_video=2, device="cpu",
                             lora_r=4, lora_alpha=8, num_threads=1, loader_workers=1)  # fmt: skip
    reports, remembered = {}, {}
    for name in ("memory", "streamed"):
        frames = make_frames(tmp_path / name / "frames", 24)
        if name == "streamed":
            write_search_shards(frames, 5, str(tmp_path / name / "artifacts"), "unused")
        config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / name / "state")})
        reports[name] = run_finetune_clip(frames, tmp_path / name / "model", cfg, config.context(track=False))
        history = Path(config.storage.artifacts_uri) / "history" / "clip"
        remembered[name] = {p.name: np.load(p) for p in sorted(history.glob("*.npy"))}
    assert reports["streamed"].n_train == reports["memory"].n_train == 12
    assert reports["streamed"].best_val_loss == pytest.approx(reports["memory"].best_val_loss, abs=TOL)
    assert remembered["streamed"].keys() == remembered["memory"].keys() and len(remembered["memory"]) == 18
    assert all(np.array_equal(remembered["streamed"][k], remembered["memory"][k]) for k in remembered["memory"])


def _run(args: list[str], ranks: int, stopped: bool = False, timeout: float = 240) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    proc = subprocess.run([*launcher, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if (proc.returncode != 0) != stopped:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_and_resume(tiny_base, tmp_path):
    from components.frame_extraction.train_shards import write_search_shards

    frames = make_frames(tmp_path / "frames", 24)  # 12 training videos, 6 validation videos
    write_search_shards(frames, 5, str(tmp_path / "artifacts"), "unused")
    assert (frames / "train_shards.json").is_file()
    # one global batch of the 12 training videos per epoch (6 per rank): each epoch's train_loss is one step's
    cfg = {"epochs": 3, "batch_size": 12, "frames_per_video": 2, "lr": 5e-3, "warmup_ratio": 0.0,
           "early_stopping_patience": 0, "device": "cpu", "lora_r": 4, "lora_alpha": 8,
           "lora_dropout": 0.0, "num_threads": 1, "loader_workers": 1}  # fmt: skip
    worker = str(REPO / "tests" / "ddp_clip_worker.py")

    def run(name: str, ranks: int, stop: int = 0) -> None:
        args = [worker, str(tiny_base), str(frames), str(tmp_path / name), str(tmp_path / f"{name}.json")]
        _run([*args, json.dumps(cfg), *([str(stop)] if stop else [])], ranks, stopped=bool(stop))

    def result(name: str, rank: int = 0) -> dict:
        return json.loads((tmp_path / f"{name}.json.{rank}").read_text())

    run("one", 1)
    run("two", 2)
    run("resumed", 2, stop=1)  # both ranks stop after epoch 1, as a preempted job would
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["finished"]
    run("resumed", 2)
    assert [result("resumed", rank)["resumed_from_epoch"] for rank in (0, 1)] == [1, 1]
    one, two, resumed = (result(name)["history"] for name in ("one", "two", "resumed"))
    assert len(one) == len(two) == 3
    assert abs(one[0]["train_loss"] - two[0]["train_loss"]) < TOL  # the first step's loss: no update yet
    assert one[0]["train_loss"] - one[-1]["train_loss"] > 10 * CURVE_TOL  # it learns (about 0.04 here)
    for key in ("train_loss", "val_loss"):
        diffs = [abs(a[key] - b[key]) for a, b in zip(one, two, strict=True)]
        print(f"{key}: one process {[round(h[key], 6) for h in one]}, two ranks apart by {[f'{d:.1e}' for d in diffs]}")
        assert max(diffs) < CURVE_TOL

    def figures(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]

    assert figures(resumed) == figures(two)  # resuming changes nothing
    assert figures(result("two", 1)["history"]) == figures(two)  # both ranks: the same global batches, validation


@pytest.mark.slow
def test_torchrun_lipsync_entry_two_ranks_match_one_process(tmp_path):
    """The TrainJob's entry, ``-m components.finetune_lipsync.distributed``, with augmentation on (dropout off)."""
    from components.config import from_dict
    from components.face_tracking.train_shards import write_lipsync_shards
    from components.finetune_lipsync.synthetic import write_synthetic_faces

    faces = tmp_path / "faces"
    write_synthetic_faces(faces, {"train": 8, "val": 2, "test": 2}, duration_s=1.5, size=32)
    listing = write_lipsync_shards(faces, 3, str(tmp_path / "artifacts"), "unused")
    # each sample's digest names its content for the retrain fingerprint, and survives the listing file
    assert set(listing.digest_of()) == {k for _, keys in listing.shards for k in keys}
    assert read_listing(faces) == listing
    assert sorted(k for _, keys in listing.shards for k in keys) == [f"train{i:03d}" for i in range(8)] + [
        "val000",
        "val001",
    ]
    model = {"crop_size": 32, "visual_channels": 4, "audio_channels": 8, "embed_dim": 16, "attention_heads": 2}
    # pretrained "champion" (the default): none yet, so from scratch; every rank asks the registry, rank 0 first
    section = {"model": {**model, "dropout": 0.0}, "batch_size": 8, "epochs": 2, "freeze_epochs": 0,
               "num_threads": 1, "device": "cpu", "precision": "fp32", "loader_workers": 1}  # fmt: skip
    histories = {}
    for name, ranks in (("one", 1), ("two", 2)):
        config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / name), "finetune_lipsync": section})
        (tmp_path / f"{name}.json").write_text(config.to_json())
        args = ["-m", "components.finetune_lipsync.distributed", "--config", str(tmp_path / f"{name}.json")]
        out = tmp_path / name
        args += ["--faces", str(faces), "--model", str(out / "model"), "--report", str(out / "r")]
        _run(args, ranks)
        report = json.loads((out / "r").read_text())
        assert report["registered_version"] == "1" and report["n_train_videos"] == 8
        assert (out / "model" / "model.safetensors").is_file()
        (state,) = (out / "checkpoints").glob("finetune_lipsync/*/checkpoints/last/state.json")
        histories[name] = json.loads(state.read_text())["history"]
    for key in ("train_loss", "val_loss"):
        diffs = [abs(a[key] - b[key]) for a, b in zip(histories["one"], histories["two"], strict=True)]
        curve = [round(h[key], 6) for h in histories["one"]]
        print(f"lipsync {key}: one process {curve}, max abs diff two ranks {max(diffs):.2e}")
        assert max(diffs) < TOL

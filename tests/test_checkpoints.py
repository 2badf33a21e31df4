"""Checkpoints in the artifacts store: the slot scheme, and training killed mid-epoch (kill -9) then resumed.

The killed run and the resumed one use different state folders (a preempted pod's disk is gone; its retry
runs on another node) and the same artifacts store, so the resumed run can only find the checkpoint there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic_frames import make_frames

from components.common import checkpoints as ckpt
from components.common.storage import LocalStore

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

# The child trains, and in the second batch of the epoch after its first checkpoint push it writes
# MARKER and sleeps: the parent kills it there with SIGKILL, in the middle of an epoch.
CHILD_PRELUDE = """
import json, sys, time
from pathlib import Path
from components.common import checkpoints
args = json.loads(sys.argv[1])
pushed = []
_push = checkpoints.CheckpointMirror.push
def push(self, ckpt_dir):
    _push(self, ckpt_dir)
    pushed.append(1)
checkpoints.CheckpointMirror.push = push
def hang_mid_epoch(fn):
    calls = []
    def wrapper(*a, **kw):
        if pushed:
            calls.append(1)
            if len(calls) == 2:
                Path(args["marker"]).write_text("mid-epoch")
                time.sleep(120)
        return fn(*a, **kw)
    return wrapper
"""

CLIP_CHILD = (
    CHILD_PRELUDE
    + """
from components.common.config import from_dict
from components.finetune_clip import core
from components.finetune_clip.config import FinetuneClipConfig
core._batch_loss = hang_mid_epoch(core._batch_loss)
config = from_dict(args["config"])
core.run_finetune_clip(Path(args["frames"]), Path(args["out"]), config, FinetuneClipConfig(**args["cfg"]), track=False)
"""
)

LIPSYNC_CHILD = (
    CHILD_PRELUDE
    + """
import torch
from components.finetune_lipsync import core
from components.finetune_lipsync.config import FinetuneLipsyncConfig
torch.set_num_threads(1)
sys.path.insert(0, args["tests"])
from test_checkpoints import lipsync_videos
core._window_loss = hang_mid_epoch(core._window_loss)
train, val = lipsync_videos()
mirror = checkpoints.open_mirror(args["store"], "checkpoints/finetune_lipsync/acme-w")
core.train_lipsync(train, val, FinetuneLipsyncConfig(**args["cfg"]), args["out"], work_dir=args["work"], mirror=mirror)
"""
)


def _kill_mid_epoch(code: str, args: dict, tmp_path: Path) -> None:
    """Run ``code`` in a subprocess until it reports being mid-epoch, then SIGKILL it."""
    marker = tmp_path / "mid-epoch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps({**args, "marker": str(marker)})],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the child never reached mid-epoch: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ---------------------------------------------------------------------------------------------- the mirror


def _write_checkpoint(folder: Path, epoch: int, weights: bytes, best: bytes) -> None:
    (folder / ckpt.LAST_DIR).mkdir(parents=True, exist_ok=True)
    (folder / ckpt.LAST_DIR / ckpt.WEIGHTS_FILE).write_bytes(weights)
    (folder / ckpt.LAST_DIR / ckpt.OPTIMIZER_FILE).write_bytes(b"opt" + weights)
    (folder / ckpt.LAST_DIR / ckpt.STATE_FILE).write_text(json.dumps({"epoch": epoch}))
    (folder / ckpt.BEST_FILE).write_bytes(best)


def test_mirror_alternates_slots_and_survives_a_torn_upload(tmp_path):
    store = LocalStore(tmp_path / "store")
    mirror = ckpt.CheckpointMirror(store, "checkpoints/finetune_clip/acme-w")
    local = tmp_path / "pod1"
    assert mirror.pull(tmp_path / "empty") is None
    _write_checkpoint(local, 1, b"w1", b"best1")
    mirror.push(local)
    _write_checkpoint(local, 2, b"w2", b"best1")  # no improvement: best unchanged
    mirror.push(local)
    pointer = json.loads(store.get_bytes("checkpoints/finetune_clip/acme-w/latest.json"))
    assert pointer["epoch"] == 2
    assert pointer["files"]["last/weights.safetensors"]["slot"] == 1
    assert pointer["files"]["best.safetensors"]["slot"] == 0  # unchanged: not uploaded again
    keys = set(store.list_keys("checkpoints/"))
    assert "checkpoints/finetune_clip/acme-w/best.safetensors.1" not in keys
    # A pod killed while uploading epoch 3 left a torn file in the free slot; the pointer still names epoch 2.
    store.put_bytes("checkpoints/finetune_clip/acme-w/last/weights.safetensors.0", b"torn")
    pod2 = tmp_path / "pod2"
    assert mirror.pull(pod2) == 2
    assert (pod2 / "last" / "weights.safetensors").read_bytes() == b"w2"
    assert (pod2 / "best.safetensors").read_bytes() == b"best1"
    # A file that does not match its checksum is refused, not resumed from.
    store.put_bytes("checkpoints/finetune_clip/acme-w/last/weights.safetensors.1", b"bitrot")
    with pytest.raises(RuntimeError, match="checksum"):
        mirror.pull(tmp_path / "pod3")


# ------------------------------------------------------------------------------ killed mid-epoch, resumed


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from serving_assets import make_base

    return make_base(tmp_path_factory.mktemp("base") / "base-clip")


@pytest.mark.slow
def test_finetune_clip_killed_mid_epoch_resumes_from_the_artifacts_store(tiny_base, tmp_path):
    from safetensors.torch import load_file

    from components.common.config import from_dict
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import run_finetune_clip

    frames = make_frames(tmp_path / "frames", 16)
    cfg = {
        "base_model": str(tiny_base),
        "epochs": 3,
        "batch_size": 4,
        "frames_per_video": 2,
        "lr": 5e-3,
        "early_stopping_patience": 0,
        "device": "cpu",
        "num_threads": 1,
        "lora_r": 4,
        "lora_alpha": 8,
    }

    def config(pod: str, store: str = "store") -> dict:
        return {
            "state_dir": str(tmp_path / pod),
            "window": {"as_of": "2026-11-01"},
            "storage": {"artifacts_uri": str(tmp_path / store)},
        }

    _kill_mid_epoch(
        CLIP_CHILD, {"config": config("pod1"), "frames": str(frames), "out": str(tmp_path / "m1"), "cfg": cfg}, tmp_path
    )
    prefix = "checkpoints/finetune_clip/acme-2026-10-02__2026-11-01"
    pointer = json.loads((tmp_path / "store" / prefix / "latest.json").read_text())
    assert pointer["epoch"] == 1 and not (tmp_path / "m1" / "card.json").exists()

    resumed = run_finetune_clip(
        frames, tmp_path / "m2", from_dict(config("pod2")), FinetuneClipConfig(**cfg), track=False
    )
    assert (resumed.resumed_from_epoch, resumed.epochs_run) == (1, 3)
    reference = run_finetune_clip(
        frames, tmp_path / "m3", from_dict(config("pod3", "store3")), FinetuneClipConfig(**cfg), track=False
    )
    assert reference.resumed_from_epoch == 0
    # Exactly the uninterrupted run: same best epoch and validation loss, same exported adapter.
    assert (resumed.best_epoch, resumed.best_val_loss) == pytest.approx((reference.best_epoch, reference.best_val_loss))
    a = load_file(str(tmp_path / "m2" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "m3" / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


LIPSYNC_CFG = {
    "crop_size": 16,
    "visual_channels": 4,
    "audio_channels": 8,
    "embed_dim": 8,
    "attention_heads": 2,
    "batch_size": 4,
    "epochs": 3,
    "freeze_epochs": 0,
    "pretrained": "",
    "device": "cpu",
    "precision": "fp32",
    "num_threads": 1,
}


def lipsync_videos():
    """Six training and two validation clips (also built by the child process)."""
    from components.finetune_lipsync.core import LipsyncVideo
    from components.finetune_lipsync.synthetic import synthetic_video

    videos = [
        LipsyncVideo(f"v{i}", *synthetic_video(i % 2 == 1, i, duration_s=1.5, size=16), 25.0, i % 2) for i in range(8)
    ]
    return videos[:6], videos[6:]


@pytest.mark.slow
def test_finetune_lipsync_killed_mid_epoch_resumes_from_the_artifacts_store(tmp_path):
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.core import train_lipsync

    store = tmp_path / "store"
    args = {"store": str(store), "out": str(tmp_path / "m1"), "work": str(tmp_path / "pod1"), "cfg": LIPSYNC_CFG}
    _kill_mid_epoch(LIPSYNC_CHILD, {**args, "tests": str(ROOT / "tests")}, tmp_path)
    prefix = "checkpoints/finetune_lipsync/acme-w"
    assert json.loads((store / prefix / "latest.json").read_text())["epoch"] == 1

    cfg = FinetuneLipsyncConfig(**LIPSYNC_CFG)
    train, val = lipsync_videos()
    mirror = ckpt.open_mirror(str(store), prefix)
    resumed = train_lipsync(train, val, cfg, tmp_path / "m2", work_dir=tmp_path / "pod2", mirror=mirror)
    reference = train_lipsync(train, val, cfg, tmp_path / "m3", work_dir=tmp_path / "pod3")
    assert (resumed.resumed_from_epoch, reference.resumed_from_epoch, len(resumed.history)) == (1, 0, 3)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in reference.history])
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "m2" / "model.safetensors"))
    b = load_file(str(tmp_path / "m3" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed.threshold == pytest.approx(reference.threshold)
    # Another setting is not resumed: the checkpoint in the folder is discarded and training starts over.
    other = train_lipsync(
        train,
        val,
        FinetuneLipsyncConfig(**{**LIPSYNC_CFG, "lr_scratch": 1e-3}),
        tmp_path / "m4",
        work_dir=tmp_path / "pod2",
    )
    assert other.resumed_from_epoch == 0 and np.isfinite(other.best_val_loss)

"""Shared fixtures: an isolated state folder per test and the repository's MediaPipe model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


#: The longest test files (DAG runs, multi-process training, servers), run first: with pytest-xdist's
#: ``--dist loadfile --no-loadscope-reorder`` (make test) files go to the workers in collection order, and a DAG
#: file handed out last would keep one worker busy minutes after the other ran out of work.
LONGEST_FIRST = (
    "test_pipeline_local.py",
    "test_distributed.py",
    "test_federated_clip.py",
    "test_faults.py",
    "test_deploy.py",
    "test_trainjob.py",
    "test_checkpoints.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Two cores on CI: keep numeric libraries from oversubscribing them.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh CLIPSYNC_HOME for one test."""
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("CLIPSYNC_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The cache filled by `clipsync fetch-models` (make test runs it first)."""
    from components.face_tracking.models import FaceModelError, face_model_paths

    cache = Path(os.environ.get("CLIPSYNC_MODEL_CACHE", REPO / ".clipsync" / "cache"))
    try:
        face_model_paths(cache)  # present, and the landmarker bundle is the current version
    except FaceModelError as exc:
        pytest.fail(f"{exc} (`make models` runs it)")
    return cache


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory) -> dict:
    """Tiny real models for the model-server tests, built once per session (tests/serving_assets.py): a 1-layer
    base CLIP with the LoRA adapters of clients acme and beta (perturbed differently) and their indexes over a
    small frames Dataset, a tiny lip-sync detector, and videos: a talking head (a real face, speech-like audio)
    and the cases that carry no evidence for a verdict."""
    import torch
    from serving_assets import make_adapter, make_base, make_face_video, make_lipsync, make_video
    from synthetic_frames import make_frames

    from serving.index_build import build_index

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving-models")
    base = make_base(root / "base")
    frames = make_frames(root / "frames")
    adapters = {}
    for client, seed in (("acme", 1), ("beta", 2)):
        adapters[client] = make_adapter(base, root / f"clip-{client}", seed)
        build_index(adapters[client], frames)
    videos = root / "videos"
    videos.mkdir()
    return {
        "root": root,
        "base": base,
        "frames": frames,
        "adapters": adapters,
        "lipsync": make_lipsync(root / "lipsync-acme"),
        "face": make_face_video(videos / "face.mp4"),
        "no_audio": make_face_video(videos / "mute.mp4", audio=False),
        "no_face": make_video(videos / "noface.mp4"),
        "one_frame": make_face_video(videos / "oneframe.mp4", seconds=0.04),
        "tiny": make_video(videos / "tiny.mp4", side=16, noise=True),
    }


@pytest.fixture()
def kfp_server(tmp_path: Path, monkeypatch):
    """The KFP API stand-in (tests/kfp_standin.py) on loopback: its URL and the fake that records the calls."""
    from kfp_standin import kfp_standin

    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    with kfp_standin() as server:
        yield server

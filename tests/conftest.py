"""Shared fixtures: an isolated state folder per test and the repository's MediaPipe model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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

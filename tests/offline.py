"""A stage context for calling a stage's ``run_<stage>`` in a test without MLflow (``track`` off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.common.stage import StageContext
from components.config import from_dict


def offline_context(state_dir: Path, **settings: Any) -> StageContext:
    """The context of a client configured by ``settings`` (the config file's sections) under ``state_dir``."""
    return from_dict({"state_dir": str(state_dir), **settings}).context(track=False)

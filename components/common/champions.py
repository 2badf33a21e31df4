"""``{state_dir}/serving/champions.json``: what the local model server serves (deploy writes, serving reads).

One entry per model name (``clip-acme``): ``{"path": <model folder>, "version": <registry version>,
"updated_at": <UTC ISO time>}``. Deploy changes it in the same transaction as the registry aliases (and puts it
back when a later step fails), so ``clipsync serve`` can serve it without asking MLflow. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def champions_file(state_dir: str | Path) -> Path:
    """The local serving record: ``{state_dir}/serving/champions.json``."""
    return Path(state_dir) / "serving" / "champions.json"


def read_champions(state_dir: str | Path) -> dict[str, dict[str, str]]:
    """Model name -> ``{"path", "version", "updated_at"}`` (empty when nothing was deployed here)."""
    path = champions_file(state_dir)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_champions(state_dir: str | Path, champions: dict[str, dict[str, str]]) -> None:
    """Replace the record atomically (a reader sees the old or the new file, never half of one)."""
    path = champions_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(champions, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

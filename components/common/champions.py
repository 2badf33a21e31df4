"""Which version is a client's champion: the registry's alias, and what the local model server serves.

- :func:`champion_version` / :func:`fetch_champion`: the registry's ``champion`` alias of ``{model}-{client}``
  (evaluate's baseline, the lip-sync fine-tune's starting weights, the gate, the summary, ``clipsync serve``).
- ``{state_dir}/serving/champions.json``: what the local model server serves (deploy writes, serving reads). One
  entry per model name (``clip-acme``): ``{"path": <model folder>, "version": <registry version>,
  "updated_at": <UTC ISO time>}``. Deploy changes it in the same transaction as the registry aliases (and puts it
  back when a later step fails), so ``clipsync serve`` can serve it without asking MLflow.

Standard library only at import (MLflow is imported by :mod:`components.common.tracking` when a lookup runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from components.common.names import registered_name

if TYPE_CHECKING:
    from components.common.config import TrackingConfig

#: The registry alias of the version that serves (deploy moves it; ``previous`` names the one it replaced).
CHAMPION = "champion"
PREVIOUS = "previous"


def champion_version(tracking: TrackingConfig, model: str, client_id: str) -> str | None:
    """The registry version of the client's ``model`` champion (``None``: no champion yet, the first month)."""
    from components.common import tracking as tr

    return tr.get_version_by_alias(tracking, registered_name(model, client_id), CHAMPION)


def fetch_champion(tracking: TrackingConfig, model: str, client_id: str, dest: str | Path) -> tuple[Path, str] | None:
    """Download the files of the client's ``model`` champion into ``dest``.

    Returns:
        ``(model folder, registry version)``, or ``None`` when there is no champion yet (first month).
    """
    from components.common import tracking as tr

    version = champion_version(tracking, model, client_id)
    if version is None:
        return None
    return tr.download_version(tracking, registered_name(model, client_id), version, Path(dest)), version


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

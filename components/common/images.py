"""The container images of the pipeline's components: one per dependency profile.

Each profile has ``images/<profile>/Dockerfile`` that installs this package with the extra of the same
name. Tags follow the package version; the registry is fixed here (not read from the environment at
import time) so that a compiled pipeline is reproducible. Retag at build time if you mirror them.
"""

from __future__ import annotations

from importlib import metadata

REGISTRY = "ghcr.io/clipsync"


def _version() -> str:
    try:
        return metadata.version("clipsync")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0-dev"


VERSION = _version()

#: profile name -> image reference. The profile name is also the pyproject extra and the images/ folder.
IMAGES: dict[str, str] = {
    profile: f"{REGISTRY}/clipsync-{profile}:{VERSION}" for profile in ("media", "train", "serve")
}
MEDIA_IMAGE = IMAGES["media"]
TRAIN_IMAGE = IMAGES["train"]
SERVE_IMAGE = IMAGES["serve"]

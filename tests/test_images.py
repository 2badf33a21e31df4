"""Every image the pipeline references has a Dockerfile that installs this package with its extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from components.common.images import IMAGES
from pipelines.package import compile_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_every_referenced_image_has_a_dockerfile(tmp_path: Path):
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    profiles = {profile for profile, ref in IMAGES.items() if ref in used}
    assert profiles, "the pipeline references no known image"
    for profile in IMAGES:
        assert (REPO / "images" / profile / "Dockerfile").is_file(), profile


def test_dockerfiles_install_the_package_with_their_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for profile in IMAGES:
        text = (REPO / "images" / profile / "Dockerfile").read_text()
        assert profile in extras, f"pyproject has no extra {profile!r}"
        assert re.search(rf'pip install[^\n]*"\.\[{profile}\]"', text), f"{profile}: does not install .[{profile}]"
        assert "COPY components" in text and "COPY pipelines" in text
        if "torch" in " ".join(extras[profile]) or profile in ("train", "serve"):
            # torch pinned and installed before the package (an open range pulls another build).
            torch_line = text.index("torch==2.13.0")
            assert torch_line < text.index(f'".[{profile}]"')
        assert "USER " in text, f"{profile}: runs as root"

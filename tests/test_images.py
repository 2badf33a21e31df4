"""images/: every image the pipeline and the runtimes reference has a Dockerfile on a Python 3.11 that exists, that
installs this package with its extra at the versions of requirements.lock, whose install resolves for the image's
platform, and whose entry command is a real module. (No image is built here: no Docker engine, see PLATFORM.md.)

The resolution test needs the package index (PyPI) and takes about a minute; CI has the index (``make test``
installs from it). It resolves each profile's requirements against the lock with our own walk over the locked
distributions' metadata (every requirement satisfied by the pinned version), then asks pip, with the image's
platform tags (python:3.11-slim-bookworm: CPython 3.11, glibc 2.36, x86_64), for every pinned distribution.
Out of its reach: the CUDA runtime wheels the CUDA build of torch pulls in (nvidia-*, pinned exactly by torch
itself), which the package mirror of this workspace does not carry; only a real build checks them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from components.common.images import IMAGES
from pipelines.package import compile_pipeline

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = {
    canonicalize_name(name): version
    for name, _, version in (
        line.strip().partition("==") for line in (REPO / "requirements.lock").read_text().splitlines()
    )
    if version
}
TORCH = "torch==2.13.0"
#: The marker environment of python:3.11-slim-bookworm on x86_64.
IMAGE_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
IMAGE_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + ["manylinux2014_x86_64"]


def dockerfile(profile: str) -> str:
    return (REPO / "images" / profile / "Dockerfile").read_text()


def profile_requirements(extra: str) -> list[str]:
    """The requirements of ``.[extra]``, with ``clipsync[...]`` self-references expanded."""
    project = PYPROJECT["project"]
    out = list(project["dependencies"])
    for line in project["optional-dependencies"][extra]:
        req = Requirement(line)
        if canonicalize_name(req.name) == "clipsync":
            for nested in req.extras:
                out += profile_requirements(nested)
        else:
            out.append(line)
    return out


def locked_closure(extra: str) -> dict[str, str]:
    """Every distribution ``.[extra]`` needs in the image, each at its locked version (torch: the Dockerfile's pin).

    Raises:
        AssertionError: A requirement is not pinned in the lock, or the pinned version does not satisfy it.
    """
    todo = [(line, "") for line in profile_requirements(extra)]
    pinned: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        line, from_extra = todo.pop()
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({**IMAGE_ENV, "extra": from_extra}):
            continue
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first, pinned in the Dockerfile; its CUDA wheels: see the module doc
            assert req.specifier.contains("2.13.0"), f"{extra}: {line} does not accept {TORCH}"
            pinned[name] = "2.13.0"
            continue
        assert name in LOCK, f"{extra}: {line} is not pinned in requirements.lock"
        assert req.specifier.contains(LOCK[name], prereleases=True), f"{extra}: {line} refuses the locked {LOCK[name]}"
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        pinned[name] = LOCK[name]
        installed = _installed_version(req.name)
        assert installed == LOCK[name], f"this venv has {req.name} {installed}, the lock {LOCK[name]}: run make setup"
        todo += [(sub, e) for sub in metadata.requires(req.name) or [] for e in (req.extras or {""})]
    return pinned


# ----------------------------------------------------------------------------------------------- static


def test_every_referenced_image_has_a_dockerfile(tmp_path: Path):
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    profiles = {profile for profile, ref in IMAGES.items() if ref in used}
    assert profiles, "the pipeline references no known image"
    for profile in IMAGES:
        assert (REPO / "images" / profile / "Dockerfile").is_file(), profile


def test_dockerfiles_use_python_311_and_install_the_lock():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for profile in IMAGES:
        text = dockerfile(profile)
        assert profile in extras, f"pyproject has no extra {profile!r}"
        assert re.search(r"^FROM python:3\.11[.\w-]*$", text, re.M), f"{profile}: not an official Python 3.11 base"
        assert "apt-get install" not in text or "python3" not in text.split("apt-get install")[1].split("\n")[0]
        assert re.search(rf'^RUN pip install --no-cache-dir -c requirements\.lock "\.\[{profile}\]"$', text, re.M), (
            f"{profile}: does not install .[{profile}] constrained to requirements.lock"
        )
        assert "COPY requirements.lock" in text and "COPY components" in text and "COPY pipelines" in text
        if any(canonicalize_name(Requirement(r).name) == "torch" for r in profile_requirements(profile)):
            # torch pinned and installed before the package (an open range pulls another build).
            assert text.index(f"RUN pip install --no-cache-dir {TORCH}\n") < text.index(f'".[{profile}]"')
        assert "USER 10001" in text, f"{profile}: runs as root"


def test_entry_commands_are_real_modules():
    scripts = PYPROJECT["project"]["scripts"]
    for profile in IMAGES:
        (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile(profile), re.M)
        argv = json.loads(cmd)
        if argv[0] in scripts:  # a console script: python -m of its module
            argv = ["python", "-m", scripts[argv[0]].split(":")[0], *argv[1:]]
        assert argv[:2] == ["python", "-m"], f"{profile}: CMD {argv} is not python -m <module>"
        done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, f"{profile}: {argv}: {done.stderr[-1000:]}"
    # The generated ServingRuntimes run the serve image's module.
    from components.deploy.core import SERVER_MODULE

    assert json.loads(re.findall(r"^CMD (\[.*\])$", dockerfile("serve"), re.M)[0])[:3] == [
        "python",
        "-m",
        SERVER_MODULE,
    ]


def test_serve_image_holds_the_face_models_where_the_runtimes_look():
    from components.config import load_config

    cluster = load_config(REPO / "configs" / "example-cluster.yaml")
    text = dockerfile("serve")
    home = re.findall(r"^ENV CLIPSYNC_HOME=(\S+)$", text, re.M)
    assert home and text.index(f"ENV CLIPSYNC_HOME={home[0]}") < text.index("RUN clipsync fetch-models")
    assert cluster.cache_dir == f"{home[0]}/cache"  # fetch-models' default cache; the runtimes' --cache_dir


def _installed_version(name: str) -> str:
    """The venv's own version of ``name``: Ray puts its vendored packages (psutil 7, colorama) on ``sys.path`` once a
    test has imported it (the federated tests), and those are not what the venv or the image installs."""
    paths = [p for p in sys.path if "thirdparty_files" not in Path(p).parts]
    dist = next(iter(metadata.distributions(name=name, path=paths)), None)
    assert dist is not None, f"{name} is not installed in this venv: run make setup"
    return dist.version


def test_the_lock_walk_catches_an_unpinned_requirement(monkeypatch):
    monkeypatch.delitem(LOCK, "av")
    with pytest.raises(AssertionError, match=r"media: av==18\.1\.\* is not pinned"):
        locked_closure("media")


# ----------------------------------------------------------------------------------------------- resolution


def _pip_dry_run(pins: list[str], report: Path) -> subprocess.CompletedProcess:
    platforms = [f"--platform={p}" for p in IMAGE_PLATFORMS]
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
        "--prefer-binary", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platforms,
        "--report", str(report), *pins,
    ]  # fmt: skip
    # pip as the image runs it: the package index only (not this machine's local wheel folders and caps).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_DEFAULT_TIMEOUT="60")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_install_resolves_against_the_lock_for_the_image_platform(tmp_path):
    """All three images share the platform, and media's and train's pins are a part of serve's: one check each pin.

    The pins go to pip in 4 parallel chunks (it fetches one index page after the other: network-bound).
    """
    from concurrent.futures import ThreadPoolExecutor

    closures = {profile: locked_closure(profile) for profile in IMAGES}
    assert closures["media"].items() <= closures["train"].items() <= closures["serve"].items()
    # The train image also installs the federated extra and, without its dependencies, flwr's own lock.
    assert "requirements-federated.lock" in dockerfile("train")
    federated = {**locked_closure("federated"), **_federated_pins()}
    expected = {**closures["serve"], **federated}
    pins = [f"{name}=={version}" for name, version in sorted(expected.items())]
    chunks = [pins[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: _pip_dry_run(chunks[i], tmp_path / f"report-{i}.json"), range(4)))
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    got = {}
    for i in range(4):
        for item in json.loads((tmp_path / f"report-{i}.json").read_text())["install"]:
            got[canonicalize_name(item["metadata"]["name"])] = item["metadata"]["version"]
    assert got == expected


def _federated_pins() -> dict[str, str]:
    lines = (REPO / "requirements-federated.lock").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in pins}


def test_no_process_sends_mlflow_telemetry(monkeypatch):
    """MLflow 3 reports usage to mlflow.org unless told not to: every image and the CLI (and so the DAG's task
    processes and the local MLflow server it starts, which inherit its environment) turn it off."""
    for profile in ("media", "serve", "train"):
        assert re.search(r"^ENV MLFLOW_DISABLE_TELEMETRY=true$", dockerfile(profile), re.M), profile
    from pipelines import cli

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"

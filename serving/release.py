"""``release.json``: what a published model folder is (name, registry version) and the SHA-256 of every file.

Deploy writes it into every folder it serves (the local version folder, and what it publishes for KServe's
storage initializer or model agent); the model server verifies it before loading, so a folder with a missing or
altered file is refused with the file named, and the version it reports in its metadata is the one deploy
published. Standard library only (deploy and serving both use it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RELEASE_FILE = "release.json"


class ReleaseError(ValueError):
    """A model folder does not match its ``release.json`` (or has none where one is required)."""


@dataclass(frozen=True)
class Release:
    """The content of ``release.json``.

    Attributes:
        name: Model name on the server (the registered model name, ``clip-acme``).
        version: Registry version.
        files: Relative path (POSIX) -> SHA-256 of every other file of the folder.
        created_at: When deploy wrote it (UTC, ISO 8601).
    """

    name: str
    version: str
    files: dict[str, str] = field(default_factory=dict)
    created_at: str = ""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_release(folder: str | Path, name: str, version: str) -> Release:
    """Hash every file of ``folder`` and write ``folder/release.json`` (replacing an older one).

    Args:
        folder: The model folder as it will be served (index included).
        name: Model name on the server.
        version: Registry version.

    Returns:
        What was written.
    """
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RELEASE_FILE
    }
    release = Release(str(name), str(version), files, datetime.now(UTC).isoformat(timespec="seconds"))
    tmp = folder / f".{RELEASE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(release), indent=2, sort_keys=True) + "\n")
    tmp.replace(folder / RELEASE_FILE)
    return release


def read_release(folder: str | Path) -> Release | None:
    """The folder's ``release.json``, or ``None`` when it has none.

    Raises:
        ReleaseError: If the file is not a valid release record.
    """
    path = Path(folder) / RELEASE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        release = Release(str(data["name"]), str(data["version"]), dict(data["files"]), str(data.get("created_at", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{path} is not a valid release record: {exc}") from None
    if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel in release.files):
        raise ReleaseError(f"{path} lists a file outside its folder")
    return release


def verify_release(folder: str | Path, name: str | None = None, required: bool = True) -> Release | None:
    """Check that every file ``release.json`` lists is present with its SHA-256 (and the name, if given).

    Args:
        folder: The model folder.
        name: The model name it must be released as (a folder placed under another name is refused).
        required: Refuse a folder without ``release.json`` (in a cluster every served folder is published by
            deploy); when False such a folder passes unchecked and ``None`` is returned.

    Returns:
        The release record, or ``None`` for an unreleased folder when allowed.

    Raises:
        ReleaseError: Naming the first problem: no record, another name, a missing file, a wrong checksum.
    """
    folder = Path(folder)
    release = read_release(folder)
    if release is None:
        if required:
            raise ReleaseError(f"{folder / RELEASE_FILE} is missing: not a model folder published by clipsync deploy")
        return None
    if name is not None and release.name != name:
        raise ReleaseError(f"{folder} holds the release of {release.name!r}, not of {name!r}")
    for rel, expected in sorted(release.files.items()):
        path = folder / rel
        if not path.is_file():
            raise ReleaseError(f"{name or release.name}: file {rel} listed in {RELEASE_FILE} is missing")
        if sha256_file(path) != expected:
            raise ReleaseError(f"{name or release.name}: file {rel} does not match its sha256 in {RELEASE_FILE}")
    return release

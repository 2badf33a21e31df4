"""Errors the model server answers with, shared by the repository and the CLIP backbones (no import loop)."""

from __future__ import annotations

from serving.kserve_adapter import InvalidInput


class ModelFolderError(InvalidInput):
    """A model name or folder the server cannot serve (HTTP 400): missing file, bad checksum, other base."""

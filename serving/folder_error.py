"""The error of a model name or folder the server cannot serve, raised by the repository and the CLIP backbones.

It is kserve's ``InvalidInput`` (HTTP 400), so it cannot join the standard-library refusals of
:mod:`serving.errors` (the kserve adapter imports those); it is not in :mod:`serving.repository` because the
repository imports the CLIP backbones, which raise it too (no import loop).
"""

from __future__ import annotations

from serving.kserve_adapter import InvalidInput


class ModelFolderError(InvalidInput):
    """A model name or folder the server cannot serve (HTTP 400): missing file, bad checksum, other base."""

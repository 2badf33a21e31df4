"""The deploy stage's error (standard library only)."""

from __future__ import annotations


class DeployError(RuntimeError):
    """A version could not be served (or its aliases moved): what was served and the aliases are as before."""

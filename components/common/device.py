"""The ``device`` setting shared by training, evaluation and serving (torch is imported only when resolving).

Every tensor the code creates goes to the device of the tensors or the model it works with; this module only
turns the configured name into a ``torch.device`` once, at the start of a stage or when a predictor loads.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def is_device_name(name: object) -> bool:
    """Whether ``name`` is a valid ``device`` setting: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    return isinstance(name, str) and bool(_DEVICE.match(name))


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``device`` setting (``auto``: CUDA when available, else CPU).

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``; tests also pass ``meta`` (tensors without data, where
            mixing in a CPU tensor raises the same error as on CUDA).

    Raises:
        RuntimeError: If CUDA is asked for and not available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (where its inputs must go)."""
    return next(module.parameters()).device


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A region computed in the tensors' own dtype even inside ``torch.autocast`` (float32 losses, similarities)."""
    import torch

    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # meta and other devices without autocast

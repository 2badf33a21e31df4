"""The torch runtime of training, evaluation and serving: the ``device`` and ``precision`` settings, one vocabulary.

- ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (every stage and the server);
- ``precision``: the training autocast, ``auto``, ``fp32``, ``bf16`` or ``fp16`` (both fine-tune stages). ``auto``
  is bf16 on GPUs that have it, else fp16 on CUDA; on a CPU bf16 where the CPU computes it natively (AVX512-BF16,
  AMX), else fp32 (emulated bf16 is slower than fp32). fp16 trains with a gradient scaler, on CUDA only.

Every tensor the code creates goes to the device of the tensors or the model it works with; this module turns the
configured names into a :class:`Runtime` once, at the start of a stage or when a predictor loads. torch is
imported only when resolving, so the config modules can validate the names without it.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: The ``precision`` settings of both fine-tune stages.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 / AMX); emulated bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device`` (``None``: fp32, no autocast).

    Raises:
        ValueError: On a name outside :data:`PRECISIONS`.
        RuntimeError: For ``fp16`` on another device than CUDA (it needs CUDA's gradient scaler).
    """
    import torch

    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise RuntimeError(
                f"precision fp16 needs CUDA (a gradient scaler on the GPU); use bf16 or fp32 on {device.type}"
            )
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


@dataclass(frozen=True)
class Runtime:
    """Where a stage computes and in which precision it trains (:func:`resolve_runtime`).

    Attributes:
        device: The torch device.
        amp_dtype: The autocast dtype, ``None`` for fp32.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16`` (the resolved setting, for logs and reports)."""
        import torch

        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training autocast (a no-op in fp32)."""
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler: active for fp16 on CUDA, else a pass-through (its calls change nothing)."""
        import torch

        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")


def resolve_runtime(device: str, precision: str = "fp32") -> Runtime:
    """The :class:`Runtime` of a ``device`` and a ``precision`` setting (see the module docstring)."""
    resolved = resolve_device(device)
    return Runtime(resolved, resolve_precision(precision, resolved))

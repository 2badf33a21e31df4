"""Data-parallel training under ``torchrun``: the process group, this process's rank and device, gradient gathers.

``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and the rendezvous address) in each process's
environment. With ``WORLD_SIZE`` unset or 1 nothing here starts a process group and a trainer runs as one process.
With more, :func:`init_distributed` joins the group (NCCL when the device is CUDA, gloo on CPU) and puts the process
on ``cuda:LOCAL_RANK``; the trainers wrap their model in ``DistributedDataParallel``, give each rank its part of
every global batch, let rank 0 alone write checkpoints and outputs, and resume every rank from the same checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        size: ``WORLD_SIZE`` (1: not distributed).
        rank: ``RANK``.
        local_rank: ``LOCAL_RANK`` (the GPU index on its node).
    """

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, registers and writes the stage outputs."""
        return self.rank == 0


def world_from_env() -> World:
    """The :class:`World` torchrun describes in the environment (a single process when it says nothing).

    Raises:
        ValueError: If the variables are not integers or the rank is outside the world.
    """

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, "")
        try:
            return int(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None

    world = World(read("WORLD_SIZE", 1), read("RANK", 0), read("LOCAL_RANK", 0))
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise ValueError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}")
    return world


def init_distributed(world: World, device: torch.device) -> torch.device:
    """Join the process group of ``world`` (a no-op for one process); returns the device this rank trains on.

    Args:
        world: From :func:`world_from_env`.
        device: The resolved ``device`` setting (:func:`components.common.device.resolve_device`); CUDA becomes
            ``cuda:LOCAL_RANK`` and the backend NCCL, anything else uses gloo.
    """
    import torch
    import torch.distributed as dist

    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    return device


def shutdown(world: World) -> None:
    """Leave the process group (after a last barrier, so that no rank exits while another still needs it)."""
    import torch.distributed as dist

    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every rank (no-op for one process)."""
    import torch.distributed as dist

    if world.distributed:
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first, the other ranks after it (one fresh MLflow sqlite file, not one per rank)."""
    if world.distributed and not world.is_main:
        barrier(world)
    yield
    if world.distributed and world.is_main:
        barrier(world)


def gather_rows(local: torch.Tensor, sizes: list[int], world: World) -> torch.Tensor:
    """Every rank's ``[n_r, D]`` rows in rank order, differentiable (gradients flow back to each rank's rows).

    ``torch.distributed.nn.functional.all_gather`` needs equal shapes, so each rank pads to ``max(sizes)`` rows and
    the padding is cut off again. Its backward sums the gradients of every rank's copy of the loss, so with the
    same loss on every rank a rank's rows receive ``world.size`` times their gradient, which DDP's averaging of the
    parameter gradients divides out again: the update equals one process's on the whole batch.

    Args:
        local: This rank's rows.
        sizes: Every rank's row count (known to all ranks from the shared batch plan).
        world: The world (one process: ``local`` is returned as it is).
    """
    import torch
    import torch.nn.functional as F

    if not world.distributed:
        return local
    from torch.distributed.nn.functional import all_gather

    pad = max(sizes)
    padded = F.pad(local, (0, 0, 0, pad - local.shape[0]))
    parts = all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def wrap_ddp(module: torch.nn.Module, world: World, device: torch.device) -> Any:
    """``DistributedDataParallel(module)`` for several processes (rank 0's weights are broadcast); else ``module``."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def entry_main(
    parser: argparse.ArgumentParser, train: Callable[[argparse.Namespace], Any], argv: Sequence[str] | None
) -> int:
    """A fine-tune's torchrun entry: the common arguments, ``train(args)`` on this rank, rank 0's report, leave.

    Adds ``--config`` (a file with the run's config JSON), ``--parent-run-id``, ``--model`` (the Model folder rank
    0 writes) and ``--report`` (where rank 0 writes ``registered_version``, ``not_trained_reason`` and the stage
    report's figures as JSON) to the stage's own ``parser``.

    Returns:
        The exit status (0; a failure raises).
    """
    parser.add_argument("--config", required=True, type=Path, help="file with the run's config JSON")
    parser.add_argument("--parent-run-id", default="", help="the monthly run's MLflow run id")
    parser.add_argument("--model", required=True, type=Path, help="the Model folder to write (rank 0)")
    parser.add_argument("--report", type=Path, default=None, help="where rank 0 writes the report JSON")
    args = parser.parse_args(argv)
    world = world_from_env()
    try:
        report = train(args)
        if world.is_main and args.report is not None:
            out = {"registered_version": report.registered_version or "", **report.as_metrics()}
            out["not_trained_reason"] = report.not_trained_reason
            args.report.write_text(json.dumps(out, indent=1))
    finally:
        shutdown(world)
    return 0

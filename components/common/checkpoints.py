"""Training checkpoints (no pickle) and their mirror in the artifacts store, so that a retried pod resumes.

Both fine-tune stages keep one checkpoint folder per client and data window (``<work_dir>/checkpoints``):

- ``last/weights.safetensors``: the weights the stage trains (LoRA adapters, a tower, or the whole model);
- ``last/optimizer.safetensors``: the optimizer's tensors; ``last/state.json``: its param groups, the
  scheduler and gradient-scaler state, and the trainer's own state (epoch, history, early stopping, the
  fingerprint of config and data that a checkpoint must match to be resumed);
- ``best.safetensors``: the weights of the best epoch so far.

A pod's local disk does not survive preemption, so after every epoch :class:`CheckpointMirror` copies the
folder to ``checkpoints/<stage>/<client>-<window>/`` of the artifacts store (``storage.artifacts_uri``: S3 in
a cluster). Each file has two slots there (``<name>.0``, ``<name>.1``); a changed file is written to the slot
that ``latest.json`` does not point to, and ``latest.json`` is replaced last. A pod killed in the middle of
an upload therefore leaves the previous complete checkpoint in place, and the store never holds more than
two copies of a file. A retried pod that finds no local checkpoint pulls this one and resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from components.common.storage import ObjectStore

logger = logging.getLogger("clipsync.checkpoints")

LAST_DIR = "last"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
BEST_FILE = "best.safetensors"
#: Every file of a checkpoint folder, relative to it (what the mirror copies).
CHECKPOINT_FILES = (f"{LAST_DIR}/{WEIGHTS_FILE}", f"{LAST_DIR}/{OPTIMIZER_FILE}", f"{LAST_DIR}/{STATE_FILE}", BEST_FILE)
POINTER = "latest.json"


def save_last(last_dir: Path, weights: dict[str, torch.Tensor], opt: Any, sched: Any, scaler: Any, state: dict) -> None:
    """Write ``last_dir`` atomically (a new folder renamed into place).

    Args:
        last_dir: The ``last`` folder of a checkpoint folder.
        weights: The tensors to keep (moved to the CPU here).
        opt: The optimizer.
        sched: The learning-rate scheduler (``state_dict`` must be JSON-serializable).
        scaler: The gradient scaler, or ``None``.
        state: The trainer's own JSON-serializable state.
    """
    from safetensors.torch import save_file

    tmp = last_dir.with_name(last_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
    opt_state = opt.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().to("cpu").contiguous()
        for idx, entries in opt_state["state"].items()
        for key, value in entries.items()
        if hasattr(value, "detach")
    }
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    state = dict(state)
    state["param_groups"] = opt_state["param_groups"]
    state["scheduler"] = sched.state_dict()
    state["scaler"] = scaler.state_dict() if scaler is not None else None
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=float))
    old = last_dir.with_name(last_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if last_dir.exists():
        last_dir.rename(old)
    tmp.rename(last_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_state(last_dir: Path) -> dict | None:
    """The ``state.json`` of a checkpoint, or ``None`` when there is none (or it is unreadable)."""
    try:
        return json.loads((last_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_last(last_dir: Path, opt: Any, sched: Any, scaler: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore optimizer, scheduler and scaler from ``last_dir``.

    Returns:
        The saved weights (on the CPU; the caller copies them into its model) and the trainer's state.
    """
    from safetensors.torch import load_file

    state = json.loads((last_dir / STATE_FILE).read_text())
    tensors = load_file(str(last_dir / OPTIMIZER_FILE))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    groups = state["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    opt.load_state_dict({"state": per_param, "param_groups": groups})
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return load_file(str(last_dir / WEIGHTS_FILE)), state


def resume(
    ckpt_dir: Path,
    fingerprint: dict,
    opt: Any,
    sched: Any,
    scaler: Any,
    mirror: CheckpointMirror | None = None,
    world: Any = None,
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Restore the last checkpoint of ``ckpt_dir`` if it was written for ``fingerprint`` (then creates the folder).

    When ``ckpt_dir`` holds no checkpoint, the one in ``mirror`` (the artifacts store) is pulled first: a retried
    pod resumes. A checkpoint written for other settings, data or starting weights is deleted (logged) and the
    run starts over.

    Args:
        ckpt_dir: The checkpoint folder (``last/`` and ``best.safetensors`` inside).
        fingerprint: What the trainer's state must hold under ``"fingerprint"`` to be resumed.
        opt: The optimizer, restored in place.
        sched: The learning-rate scheduler, restored in place.
        scaler: The gradient scaler (or ``None``), restored in place.
        mirror: The checkpoint's copy in the artifacts store, if any.
        world: The ranks of a torchrun job (:class:`components.common.distributed.World`): each node's first
            process pulls (or discards) the checkpoint, then the node's other processes read the same one.

    Returns:
        ``(weights, state)`` as :func:`load_last` gives them, or ``None`` when training starts from epoch 0.
    """
    if world is not None and world.distributed:
        from components.common.distributed import barrier

        restored = resume(ckpt_dir, fingerprint, opt, sched, scaler, mirror) if world.local_rank == 0 else None
        barrier(world)
        if world.local_rank != 0:
            restored = resume(ckpt_dir, fingerprint, opt, sched, scaler)
        return restored
    last_dir = ckpt_dir / LAST_DIR
    if mirror is not None and read_state(last_dir) is None:
        mirror.pull(ckpt_dir)
    saved = read_state(last_dir)
    restored = None
    if saved is not None and saved.get("fingerprint") == fingerprint:
        restored = load_last(last_dir, opt, sched, scaler)
        logger.info("resuming from the checkpoint in %s after epoch %d", ckpt_dir, restored[1]["epoch"])
    elif saved is not None:
        logger.warning("checkpoint in %s was written for other settings or data; starting over", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return restored


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file (hex)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class CheckpointMirror:
    """A checkpoint folder's copy in an object store (see the module docstring for the slot scheme).

    Args:
        store: The artifacts store.
        prefix: Key prefix of this checkpoint, e.g. ``checkpoints/finetune_clip/acme-2026-10-02_2026-11-01``.
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _pointer(self) -> dict | None:
        from components.common.storage import ObjectNotFoundError

        try:
            return json.loads(self.store.get_bytes(self._key(POINTER)))
        except ObjectNotFoundError:
            return None

    def push(self, ckpt_dir: Path) -> None:
        """Upload the files of ``ckpt_dir`` that changed since the last push, then the pointer."""
        pointer = self._pointer() or {"files": {}}
        files = dict(pointer["files"])
        for name in CHECKPOINT_FILES:
            path = Path(ckpt_dir) / name
            if not path.is_file():
                continue
            digest = file_sha256(path)
            known = files.get(name)
            if known and known["sha256"] == digest:
                continue
            slot = 1 - known["slot"] if known else 0
            self.store.put_file(self._key(f"{name}.{slot}"), path)
            files[name] = {"slot": slot, "sha256": digest, "size": path.stat().st_size}
        state = read_state(Path(ckpt_dir) / LAST_DIR) or {}
        pointer = {"epoch": state.get("epoch"), "files": files}
        self.store.put_bytes(self._key(POINTER), json.dumps(pointer, indent=1).encode(), "application/json")

    def pull(self, ckpt_dir: Path) -> int | None:
        """Download the mirrored checkpoint into ``ckpt_dir`` (replacing what is there).

        Returns:
            The epoch of the checkpoint pulled, or ``None`` when the store holds none.

        Raises:
            RuntimeError: If a downloaded file does not match the pointer's checksum.
        """
        pointer = self._pointer()
        if not pointer or not pointer.get("files"):
            return None
        ckpt_dir = Path(ckpt_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for name, entry in pointer["files"].items():
            dest = ckpt_dir / name
            self.store.get_file(self._key(f"{name}.{entry['slot']}"), dest)
            if file_sha256(dest) != entry["sha256"]:
                raise RuntimeError(f"checkpoint file {self._key(name)} does not match its checksum")
        logger.info("pulled the checkpoint of epoch %s from %s", pointer.get("epoch"), self.store.uri_for(self.prefix))
        return pointer.get("epoch")


def checkpoint_prefix(stage: str, client_id: str, window: str) -> str:
    """The key prefix (and local folder name) of one stage's checkpoint for a client and data window."""
    safe_window = "".join(c if c.isalnum() or c in "-_" else "_" for c in window) or "nowindow"
    return f"checkpoints/{stage}/{client_id}-{safe_window}"


def open_mirror(artifacts_uri: str, prefix: str, encryption: Any = None) -> CheckpointMirror:
    """A mirror in the artifacts store ``artifacts_uri`` (a folder or ``s3://bucket/prefix``), written with the
    client's ``encryption`` settings."""
    from components.common import storage

    return CheckpointMirror(storage.open_store(artifacts_uri, encryption), prefix)

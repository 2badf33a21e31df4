"""Training shards: fixed-size safetensors files of per-video training data, streamed by a torch ``IterableDataset``.

A stage that feeds a trainer (frame_extraction for finetune_clip, face_tracking for finetune_lipsync) writes, as its
last step, ``<kind>-NNNNN.safetensors`` files of at most ``samples_per_shard`` videos each, plus a listing
``train_shards.json`` in its Dataset:

```
{"format": 1, "kind": "search", "store": "" | "s3://bucket/prefix", "prefix": "" | "train-shards/...",
 "shards": [{"name": "search-00000.safetensors", "samples": ["v001", "v002", ...]}, ...]}
```

A sample's tensors are named ``<video id>/<field>`` (``v001/frames``); a shard's metadata holds the listing's
``format`` and ``kind``. With a local artifacts store the shards sit in the Dataset folder beside the listing; with
an ``s3://`` artifacts store they are uploaded to ``<store>/<prefix>/`` and the Dataset holds only the listing, so
a training pod fetches a shard only when one of its DataLoader workers first needs it (into a local spool folder on
disk, reused afterwards), never the whole library into memory.

Why safetensors and not WebDataset tar shards: it is already a dependency (the weights use it), it has no pickle,
and ``safe_open`` reads one named tensor without reading the rest, so a worker takes exactly its samples out of
a shard in any order. That random access is what makes the epoch's order a pure function of the seed, whatever
the number of ranks and workers (:func:`make_stream`), and so lets a two-rank run reproduce a one-process run.

:func:`make_stream` walks a plan of global batches (lists of sample keys, the same on every rank): worker ``w`` of
``num_workers`` takes batches ``w, w + num_workers, ...`` (a ``DataLoader`` hands them back in plan order), and of
each batch rank ``r`` takes its contiguous part (:func:`rank_slice`), so each sample is seen once per epoch across
the world.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LISTING_FILE = "train_shards.json"
FORMAT = 1


@dataclass(frozen=True)
class ShardListing:
    """Where a Dataset's training shards are and which samples each holds (``train_shards.json``).

    Attributes:
        kind: ``search`` (finetune_clip) or ``lipsync`` (finetune_lipsync).
        shards: ``(file name, sample keys)`` per shard, in write order.
        store: ``""``: the shards are in the Dataset folder; else the artifacts store's URI.
        prefix: Key prefix of the shards in ``store``.
        digests: ``(sample key, SHA-256 of its arrays)`` pairs: a streamed sample's content identity without
            reading it (:mod:`components.common.retrain` fingerprints a training set with them).
    """

    kind: str
    shards: tuple[tuple[str, tuple[str, ...]], ...]
    store: str = ""
    prefix: str = ""
    digests: tuple[tuple[str, str], ...] = ()

    def shard_of(self) -> dict[str, str]:
        """Sample key -> shard file name."""
        return {key: name for name, keys in self.shards for key in keys}

    def digest_of(self) -> dict[str, str]:
        """Sample key -> SHA-256 of its arrays (field names, dtypes, shapes and bytes)."""
        return dict(self.digests)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "store": self.store,
            "prefix": self.prefix,
            "shards": [{"name": n, "samples": list(k)} for n, k in self.shards],
            "digests": dict(self.digests),
        }


def read_listing(dataset_dir: str | Path) -> ShardListing | None:
    """The Dataset's ``train_shards.json``, or ``None`` when it has none (a Dataset of an older clipsync).

    Raises:
        ValueError: If the listing is of another format.
    """
    path = Path(dataset_dir) / LISTING_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: training shards of format {raw.get('format')!r}, this clipsync reads {FORMAT}")
    shards = tuple((s["name"], tuple(s["samples"])) for s in raw["shards"])
    digests = tuple(sorted(raw.get("digests", {}).items()))
    return ShardListing(raw["kind"], shards, raw.get("store", ""), raw.get("prefix", ""), digests)


class ShardWriter:
    """Writes ``<kind>-NNNNN.safetensors`` shards of ``samples_per_shard`` samples each into ``out_dir``.

    One shard's samples are held until it is full (``samples_per_shard`` bounds the writer's memory).

    Args:
        out_dir: Where the shard files are written.
        kind: The shards' kind (file name prefix).
        samples_per_shard: Samples per shard.
    """

    def __init__(self, out_dir: str | Path, kind: str, samples_per_shard: int) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.samples_per_shard = samples_per_shard
        self.shards: list[tuple[str, tuple[str, ...]]] = []
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._digests: dict[str, str] = {}

    def add(self, key: str, tensors: dict[str, np.ndarray]) -> None:
        """Queue one sample (``field -> array``); a full shard is written out."""
        if "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and hold no '/'")
        self._pending[key] = tensors
        self._digests[key] = sample_digest(tensors)
        if len(self._pending) >= self.samples_per_shard:
            self._flush()

    def _flush(self) -> None:
        from safetensors.numpy import save_file

        if not self._pending:
            return
        name = f"{self.kind}-{len(self.shards):05d}.safetensors"
        flat = {f"{k}/{f}": np.ascontiguousarray(a) for k, fields in self._pending.items() for f, a in fields.items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_file(flat, str(self.out_dir / name), metadata={"format": str(FORMAT), "kind": self.kind})
        self.shards.append((name, tuple(self._pending)))
        self._pending = {}

    def close(self) -> ShardListing:
        """Write the last (partial) shard; returns the listing of the shards written (local)."""
        self._flush()
        return ShardListing(self.kind, tuple(self.shards), digests=tuple(sorted(self._digests.items())))


def sample_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 of a sample's arrays: each field's name, dtype, shape and bytes, in field order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}:{data.dtype}{data.shape}".encode())
        digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def shard_prefix(stage: str, client_id: str, window: str) -> str:
    """Key prefix of a stage run's shards in the artifacts store (used only when that store is ``s3://``)."""
    safe_window = "".join(c if c.isalnum() or c in "-_" else "_" for c in window) or "nowindow"
    return f"train-shards/{stage}/{client_id}-{safe_window}"


def write_listing(dataset_dir: str | Path, listing: ShardListing, artifacts_uri: str, prefix: str, encryption=None):
    """Publish the shards written into ``dataset_dir`` and write its ``train_shards.json``.

    With an ``s3://`` artifacts store the shard files move there (under ``prefix``) and leave the Dataset, so that
    the training pods stream them instead of receiving the whole Dataset; with a local store they stay put.

    Returns:
        The listing as written.
    """
    from dataclasses import replace

    if artifacts_uri.startswith("s3://"):
        from components.common.storage import open_store

        store = open_store(artifacts_uri, encryption)
        for name, _ in listing.shards:
            path = Path(dataset_dir) / name
            store.put_file(f"{prefix}/{name}", path)
            path.unlink()
        listing = replace(listing, store=artifacts_uri, prefix=prefix)
    (Path(dataset_dir) / LISTING_FILE).write_text(json.dumps(listing.to_json(), indent=1))
    return listing


@dataclass
class ShardSource:
    """Reads samples out of a listing's shards (local files, or fetched from the store on first use).

    Picklable, so that DataLoader workers get their own copy; a worker opens the store lazily.

    Args:
        listing: The Dataset's listing.
        dataset_dir: The Dataset folder (local shards).
        spool_dir: Where shards fetched from the store are kept (disk, not memory).
        encryption: The client's encryption settings for the artifacts store.
    """

    listing: ShardListing
    dataset_dir: str
    spool_dir: str = ""
    encryption: Any = None
    _where: dict[str, str] = field(default_factory=dict, repr=False)
    _store: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._where = self.listing.shard_of()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def _path(self, name: str) -> Path:
        if not self.listing.store:
            return Path(self.dataset_dir) / name
        from components.common.storage import fetch_to_local, open_store

        if self._store is None:
            self._store = open_store(self.listing.store, self.encryption)
        return fetch_to_local(self._store, f"{self.listing.prefix}/{name}", Path(self.spool_dir))

    def read(self, key: str) -> dict[str, np.ndarray]:
        """The sample's fields (``field -> array``).

        Raises:
            KeyError: If no shard holds the sample.
        """
        from safetensors import safe_open

        if key not in self._where:
            raise KeyError(f"no training shard holds sample {key!r}")
        start = f"{key}/"
        with safe_open(str(self._path(self._where[key])), framework="numpy") as fh:
            return {name[len(start) :]: fh.get_tensor(name) for name in fh.keys() if name.startswith(start)}  # noqa: SIM118


def open_shards(dataset_dir: str | Path, state_dir: str | Path, encryption: Any = None) -> ShardSource | None:
    """The Dataset's training shards (fetched into ``{state_dir}/cache/train-shards`` when in the store), or ``None``
    when the Dataset has none."""
    listing = read_listing(dataset_dir)
    if listing is None:
        return None
    return ShardSource(listing, str(dataset_dir), str(Path(state_dir) / "cache" / "train-shards"), encryption)


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of a batch of ``n`` (sizes differ by at most one, the first ranks larger)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def _identity(x: Any) -> Any:
    return x


def make_stream(
    source: Any,
    plan: Sequence[Sequence[str]],
    load: Callable[[str, dict[str, np.ndarray]], Any],
    rank: int = 0,
    world: int = 1,
):
    """A torch ``IterableDataset`` of ``(batch index, [loaded samples])``: rank ``rank``'s part of each batch.

    Every sample goes through ``load`` in the loader's worker.

    Args:
        source: A :class:`ShardSource` (anything with ``read(key) -> fields``).
        plan: The epoch's global batches of sample keys, identical on every rank.
        load: ``load(key, fields)`` -> what the trainer needs (runs in the worker; must be picklable).
        rank: This process's rank.
        world: The world size.
    """
    import torch

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
            for b in range(wid, len(plan), nw):
                keys = plan[b][rank_slice(len(plan[b]), rank, world)]
                yield b, [load(k, source.read(k)) for k in keys]

    return _Stream()


def stream_loader(dataset: Any, workers: int) -> Iterable[tuple[int, list[Any]]]:
    """A DataLoader over :func:`make_stream`'s dataset with ``workers`` worker processes (0: in this process)."""
    import torch

    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=_identity, persistent_workers=False
    )

"""One rank of a finetune_clip training under torchrun (tests/test_distributed.py starts it).

``python ddp_clip_worker.py BASE FRAMES WORK OUT_JSON CFG_JSON [STOP_AFTER]``: trains on the frames Dataset's
streamed training videos with :func:`train_clip` and writes this rank's result (history, resumed epoch) to
``OUT_JSON.<rank>``; with ``STOP_AFTER`` every rank stops after that epoch, as a preempted job would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Stopped(Exception):
    pass


def main() -> int:
    from components.common.distributed import shutdown, world_from_env
    from components.common.shards import ShardSource, read_listing
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.data import load_frame_samples
    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.train import train_clip

    base, frames, work, out = (Path(a) for a in sys.argv[1:5])
    cfg = FinetuneClipConfig(**json.loads(sys.argv[5]))
    stop_after = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    world = world_from_env()
    listing = read_listing(frames)
    shards = ShardSource(listing, str(frames))
    bundle = load_base_clip(str(base))
    data, _ = load_frame_samples(
        frames, ("train", "val"), bundle.image_spec, cfg.frames_per_video, streamed=list(listing.shard_of())
    )

    def log_fn(metrics: dict, epoch: int) -> None:
        if epoch == stop_after:
            raise Stopped

    try:
        result = train_clip(bundle, data["train"], data["val"], cfg, work, log_fn, shards=shards, world=world)
        Path(f"{out}.{world.rank}").write_text(
            json.dumps({"history": result.history, "resumed_from_epoch": result.resumed_from_epoch})
        )
    except Stopped:
        return 3
    finally:
        shutdown(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())

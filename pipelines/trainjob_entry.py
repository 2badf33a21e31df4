"""What each rank of a fine-tune's TrainJob runs: ``torchrun --nproc_per_node N -m pipelines.trainjob_entry ...``.

It calls the stage's core with the inputs the kfp wrapper would pass, fetched from the artifacts store where the
task staged them (:func:`components.common.trainjob.stage_inputs`). Every rank runs the core (a DDP-aware core
splits the work); ranks other than 0 do not track (MLflow) and keep their output to themselves; rank 0 publishes
the Model folder and the stage report for the task to pick up (:func:`components.common.trainjob.publish_outputs`).

Arguments: ``--stage finetune_clip|finetune_lipsync --prefix trainjobs/<stage>/<job> --parent-run-id ID
--input NAME ... --config JSON`` (the client's whole configuration, as the kfp task receives it).
Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("clipsync.trainjob")


def _run_stage(stage: str, cfg, ctx, inputs: dict[str, Path], out: Path):
    """The stage's own rank entry (``components.<stage>.distributed.run_rank``) on the fetched inputs."""
    module = importlib.import_module(f"components.{stage}.distributed")
    return module.run_rank(cfg, ctx, inputs, out)


def main(argv: list[str] | None = None) -> int:
    """Run one rank of the TrainJob; the exit status is 0 when the stage's core returned."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.trainjob_entry", description=__doc__)
    parser.add_argument("--stage", required=True, choices=("finetune_clip", "finetune_lipsync"))
    parser.add_argument("--prefix", required=True, help="trainjobs/<stage>/<job> in the artifacts store")
    parser.add_argument("--parent-run-id", default="")
    parser.add_argument("--input", action="append", default=[], help="a staged input Dataset's name")
    parser.add_argument("--config", required=True, help="the client configuration (JSON)")
    args = parser.parse_args(argv)

    from components.common.distributed import shutdown, world_from_env
    from components.common.stage import configure_task_logging
    from components.common.storage import open_store
    from components.common.trainjob import fetch_inputs, publish_outputs
    from components.config import task_inputs

    configure_task_logging()
    rank = int(os.environ.get("RANK", "0"))
    cfg, ctx = task_inputs(args.config, args.parent_run_id)
    if rank != 0:
        ctx = dataclasses.replace(ctx, track=False)
    store = open_store(ctx.storage.artifacts_uri, ctx.encryption)
    world = world_from_env()
    try:
        with tempfile.TemporaryDirectory(prefix=f"{args.stage}-rank{rank}-") as work:
            inputs = fetch_inputs(store, args.prefix, args.input, Path(work) / "inputs")
            out = Path(work) / "model"
            logger.info("%s: rank %d of %s runs the stage", args.stage, rank, os.environ.get("WORLD_SIZE", "1"))
            report = _run_stage(args.stage, cfg, ctx, inputs, out)
            if rank == 0:
                publish_outputs(store, args.prefix, out, dataclasses.asdict(report))
                logger.info("%s: rank 0 published the model to %s/outputs", args.stage, args.prefix)
    finally:
        shutdown(world)  # the core joined the process group; leave it together
    return 0


def _recorded_main() -> int:
    """:func:`main` under torch elastic's ``record``: torchrun's failure summary then quotes the failed rank's
    exception, and the summary's lines are the last ones the task reports."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(main)()


if __name__ == "__main__":
    sys.exit(_recorded_main())

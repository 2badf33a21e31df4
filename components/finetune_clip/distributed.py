"""finetune_clip under torchrun on local Dataset folders (a TrainJob's pods run pipelines.trainjob_entry).

```
torchrun --nproc_per_node N -m components.finetune_clip.distributed \
    --config CONFIG_JSON_FILE --parent-run-id RUN_ID --frames FRAMES_DIR [--feedback FEEDBACK_DIR] \
    --model MODEL_DIR [--report REPORT_JSON]
```

The inputs and outputs of the kfp wrapper (``component.py``): the run's config (start_run's ``config`` output,
here in a file), the parent MLflow run, the frames Dataset (its ``train_shards.json`` says where the training shards
are), the feedback Dataset and the Model folder to write. Every rank runs :func:`~components.finetune_clip.core.
run_finetune_clip`; rank 0 alone logs to MLflow, registers the challenger, writes ``MODEL_DIR`` and the report
(``registered_version`` and the stage's figures as JSON). Without torchrun (``WORLD_SIZE`` unset) it is one process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def run_rank(cfg: Any, ctx: Any, inputs: Mapping[str, Path | None], model_dir: Path) -> Any:
    """This rank's run of the stage core with the kfp wrapper's inputs (named as its Datasets) and the client's whole
    configuration ``cfg``; also what a TrainJob's pods call (:mod:`pipelines.trainjob_entry`).

    Returns:
        The stage report.
    """
    from components.finetune_clip.core import run_finetune_clip

    return run_finetune_clip(inputs["frames"], model_dir, cfg.finetune_clip, ctx, feedback_dir=inputs.get("feedback"))


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train on this rank, leave the process group; returns the exit status."""
    from components.common.distributed import entry_main

    parser = argparse.ArgumentParser(prog="components.finetune_clip.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", required=True, type=Path, help="the frames Dataset folder")
    parser.add_argument("--feedback", type=Path, default=None, help="the feedback Dataset folder")

    def train(args: argparse.Namespace):
        from components.config import task_inputs

        cfg, ctx = task_inputs(args.config.read_text(), args.parent_run_id)
        return run_rank(cfg, ctx, {"frames": args.frames, "feedback": args.feedback}, args.model)

    return entry_main(parser, train, argv)


if __name__ == "__main__":
    sys.exit(main())

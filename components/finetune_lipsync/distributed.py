"""finetune_lipsync under torchrun: the process a Kubeflow Trainer TrainJob (or a person) starts on every rank.

```
torchrun --nproc_per_node N -m components.finetune_lipsync.distributed \
    --config CONFIG_JSON_FILE --parent-run-id RUN_ID --faces FACES_DIR --model MODEL_DIR [--report REPORT_JSON]
```

The inputs and outputs of the kfp wrapper (``component.py``): the run's config (start_run's ``config`` output,
here in a file), the parent MLflow run, the faces Dataset (its ``train_shards.json`` says where the training shards
are) and the Model folder to write. Every rank runs :func:`~components.finetune_lipsync.core.run_finetune_lipsync`;
rank 0 alone logs to MLflow, registers the challenger, writes ``MODEL_DIR`` and the report (``registered_version``
and the stage's figures as JSON). Without torchrun (``WORLD_SIZE`` unset) it is one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, train on this rank, leave the process group; returns the exit status."""
    from components.common.distributed import shutdown, world_from_env
    from components.config import task_inputs
    from components.finetune_lipsync.core import run_finetune_lipsync

    parser = argparse.ArgumentParser(prog="components.finetune_lipsync.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="file with the run's config JSON")
    parser.add_argument("--parent-run-id", default="", help="the monthly run's MLflow run id")
    parser.add_argument("--faces", required=True, type=Path, help="the faces Dataset folder")
    parser.add_argument("--model", required=True, type=Path, help="the Model folder to write (rank 0)")
    parser.add_argument("--report", type=Path, default=None, help="where rank 0 writes the report JSON")
    args = parser.parse_args(argv)
    world = world_from_env()
    cfg, ctx = task_inputs(args.config.read_text(), args.parent_run_id)
    try:
        report = run_finetune_lipsync(args.faces, args.model, cfg.finetune_lipsync, ctx, face_config=cfg.face_tracking)
        if world.is_main and args.report is not None:
            out = {"registered_version": report.registered_version or "", **report.as_metrics()}
            out["not_trained_reason"] = report.not_trained_reason
            args.report.write_text(json.dumps(out, indent=1))
    finally:
        shutdown(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A month whose data cannot train a model produces no challenger, and the champion stays.

The fine-tune stage writes ``no_challenger.json`` (the reason) into its model artifact instead of weights;
evaluate copies it into its report, and the A/B gate reads it and keeps the champion. The run goes on and
succeeds: the other model still trains, and the summary says why this one did not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

NO_CHALLENGER_FILE = "no_challenger.json"

logger = logging.getLogger("clipsync.no_challenger")


class NotTrainable(ValueError):
    """This month's training data cannot train the model (too few videos, a single class)."""


def write_no_challenger(folder: str | Path, reason: str) -> Path:
    """Record in ``folder`` (created) why there is no challenger this month, also in the log and, when an
    MLflow run is active (the stage's), as its tag ``clipsync.no_challenger``.

    Args:
        folder: A model artifact or an evaluation report folder.
        reason: Why nothing was trained, in the user's terms.

    Returns:
        The file written.
    """
    import mlflow

    logger.warning("no challenger this month: %s", reason)
    path = Path(folder) / NO_CHALLENGER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"reason": reason}) + "\n", encoding="utf-8")
    if mlflow.active_run() is not None:
        mlflow.set_tag("clipsync.no_challenger", reason)
    return path


def no_challenger_reason(folder: str | Path) -> str | None:
    """Why ``folder`` holds no challenger, or ``None`` when it holds one."""
    path = Path(folder) / NO_CHALLENGER_FILE
    if not path.is_file():
        return None
    return str(json.loads(path.read_text(encoding="utf-8"))["reason"])


def pass_on_no_challenger(model_dir: str | Path, report_dir: str | Path) -> str | None:
    """For evaluate: copy the fine-tune stage's reason into the report folder, where the gate reads it.

    Args:
        model_dir: The challenger Model artifact.
        report_dir: The evaluate stage's report folder.

    Returns:
        The reason when there is no challenger (nothing to evaluate), else ``None``.
    """
    reason = no_challenger_reason(model_dir)
    if reason is not None:
        write_no_challenger(report_dir, reason)
    return reason

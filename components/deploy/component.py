"""Thin kfp wrappers of components.deploy.core: deploy when the gate said promote, keep when it did not."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.common.images import SERVE_IMAGE


@dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)
def deploy(config: str, parent_run_id: str, model: str, version: str, frames: Input[Dataset]) -> str:
    """Serve the promoted version (KServe, or the local model server), check that it answers with that version,
    then move the registry alias ``champion`` to it. A failure at any step fails the task with the reason and
    leaves what is served and the aliases as they were.
    A CLIP adapter is served with the search index of the client's library, built here by that adapter.

    Returns:
        One Markdown line for the run summary.
    """
    from pathlib import Path

    from components.config import task_inputs
    from components.deploy.core import run_deploy

    cfg, ctx = task_inputs(config, parent_run_id)
    relevance = cfg.finetune_clip.eval_relevance
    result = run_deploy(model, version, Path(frames.path), cfg.deploy, ctx, serving=cfg.serving, relevance=relevance)
    return result.to_markdown()


@dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)
def keep(config: str, parent_run_id: str, model: str, decision: str) -> str:
    """The gate kept the champion: record that outcome (a normal, successful month) and change nothing.

    Returns:
        One Markdown line for the run summary.
    """
    from components.ab_gate.decision import Decision
    from components.config import task_inputs
    from components.deploy.core import run_keep

    _, ctx = task_inputs(config, parent_run_id)
    return run_keep(model, Decision.from_json(decision), ctx)

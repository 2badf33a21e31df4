"""Thin kfp wrapper of components.deploy.core.deploy_model (run it only when the gate said promote)."""

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
    import logging
    from pathlib import Path

    from components.common import tracking
    from components.common.config import ClientConfig
    from components.deploy.core import deploy_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    deploy_cfg = cfg.deploy
    params = {"model": model, "version": version, "target": deploy_cfg.target}
    with tracking.stage_run(cfg.tracking, parent_run_id, f"deploy_{model}", params):
        prepare = None
        if model == "clip":
            from serving.config import IndexSettings
            from serving.index_build import build_index

            def prepare(model_dir: Path) -> None:
                settings = IndexSettings.of(cfg.serving)
                built = build_index(
                    model_dir,
                    Path(frames.path),
                    settings=settings,
                    relevance=cfg.finetune_clip.eval_relevance,
                    cache_dir=cfg.cache_dir,
                )
                tracking.log_dict_artifact(built, "deploy/clip_index.json")

        result = deploy_model(
            cfg.tracking,
            cfg.client_id,
            Path(cfg.state_dir),
            model,
            version,
            deploy_cfg,
            prepare=prepare,
            serving=cfg.serving,
            cache_dir=cfg.cache_dir,
            encryption=cfg.encryption,
        )
        tracking.log_dict_artifact(result.to_dict(), f"deploy/{model}.json")
        tracking.log_metrics(
            {f"deploy_{model}_version": float(version), f"deploy_{model}_changed": float(result.promotion.changed)}
        )
    return result.to_markdown()


@dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)
def keep(config: str, parent_run_id: str, model: str, decision: str) -> str:
    """The gate kept the champion: record that outcome (a normal, successful month) and change nothing.

    Returns:
        One Markdown line for the run summary.
    """
    import logging

    from components.ab_gate.core import Decision
    from components.common import tracking
    from components.common.config import ClientConfig
    from components.deploy.core import registered_name

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ClientConfig.from_json(config)
    kept = Decision.from_json(decision)
    params = {"model": model, "champion": kept.baseline_version, "challenger": kept.challenger_version}
    with tracking.stage_run(cfg.tracking, parent_run_id, f"deploy_{model}", params):
        tracking.log_metrics({f"deploy_{model}_changed": 0.0})
    reason = kept.reasons[0] if kept.reasons else "gate said keep"
    name = registered_name(model, cfg.client_id)
    champion = kept.baseline_version if kept.baseline == "champion" else ""
    champion = champion or tracking.get_version_by_alias(cfg.tracking, name, "champion")
    staying = f"champion v{champion} serves" if champion else "no champion yet, nothing serves"
    what = f"{kept.challenger_label} not deployed" if kept.challenger_version else "nothing to deploy"
    return f"- deploy {model}: {what}, {staying} ({reason})\n"

"""Thin kfp wrapper of components.deploy.core.deploy_model (run it only when the gate said promote)."""

from kfp import dsl

from components.common.images import SERVE_IMAGE


@dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)
def deploy(config: str, parent_run_id: str, model: str, version: str) -> str:
    """Serve the promoted version (KServe InferenceService or the local model server), then move the
    registry alias ``champion`` to it. A failed rollout fails the task and leaves the champion as it was.

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
        result = deploy_model(cfg.tracking, cfg.client_id, Path(cfg.state_dir), model, version, deploy_cfg)
        tracking.log_dict_artifact(result.to_dict(), f"deploy/{model}.json")
        tracking.log_metrics(
            {f"deploy_{model}_version": float(version), f"deploy_{model}_changed": float(result.promotion.changed)}
        )
    return result.to_markdown()

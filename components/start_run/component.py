"""Thin kfp wrapper of components.start_run.core."""

from typing import NamedTuple

from kfp import dsl

from components.common.images import MEDIA_IMAGE


@dsl.component(base_image=MEDIA_IMAGE, install_kfp_package=False)
def start_run(client_id: str, config_yaml: str, as_of: str, window_days: int, dag_run_id: str) -> NamedTuple(
    "RunStart", [("config", str), ("as_of", str), ("parent_run_id", str)]
):
    """Resolve the client's config and window; take the client's run lease; open the parent MLflow run."""
    import logging
    from collections import namedtuple

    from components.start_run.core import start_run as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = run(client_id, config_yaml, as_of, window_days, dag_run_id)
    return namedtuple("RunStart", ["config", "as_of", "parent_run_id"])(
        started.config_json, started.as_of, started.parent_run_id
    )

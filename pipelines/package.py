"""Compiling monthly_retrain into a pipeline package (YAML) for the Kubeflow UI / API."""

from __future__ import annotations

import json
from pathlib import Path


def compile_pipeline(output: Path, client_id: str = "acme", config_yaml: str = "") -> Path:
    """Compile the DAG to ``output`` with the client's defaults baked into its parameters.

    Args:
        output: Where to write the YAML package.
        client_id: Default value of the ``client_id`` parameter.
        config_yaml: Default value of the ``config_yaml`` parameter (the client's YAML config text; stored
            as one line of JSON).

    Returns:
        The written path.
    """
    import yaml
    from kfp import compiler

    from pipelines.monthly_retrain import monthly_retrain

    # kfp copies parameter defaults into the package's comment header verbatim; a multi-line YAML default
    # would break that header, so the config travels as one line of JSON (which is also YAML).
    config_yaml = json.dumps(yaml.safe_load(config_yaml) or {}, sort_keys=True) if config_yaml.strip() else ""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        monthly_retrain,
        package_path=str(output),
        pipeline_parameters={"client_id": client_id, "config_yaml": config_yaml},
    )
    return output

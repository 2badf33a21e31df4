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
            as one line of JSON). Its ``pipeline_gpu`` section decides where the GPU tasks run; every task reads
            the MinIO credentials from the client's own Secret ``clipsync-minio-<client_id>``.

    Returns:
        The written path.
    """
    import yaml
    from kfp import compiler

    from components.common.fleet_config import SSE_C_SECRET_KEY, client_secret_name
    from components.config import from_dict
    from pipelines.monthly_retrain import build_pipeline

    data = yaml.safe_load(config_yaml) or {} if config_yaml.strip() else {}
    # The GPU tasks' scheduling is part of the package (pod specs), so it comes from the config at compile time;
    # validating the whole config here also refuses a bad file before anything is uploaded.
    config = from_dict({**data, "client_id": client_id})
    # Every task of a client's package reads that client's own Secret, and no other (issue 16: isolation).
    secret_env = {SSE_C_SECRET_KEY: config.encryption.sse_c_key_env} if config.encryption.mode == "sse-c" else {}
    pipeline = build_pipeline(config.pipeline_gpu, client_secret_name(client_id), secret_env)
    # kfp copies parameter defaults into the package's comment header verbatim; a multi-line YAML default
    # would break that header, so the config travels as one line of JSON (which is also YAML).
    config_yaml = json.dumps(data, sort_keys=True) if config_yaml.strip() else ""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        pipeline,
        package_path=str(output),
        pipeline_parameters={"client_id": client_id, "config_yaml": config_yaml},
    )
    return output

"""Offline validation of custom resources against their CRDs' openAPIV3Schema (no API server can run here).

Schemas: KServe 0.21 (InferenceService, ServingRuntime, TrainedModel) from ``$CLIPSYNC_KSERVE_SCHEMAS``, else
``tests/schemas/kserve``, else the workspace's shared copy; Kubeflow Trainer v2 (TrainJob, TrainingRuntime,
ClusterTrainingRuntime) from ``$CLIPSYNC_TRAINER_SCHEMAS``, else ``tests/schemas/kubeflow-trainer``, else
``kubeflow-trainer`` beside ``$CLIPSYNC_KSERVE_SCHEMAS``, else the shared copy. Unknown fields are refused where
the API server would silently prune them (structural schemas).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _schema_dir(variable: str, name: str) -> tuple[Path, list[Path]]:
    dirs = [Path(p) for p in (os.environ.get(variable), REPO / "tests" / "schemas" / name) if p]
    if os.environ.get("CLIPSYNC_KSERVE_SCHEMAS"):  # the schema folders' common parent
        dirs.append(Path(os.environ["CLIPSYNC_KSERVE_SCHEMAS"]).parent / name)
    dirs.append(REPO.parent / "shared" / "schemas" / name)
    return next((d for d in dirs if d.is_dir() and any(d.glob("*.yaml"))), dirs[-1]), dirs


KSERVE, _KSERVE_DIRS = _schema_dir("CLIPSYNC_KSERVE_SCHEMAS", "kserve")
TRAINER, _TRAINER_DIRS = _schema_dir("CLIPSYNC_TRAINER_SCHEMAS", "kubeflow-trainer")
#: kind -> (schema folder, CRD file, where it was looked for)
CRD_FILES = {
    "InferenceService": (KSERVE, "serving.kserve.io_inferenceservices.yaml", _KSERVE_DIRS),
    "ServingRuntime": (KSERVE, "serving.kserve.io_servingruntimes.yaml", _KSERVE_DIRS),
    "TrainedModel": (KSERVE, "serving.kserve.io_trainedmodels.yaml", _KSERVE_DIRS),
    "TrainJob": (TRAINER, "trainer.kubeflow.org_trainjobs.yaml", _TRAINER_DIRS),
    "TrainingRuntime": (TRAINER, "trainer.kubeflow.org_trainingruntimes.yaml", _TRAINER_DIRS),
    "ClusterTrainingRuntime": (TRAINER, "trainer.kubeflow.org_clustertrainingruntimes.yaml", _TRAINER_DIRS),
}


def _strict(schema):
    """Refuse unknown fields where the API server would silently prune them (structural schemas)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    folder, file, looked = CRD_FILES[kind]
    if not (folder / file).is_file():
        pytest.fail(f"CRD schema {file} not found in {[str(d) for d in looked]}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are ~40k lines
    crd = yaml.load((folder / file).read_text(), Loader=loader)
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(entry["schema"]["openAPIV3Schema"]))


def validate_crd(obj: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is valid for its kind and API version."""
    version = obj["apiVersion"].split("/")[1]
    crd_validator(obj["kind"], version).validate(obj)

"""The names every stage shares: the client id's form and a client's registered model names (standard library only).

A registered model is ``{model}-{client}`` (``clip-acme``, ``lipsync-acme``): the MLflow registry's name, the
model's name on the model server, a TrainedModel's name and a per-client InferenceService's name. A client's
experiment (MLflow's and the Kubeflow Pipelines server's) is ``clipsync-{client}``.
"""

from __future__ import annotations

import re

#: What a client id looks like: it names buckets, registry models, routes and Kubernetes objects.
CLIENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}[a-z0-9]$")
#: What a client id must be, in the words of the errors that refuse one.
CLIENT_ID_RULE = "2-42 lower-case letters, digits or dashes"
#: The models clipsync trains for every client (the A/B gate's and deploy's ``model``).
MODELS = ("clip", "lipsync")
#: The feedback stage's training records in its Dataset (written by feedback, read by finetune_clip).
FEEDBACK_RECORDS_FILE = "feedback_records.jsonl"


def is_client_id(value: object) -> bool:
    """Whether ``value`` is a valid client id (:data:`CLIENT_ID_PATTERN`)."""
    return isinstance(value, str) and bool(CLIENT_ID_PATTERN.match(value))


def registered_name(model: str, client_id: str) -> str:
    """The registry name of a client's model (``clip-acme``).

    Raises:
        ValueError: If ``model`` is not one of :data:`MODELS`.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return f"{model}-{client_id}"


def client_of(name: str) -> str | None:
    """The client of a registered model name, the inverse of :func:`registered_name` (``clip-acme`` -> ``acme``).

    Returns:
        The client id, or ``None`` for a name that is no client's model.
    """
    for model in MODELS:
        client_id = name.removeprefix(f"{model}-")
        if client_id != name and is_client_id(client_id):
            return client_id
    return None


def experiment_name(client_id: str) -> str:
    """A client's default experiment, in MLflow and on the Kubeflow Pipelines server (``clipsync-acme``)."""
    return f"clipsync-{client_id}"

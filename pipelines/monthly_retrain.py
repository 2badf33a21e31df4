"""The monthly_retrain DAG: one Kubeflow Pipelines (kfp v2) pipeline for every client.

Imports only kfp and the thin component wrappers, so compiling needs neither torch nor mediapipe.
A recurring run starts it on the 1st of each month; a person can launch it from the Kubeflow UI with
the same parameters; locally `clipsync run` executes it with kfp.local's SubprocessRunner.
"""

from kfp import dsl

from components.face_tracking.component import face_tracking
from components.frame_extraction.component import frame_extraction
from components.ingest.component import ingest
from components.start_run.component import start_run
from components.summary.component import summary

PIPELINE_NAME = "monthly-retrain"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="clipsync: ingest new client videos, adapt the CLIP search and lip-sync models, gate, deploy.",
)
def monthly_retrain(
    client_id: str = "acme",
    config_yaml: str = "",
    as_of: str = "",
    window_days: int = 0,
) -> dsl.Markdown:
    """One client's monthly run.

    Args:
        client_id: The client (overrides the config's client_id when non-empty).
        config_yaml: The client's YAML configuration (empty: embedded defaults).
        as_of: End of the retrain window, ISO date, exclusive (empty: the config's, else today UTC).
        window_days: Window length in days (0: the config's, default 30).
    """
    started = start_run(client_id=client_id, config_yaml=config_yaml, as_of=as_of, window_days=window_days)
    started.set_display_name("start_run")
    config = started.outputs["config"]
    parent = started.outputs["parent_run_id"]

    ingested = ingest(config=config, parent_run_id=parent)
    ingested.set_display_name("ingest")

    extracted = frame_extraction(config=config, parent_run_id=parent, manifest=ingested.outputs["manifest"])
    extracted.set_display_name("frame_extraction")

    tracked = face_tracking(config=config, parent_run_id=parent, frames=extracted.outputs["frames"])
    tracked.set_display_name("face_tracking")

    closed = summary(
        config=config,
        parent_run_id=parent,
        manifest=ingested.outputs["manifest"],
        frames=extracted.outputs["frames"],
        faces=tracked.outputs["faces"],
    )
    closed.set_display_name("summary")
    return closed.outputs["report"]

"""The monthly_retrain DAG: one Kubeflow Pipelines (kfp v2) pipeline for every client.

Imports only kfp and the thin component wrappers, so compiling needs neither torch nor mediapipe.
A recurring run starts it on the 1st of each month; a person can launch it from the Kubeflow UI with
the same parameters; locally `clipsync run` executes it with kfp.local's SubprocessRunner.
"""

from typing import TYPE_CHECKING

from kfp import dsl, kubernetes

from components.ab_gate.component import ab_gate
from components.deploy.component import deploy, keep
from components.deploy.config import ADMIN_TOKEN_ENV, ADMIN_TOKEN_KEY, SERVING_TOKEN_SECRET
from components.evaluate.component import evaluate_clip, evaluate_lipsync
from components.face_tracking.component import face_tracking
from components.feedback.component import feedback
from components.finetune_clip.component import finetune_clip
from components.finetune_lipsync.component import finetune_lipsync
from components.frame_extraction.component import frame_extraction
from components.ingest.component import ingest
from components.monitor.component import monitor
from components.start_run.component import start_run
from components.summary.component import finish_run, summary

if TYPE_CHECKING:
    from components.common.config import PipelineGpuConfig

PIPELINE_NAME = "monthly-retrain"
#: The Kubernetes Secret with MinIO credentials read by every task when the package is built for no client (the
#: compiled package of a client reads that client's own Secret, ``clipsync-minio-<client>``: see build_pipeline).
MINIO_SECRET = "clipsync-minio"
MINIO_ENV = {
    "AWS_ACCESS_KEY_ID": "MINIO_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY": "MINIO_SECRET_KEY",
    "MINIO_ENDPOINT": "MINIO_ENDPOINT",
}
#: Per-task resources (request CPU, request = limit memory) and whether the task always needs a GPU (the
#: evaluate tasks get one when the config's ``pipeline_gpu.evaluate`` is set).
RESOURCES = {
    "start_run": ("0.5", "1G", False),
    "ingest": ("1", "4G", False),
    "frame_extraction": ("4", "8G", False),
    "face_tracking": ("4", "8G", False),
    "feedback": ("0.5", "2G", False),
    "finetune_clip": ("4", "32G", True),
    "finetune_lipsync": ("4", "32G", True),
    "evaluate_clip": ("2", "16G", False),
    "evaluate_lipsync": ("2", "16G", False),
    "ab_gate": ("1", "2G", False),
    "monitor": ("2", "8G", False),
    "deploy": ("0.5", "2G", False),
    "keep": ("0.5", "1G", False),
    "summary": ("0.5", "1G", False),
    "finish_run": ("0.5", "1G", False),
}
#: Stages that talk to MinIO, MLflow or the Kubernetes API retry transient failures with backoff. GPU tasks
#: retry as the config's ``pipeline_gpu`` section says (a preempted pod resumes from its checkpoint).
RETRIED = {"start_run", "ingest", "feedback", "frame_extraction", "monitor", "deploy", "summary", "finish_run"}
#: The GPU settings of the pipeline being built (see :func:`build_pipeline`; kfp builds the graph while decorating).
_gpu: "PipelineGpuConfig | None" = None
#: The Secret (and its extra key -> variable) the tasks of the pipeline being built read their credentials from.
_secret: tuple[str, dict[str, str]] = (MINIO_SECRET, {})


def _settings(task: dsl.PipelineTask, stage: str, display_name: str | None = None) -> dsl.PipelineTask:
    """Display name, resources, retries, caching and secrets of one task (ignored by kfp.local, compiled in).

    Caching is off for every task: each one writes into this DAG run's MLflow parent run, so a cached
    result would leave the run's record incomplete; the window's as_of and the parent run id are inputs
    anyway, so two months could never share a cache key.
    """
    cpu, memory, needs_gpu = RESOURCES[stage]
    task.set_display_name(display_name or stage)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    gpu = _gpu
    if gpu is not None and (needs_gpu or (gpu.evaluate and stage.startswith("evaluate"))):
        task.set_accelerator_type(gpu.accelerator_type).set_accelerator_limit(gpu.accelerator_count)
        for label, value in sorted(gpu.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=label, label_value=value)
        for toleration in gpu.tolerations:
            kubernetes.add_toleration(task, **toleration)
        task.set_retry(
            num_retries=gpu.retries,
            backoff_duration=f"{gpu.retry_backoff_s}s",
            backoff_factor=2.0,
            backoff_max_duration="3600s",
        )
    elif stage in RETRIED:
        task.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
    task.set_caching_options(False)
    secret, extra_env = _secret
    kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={**MINIO_ENV, **extra_env}, optional=True)
    if stage == "deploy":  # it loads models and probes their metadata: the model servers' admin token
        kubernetes.use_secret_as_env(
            task, secret_name=SERVING_TOKEN_SECRET, secret_key_to_env={ADMIN_TOKEN_KEY: ADMIN_TOKEN_ENV}, optional=True
        )
    return task


def _gate_and_deploy(model: str, config, parent, evaluation, challenger_version, frames):
    """ab_gate for one model, then deploy under dsl.If(promote) or keep the champion (dsl.Else).

    Returns:
        The gate task and the outcome line (whichever branch ran), for the summary.
    """
    gate = ab_gate(
        config=config, parent_run_id=parent, model=model, evaluation=evaluation, challenger_version=challenger_version
    )
    _settings(gate, "ab_gate", f"ab_gate_{model}")
    with dsl.If(gate.outputs["promote"] == True, name=f"promote-{model}"):  # noqa: E712 (kfp needs ==)
        deployed = deploy(config=config, parent_run_id=parent, model=model, version=challenger_version, frames=frames)
        _settings(deployed, "deploy", f"deploy_{model}")
    with dsl.Else(name=f"keep-{model}"):
        kept = keep(config=config, parent_run_id=parent, model=model, decision=gate.outputs["decision"])
        _settings(kept, "keep", f"keep_{model}")
    return gate, dsl.OneOf(deployed.output, kept.output)


def _tasks(run_params: dict) -> None:
    """The DAG's tasks, from start_run to summary."""
    started = start_run(**run_params, dag_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    _settings(started, "start_run")
    config = started.outputs["config"]
    parent = started.outputs["parent_run_id"]

    ingested = ingest(config=config, parent_run_id=parent)
    _settings(ingested, "ingest")

    extracted = frame_extraction(config=config, parent_run_id=parent, manifest=ingested.outputs["manifest"])
    _settings(extracted, "frame_extraction")

    tracked = face_tracking(config=config, parent_run_id=parent, frames=extracted.outputs["frames"])
    _settings(tracked, "face_tracking")

    # Last month's feedback: its own task (it reads the serving side's store, not the uploads ingest lists), so a
    # failure names it and ingest stays the one reader of the client's bucket.
    fed = feedback(config=config, parent_run_id=parent)
    _settings(fed, "feedback")

    clip_model = finetune_clip(
        config=config, parent_run_id=parent, frames=extracted.outputs["frames"], feedback=fed.outputs["records"]
    )
    _settings(clip_model, "finetune_clip")
    clip_eval = evaluate_clip(
        config=config, parent_run_id=parent, frames=extracted.outputs["frames"], challenger=clip_model.outputs["model"]
    )
    _settings(clip_eval, "evaluate_clip")
    clip_gate, clip_outcome = _gate_and_deploy(
        "clip",
        config,
        parent,
        clip_eval.outputs["per_query"],
        clip_model.outputs["Output"],
        extracted.outputs["frames"],
    )

    lipsync_model = finetune_lipsync(config=config, parent_run_id=parent, faces=tracked.outputs["faces"])
    _settings(lipsync_model, "finetune_lipsync")
    lipsync_eval = evaluate_lipsync(
        config=config, parent_run_id=parent, faces=tracked.outputs["faces"], challenger=lipsync_model.outputs["model"]
    )
    _settings(lipsync_eval, "evaluate_lipsync")
    lipsync_gate, lipsync_outcome = _gate_and_deploy(
        "lipsync",
        config,
        parent,
        lipsync_eval.outputs["report"],
        lipsync_model.outputs["Output"],
        extracted.outputs["frames"],
    )

    # After evaluate_lipsync (its scores are a signal) and beside the gates: it trains nothing, so it runs in a
    # month without a challenger too (finetune then writes no_challenger and evaluate reports that).
    watched = monitor(
        config=config,
        parent_run_id=parent,
        frames=extracted.outputs["frames"],
        lipsync_evaluation=lipsync_eval.outputs["report"],
    )
    _settings(watched, "monitor")

    closed = summary(
        config=config,
        parent_run_id=parent,
        manifest=ingested.outputs["manifest"],
        frames=extracted.outputs["frames"],
        faces=tracked.outputs["faces"],
        clip_gate=clip_gate.outputs["report"],
        lipsync_gate=lipsync_gate.outputs["report"],
        clip_outcome=clip_outcome,
        lipsync_outcome=lipsync_outcome,
        monitor=watched.outputs["summary"],
    )
    _settings(closed, "summary")


def _monthly_retrain(
    client_id: str = "acme",
    config_yaml: str = "",
    as_of: str = "",
    window_days: int = 0,
) -> dsl.Markdown:
    """One client's monthly run.

    Every task runs inside a ``dsl.ExitHandler`` whose exit task, finish_run, runs whatever happens to them: it
    returns the summary (the pipeline's output), closes a failed run and gives back the client's run lease.

    Args:
        client_id: The client (overrides the config's client_id when non-empty).
        config_yaml: The client's YAML configuration (empty: embedded defaults).
        as_of: End of the retrain window, ISO date, exclusive (empty: the config's, else today UTC).
        window_days: Window length in days (0: the config's, default 30).
    """
    run_params = {"client_id": client_id, "config_yaml": config_yaml, "as_of": as_of, "window_days": window_days}
    finished = finish_run(**run_params, dag_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    _settings(finished, "finish_run")
    with dsl.ExitHandler(finished, name="monthly-retrain-tasks"):
        _tasks(run_params)
    return finished.outputs["report"]


def build_pipeline(
    gpu: "PipelineGpuConfig | None" = None, secret: str = MINIO_SECRET, secret_env: dict[str, str] | None = None
) -> dsl.graph_component.GraphComponent:
    """The monthly_retrain pipeline with its GPU tasks scheduled as ``gpu`` says.

    Args:
        gpu: The client config's ``pipeline_gpu`` section (accelerator, node selector, tolerations, retries);
            ``None`` takes its defaults.
        secret: The Secret every task reads the MinIO credentials from (a client's package: its own,
            ``clipsync-minio-<client>``).
        secret_env: Further keys of that Secret -> variables (the SSE-C key of an ``sse-c`` client).

    Returns:
        The pipeline (call it under ``kfp.local``, or compile it).
    """
    global _gpu, _secret
    from components.common.config import PipelineGpuConfig

    _gpu = gpu or PipelineGpuConfig()
    _secret = (secret, dict(secret_env or {}))
    try:
        return dsl.pipeline(
            name=PIPELINE_NAME,
            description="clipsync: ingest new client videos, adapt the CLIP search and lip-sync models, gate, deploy.",
        )(_monthly_retrain)
    finally:
        _gpu, _secret = None, (MINIO_SECRET, {})

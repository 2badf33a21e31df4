"""A fine-tune as a Kubeflow Trainer TrainJob (components/common/trainjob.py, pipelines/trainjob_entry.py).

The real Kubeflow SDK (``TrainerClient``, Kubernetes backend) talks to a Kubernetes API stand-in on loopback
(tests/trainer_standin.py) that validates every TrainJob against the Trainer CRD schema and runs its container
command, ``torchrun --nproc_per_node N -m pipelines.trainjob_entry ...``, as a subprocess on a small frames
Dataset; the task then picks up the model rank 0 wrote to the artifacts store. The embedded default
(``distributed.backend: torchrun``) runs the same command here without the SDK.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml
from crd_schemas import validate_crd
from jsonschema import ValidationError
from kube_standin import HttpStub, kubeconfig
from synthetic_frames import make_frames
from trainer_standin import StandInTrainer

from components.common.config import DistributedConfig
from components.common.errors import ConfigError
from components.common.faults import RetryPolicy, TransientError
from components.common.trainjob import TrainJobFailed, run_as_trainjob, submit_trainjob, trainer_client
from components.config import from_dict

REPO = Path(__file__).resolve().parents[1]
RUNTIME = yaml.safe_load((REPO / "manifests" / "base" / "trainingruntime-clipsync-torch.yaml").read_text())
QUICK = RetryPolicy(attempts=3, first_wait_s=0.05, max_wait_s=0.1, deadline_s=5)
KUBE = DistributedConfig(backend="kubernetes", namespace="clipsync", poll_s=1, timeout_s=300)


def _kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump(kubeconfig(url)))
    return path


@pytest.fixture()
def trainer(tmp_path, monkeypatch):
    """The stand-in, serving the rendered clipsync-torch runtime; KUBECONFIG points the SDK at it."""
    standin = StandInTrainer(tmp_path / "pods")
    (tmp_path / "pods").mkdir()
    standin.add_runtime(RUNTIME)
    with HttpStub(standin) as stub:
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", stub.url)))
        yield standin
        standin.stop_all()


def _config(tmp_path: Path, **finetune_clip):
    return from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "client_id": "acme",
            "window": {"as_of": "2026-11-01", "days": 30},
            "finetune_clip": finetune_clip,
        }
    )


def test_distributed_settings_are_validated():
    assert not DistributedConfig().requested and DistributedConfig(procs_per_node=2).requested
    assert DistributedConfig(nodes=2, backend="kubernetes").requested
    with pytest.raises(ConfigError, match=r"distributed\.backend"):
        DistributedConfig(backend="slurm")
    with pytest.raises(ConfigError, match="nodes > 1 needs backend kubernetes"):
        DistributedConfig(nodes=2)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in \[finetune_lipsync.distributed\]: gpus"):
        from_dict({"finetune_lipsync": {"distributed": {"gpus": 1}}})
    cfg = from_dict({"finetune_clip": {"distributed": {"procs_per_node": 4, "backend": "kubernetes"}}})
    assert cfg.finetune_clip.distributed == DistributedConfig(procs_per_node=4, backend="kubernetes")
    assert type(cfg).from_json(cfg.to_json()) == cfg


def test_trainjob_as_the_sdk_submits_it_matches_the_crd_schema(tmp_path, monkeypatch):
    """Two nodes x four GPUs through the real TrainerClient: the TrainJob is valid and carries our command."""
    standin = StandInTrainer(tmp_path, execute=False)
    standin.add_runtime(RUNTIME)
    dist = replace(KUBE, nodes=2, procs_per_node=4, gpus_per_node=4, image="registry.example/train:1")
    with HttpStub(standin) as stub:
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", stub.url)))
        client = trainer_client(dist)
        args = ["--stage", "finetune_clip", "--prefix", "trainjobs/finetune_clip/clip-1"]
        assert submit_trainjob(client, dist, "clip-1", args, {"clipsync.io/client": "acme"}, QUICK) == "clip-1"
        # a retried create whose first attempt had reached the server (409 AlreadyExists) counts as created
        assert submit_trainjob(client, dist, "clip-1", args, {"clipsync.io/client": "acme"}, QUICK) == "clip-1"
        assert client.get_job("clip-1").status == "Created"
    job, again = standin.created
    assert again == job and list(standin.jobs) == ["clip-1"]
    validate_crd(job)
    for path in (REPO / "manifests").rglob("*.yaml"):  # and every Trainer object of manifests/
        obj = yaml.safe_load(path.read_text())
        if obj.get("apiVersion", "").startswith("trainer.kubeflow.org/"):
            validate_crd(obj)
    assert job["spec"]["runtimeRef"] == {"kind": "TrainingRuntime", "name": "clipsync-torch"}
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "--nproc_per_node=4", "-m", "pipelines.trainjob_entry"]
    assert trainer["args"] == args and trainer["numNodes"] == 2 and trainer["image"] == "registry.example/train:1"
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}}
    assert job["spec"]["activeDeadlineSeconds"] == dist.timeout_s
    assert job["metadata"]["labels"] == {"clipsync.io/client": "acme"}
    # the schema check is not vacuous: a misspelt field is refused, by the stand-in too (HTTP 422)
    typo = json.loads(json.dumps(job))
    typo["spec"]["trainer"]["numProcsPerNode"] = 4
    with pytest.raises(ValidationError, match="numProcsPerNode"):
        validate_crd(typo)
    typo["metadata"]["name"] = "clip-2"
    code, status = standin("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/clipsync/trainjobs", typo)
    assert code == 422 and "numProcsPerNode" in status["message"] and "clip-2" not in standin.jobs


@pytest.mark.slow
def test_finetune_clip_runs_as_a_trainjob_and_the_task_picks_up_its_model(trainer, tmp_path):
    """The SDK submits, the stand-in runs torchrun -m pipelines.trainjob_entry, rank 0 registers and publishes."""
    from serving_assets import make_base

    base = make_base(tmp_path / "base")  # a 1-layer demo base CLIP at 32 px
    frames = make_frames(tmp_path / "frames", 12)
    config = _config(
        tmp_path,
        base_model=str(base),
        epochs=1,
        batch_size=4,
        frames_per_video=2,
        device="cpu",
        lora_r=4,
        lora_alpha=8,
        num_threads=1,
    )
    out = tmp_path / "model"
    report = run_as_trainjob(
        "finetune_clip", config.to_json(), {"frames": frames}, out, KUBE, config.context(), retry=QUICK
    )
    assert report["registered_version"] == "1" and report["n_train"] == 6 and report["model_dir"] == str(out)
    assert (out / "card.json").is_file() and any(out.rglob("*.safetensors"))
    assert json.loads((out / "card.json").read_text())["client_id"] == "acme"
    (job,) = trainer.created
    validate_crd(job)
    name = job["metadata"]["name"]
    assert trainer.jobs[name]["status"]["conditions"][0]["type"] == "Complete"
    assert "rank 0 published the model" in (tmp_path / "pods" / f"{name}-node-0.log").read_text()


@pytest.mark.slow
def test_a_failed_trainjob_fails_the_stage_with_its_last_log_lines(trainer, tmp_path):
    """Both stages take the TrainJob path when their config asks for two processes; both backends run it."""
    from components.finetune_clip.core import run_finetune_clip
    from components.finetune_lipsync.core import run_finetune_lipsync

    frames = make_frames(tmp_path / "frames", 4)
    config = from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "client_id": "acme",
            "finetune_clip": {"base_model": str(tmp_path / "no-such-base"), "distributed": {"procs_per_node": 2}},
            "finetune_lipsync": {"distributed": {**asdict(replace(KUBE, procs_per_node=2))}},
        }
    )
    ctx = config.context()
    # the embedded default: torchrun here, two ranks
    with pytest.raises(TrainJobFailed, match=r"(?s)exited with 1; its last log lines:.*no-such-base"):
        run_finetune_clip(frames, tmp_path / "m1", config.finetune_clip, ctx, config_json=config.to_json())
    # through the SDK: the stand-in runs the TrainJob's command; the lip-sync core finds no faces Dataset
    (tmp_path / "faces").mkdir()
    with pytest.raises(TrainJobFailed, match=r"(?s)failed; its last log lines:.*no faces index at"):
        run_finetune_lipsync(
            tmp_path / "faces", tmp_path / "m2", config.finetune_lipsync, ctx, config_json=config.to_json()
        )
    (job,) = trainer.created
    assert job["spec"]["trainer"]["command"][:2] == ["torchrun", "--nproc_per_node=2"]
    assert job["spec"]["trainer"]["args"][:2] == ["--stage", "finetune_lipsync"]


def test_a_trainjob_past_its_timeout_is_stopped(trainer, tmp_path):
    frames = make_frames(tmp_path / "frames", 4)
    config = _config(tmp_path)
    with pytest.raises(TrainJobFailed, match=r"did not finish in 3 s \(deleted\)"):
        run_as_trainjob(
            "finetune_clip",
            config.to_json(),
            {"frames": frames},
            tmp_path / "m",
            replace(KUBE, timeout_s=3),
            config.context(),
            retry=QUICK,
        )
    assert trainer.created and not trainer.jobs  # deleted, its node killed
    with pytest.raises(TrainJobFailed, match=r"did not finish in 2 s \(killed\)"):
        run_as_trainjob(
            "finetune_clip",
            config.to_json(),
            {"frames": frames},
            tmp_path / "m",
            DistributedConfig(timeout_s=2, poll_s=1),
            config.context(),
        )


def test_an_unreachable_api_is_retried_then_fails_the_stage_with_the_cause(trainer, tmp_path, monkeypatch):
    frames = make_frames(tmp_path / "frames", 4)
    config = _config(tmp_path)
    trainer.down = True  # every call answers 503
    with pytest.raises(
        TransientError, match=r"API unavailable: HTTP 503 Service Unavailable \(gave up after 3 attempts"
    ):
        run_as_trainjob(
            "finetune_clip", config.to_json(), {"frames": frames}, tmp_path / "m", KUBE, config.context(), retry=QUICK
        )
    with socket.socket() as sock:  # nothing listens there any more
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "closed", f"http://127.0.0.1:{closed}")))
    with pytest.raises(TransientError, match=r"(?s)Connection refused.*gave up after 3 attempts"):
        run_as_trainjob(
            "finetune_clip", config.to_json(), {"frames": frames}, tmp_path / "m", KUBE, config.context(), retry=QUICK
        )
    assert trainer.created == []


def test_rank_zeros_outputs_round_trip_through_the_artifacts_store(tmp_path):
    """What rank 0 publishes is what the task picks up: the model files and the report, NaN and numpy included."""
    import math

    import numpy as np

    from components.common.storage import LocalStore
    from components.common.trainjob import collect_outputs, job_prefix, publish_outputs
    from components.finetune_lipsync.core import FinetuneLipsyncReport

    store = LocalStore(tmp_path / "artifacts", create=True)
    model = tmp_path / "rank0" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "sub" / "config.json").write_text("{}")
    sent = FinetuneLipsyncReport(str(model), registered_version="3", val_metrics={"auc": np.float32(0.75)})
    publish_outputs(store, job_prefix("finetune_lipsync", "lipsync-1"), model, asdict(sent))
    got = FinetuneLipsyncReport(**collect_outputs(store, "finetune_lipsync", "lipsync-1", tmp_path / "out"))
    assert got.model_dir == str(tmp_path / "out") and got.registered_version == "3" and got.val_metrics == {"auc": 0.75}
    assert math.isnan(got.best_val_loss)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "out" / "sub" / "config.json").is_file()
    with pytest.raises(TrainJobFailed, match=r"wrote no trainjobs/finetune_lipsync/lipsync-2/outputs/report\.json"):
        collect_outputs(store, "finetune_lipsync", "lipsync-2", tmp_path / "out2")

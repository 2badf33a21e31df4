"""finetune_clip: loss, masking, strategies, adapter round trip, resume, tokenizer of the demo base CLIP."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic_frames import CATEGORIES, make_frames

torch = pytest.importorskip("torch")

from components.common.config import ConfigError  # noqa: E402
from components.finetune_clip.config import FinetuneClipConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny demo base CLIP (1 layer, width 32, 32 px), pretrained for 3 steps."""
    from components.finetune_clip.base_model import build_demo_base_clip

    out = tmp_path_factory.mktemp("base") / "base-clip"
    return build_demo_base_clip(
        out, seed=0, time_budget_s=20, max_steps=3, batch_size=8, image_size=32, patch_size=16, width=32, layers=1
    )


def _cfg(**kw) -> FinetuneClipConfig:
    base = {
        "epochs": 2,
        "batch_size": 4,
        "frames_per_video": 2,
        "lr": 5e-3,
        "warmup_ratio": 0.0,
        "early_stopping_patience": 0,
        "device": "cpu",
        "lora_r": 4,
        "lora_alpha": 8,
    }
    base.update(kw)
    return FinetuneClipConfig(**base)


def _samples(n: int, spec, seed: int, k: int = 2):
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import prepare_frames

    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    out = []
    for i in range(n):
        cat = names[i % len(names)]
        frames = rng.integers(0, 60, size=(3, 40, 40, 3)).astype(np.uint8)
        frames[:, 10:30, 10:30] = CATEGORIES[cat]
        labels = (f"{cat} video",) + (("shared label",) if i % 2 == 0 else ())
        out.append(ClipSample(f"v{seed}-{i:03d}", prepare_frames(frames, k, spec), labels, cat))
    return out


# ------------------------------------------------------------------------------------------------- loss


def test_loss_two_by_two_hand_computed():
    from components.finetune_clip.loss import contrastive_loss

    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = [[1, 0.6], [0, 0.8]] at scale 1
    v2t = (-math.log(math.e / (math.e + math.exp(0.6))) - math.log(math.exp(0.8) / (1 + math.exp(0.8)))) / 2
    t2v = (-math.log(math.e / (math.e + 1)) - math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))) / 2
    loss = contrastive_loss(v, t, torch.eye(2, dtype=torch.bool), 1.0)
    assert loss.item() == pytest.approx((v2t + t2v) / 2, rel=1e-6)
    # identity mask = CLIP's loss (cross-entropy both ways), at another scale too
    logits = 10.0 * v @ t.T
    clip = (
        torch.nn.functional.cross_entropy(logits, torch.arange(2))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    ) / 2
    assert contrastive_loss(v, t, torch.eye(2, dtype=torch.bool), 10.0).item() == pytest.approx(clip.item(), rel=1e-4)


def _reference_loss(logits: np.ndarray, pos: np.ndarray) -> float:
    """Loop version of the multi-positive loss: a positive competes with the row's negatives only."""

    def one_way(lg, p):
        rows = []
        for i in range(lg.shape[0]):
            terms = []
            for j in np.flatnonzero(p[i]):
                neg = [math.exp(lg[i, k]) for k in range(lg.shape[1]) if not p[i, k]]
                terms.append(-math.log(math.exp(lg[i, j]) / (math.exp(lg[i, j]) + sum(neg))))
            if terms:
                rows.append(sum(terms) / len(terms))
        return sum(rows) / len(rows)

    return 0.5 * (one_way(logits, pos) + one_way(logits.T, pos.T))


def test_multilabel_masking_three_by_three():
    from components.finetune_clip.loss import batch_texts, contrastive_loss, positive_mask

    labels = [("laparoscopic surgery", "shared"), ("shared",), ("forklift",)]
    texts = batch_texts(labels)
    assert texts == ["laparoscopic surgery", "shared", "forklift"]
    mask = positive_mask(labels, texts)
    assert mask.tolist() == [[True, True, False], [False, True, False], [False, False, True]]
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    loss = contrastive_loss(v, t, mask, 5.0)
    expected = _reference_loss((5.0 * v @ t.T).numpy().astype(np.float64), mask.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Video 0's two labels are never each other's negative: raising the similarity of its second positive
    # leaves the loss term of its first positive untouched, so the loss can only go down.
    logits = (5.0 * v @ t.T).detach().requires_grad_(True)
    pos = mask
    from components.finetune_clip.loss import _directional_nll

    _directional_nll(logits, pos).backward()
    assert logits.grad[0, 1] < 0 and logits.grad[0, 0] < 0  # both positives are pulled up
    assert logits.grad[0, 2] > 0  # the negative is pushed down
    # the same mask treated as single-positive CE would differ: the masking matters
    naive = torch.nn.functional.cross_entropy(5.0 * v @ t.T, torch.tensor([0, 1, 2]))
    assert not math.isclose(loss.item(), naive.item(), rel_tol=1e-3)


def test_loss_row_without_negative_is_finite():
    from components.finetune_clip.loss import contrastive_loss

    v = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1).requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    mask = torch.tensor([[True, True], [False, True]])  # video 0 carries every text of the batch
    loss = contrastive_loss(v, t, mask, 10.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all()


# ------------------------------------------------------------------------------------------- strategies


def test_config_validation():
    with pytest.raises(ConfigError, match="strategy"):
        FinetuneClipConfig(strategy="adapterfusion")
    with pytest.raises(ConfigError, match="batch_size"):
        FinetuneClipConfig(batch_size=1)
    assert FinetuneClipConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)
    d = FinetuneClipConfig()
    assert (d.strategy, d.lora_r, d.lora_alpha, d.lora_dropout, d.target_modules, d.lr) == (
        "lora",
        16,
        32,
        0.1,
        ("q_proj", "v_proj"),
        1e-3,
    )


def test_strategies_trainable_parameter_sets(tiny_base):
    from components.finetune_clip.model import apply_strategy, load_base_clip

    seen = {}
    for strategy in ("lora", "hybrid", "full"):
        bundle = load_base_clip(str(tiny_base))
        n_total_base = sum(p.numel() for p in bundle.model.parameters())
        _model, stats = apply_strategy(bundle.model, _cfg(strategy=strategy))
        seen[strategy] = stats
        names = set(stats.names)
        if strategy == "lora":
            assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
            # 1 layer x 2 towers x (q_proj, v_proj) x (A, B)
            assert len(names) == 8
            assert any("text_model" in n and "q_proj" in n for n in names)
            assert any("vision_model" in n and "v_proj" in n for n in names)
            assert not any("k_proj.lora" in n or "out_proj.lora" in n for n in names)
            assert stats.trainable == 8 * 4 * 32  # each A is 4x32, each B 32x4
            assert stats.total == n_total_base + stats.trainable
        elif strategy == "hybrid":
            assert all(n.startswith(("text_model.", "text_projection.")) for n in names)
            assert "text_projection.weight" in names and "text_model.embeddings.token_embedding.weight" in names
            assert not any(n.startswith(("vision_model.", "visual_projection.")) for n in names)
            assert "logit_scale" not in names
        else:
            assert stats.trainable == stats.total == n_total_base
            assert "logit_scale" in names and "vision_model.embeddings.patch_embedding.weight" in names
    assert seen["lora"].fraction < seen["hybrid"].fraction < seen["full"].fraction == 1.0


# ------------------------------------------------------------------------------ training and round trip


def _embeddings(bundle, samples, texts):
    from components.finetune_clip.metrics import embed_samples
    from components.finetune_clip.model import encode_texts

    with torch.no_grad():
        return (
            embed_samples(bundle, bundle.model, samples, "mean"),
            encode_texts(bundle.model, bundle.tokenizer, texts),
        )


@pytest.mark.parametrize("strategy", ["lora", "hybrid"])
def test_export_and_load_round_trip(tiny_base, tmp_path, strategy):
    from components.finetune_clip.export import export_model
    from components.finetune_clip.model import load_base_clip, load_clip_model
    from components.finetune_clip.train import train_clip

    bundle = load_base_clip(str(tiny_base))
    train = _samples(8, bundle.image_spec, seed=1)
    texts = ["surgery video", "forklift video", "shared label"]
    _base_v, base_t = _embeddings(bundle, train, texts)
    cfg = _cfg(strategy=strategy, epochs=1)
    result = train_clip(bundle, train, [], cfg, tmp_path / "work")
    trained_v, trained_t = _embeddings(bundle, train, texts)
    assert not torch.allclose(trained_t, base_t, atol=1e-4)  # training changed the model
    out = export_model(
        result.model, bundle, cfg, result.stats, tmp_path / "model", {"window": "w", "client_id": "acme"}
    )
    files = sorted(p.name for p in out.iterdir())
    if strategy == "lora":
        assert files == ["adapter_config.json", "adapter_model.safetensors", "card.json", "model_card.md"]
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_base)
    else:
        assert files == ["card.json", "model.safetensors", "model_card.md"]
        from safetensors.torch import load_file

        assert all(k.startswith(("text_model.", "text_projection.")) for k in load_file(str(out / "model.safetensors")))
    card = json.loads((out / "card.json").read_text())
    assert card["base_model"] == str(tiny_base) and card["strategy"] == strategy and card["window"] == "w"
    for merge in (False, True):
        loaded = load_clip_model(out, merge=merge)
        v, t = _embeddings(loaded, train, texts)
        assert torch.allclose(v, trained_v, atol=1e-5) and torch.allclose(t, trained_t, atol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_run(tiny_base, tmp_path):
    from safetensors.torch import load_file

    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.train import train_clip

    cfg = _cfg(epochs=3, lora_dropout=0.1)
    spec = load_base_clip(str(tiny_base)).image_spec
    train, val = _samples(10, spec, seed=2), _samples(4, spec, seed=3)

    full = train_clip(load_base_clip(str(tiny_base)), train, val, cfg, tmp_path / "a")

    class Interrupted(Exception):
        pass

    def stop_after_first(metrics, epoch):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_clip(load_base_clip(str(tiny_base)), train, val, cfg, tmp_path / "b", stop_after_first)
    state = json.loads((tmp_path / "b" / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["finished"]
    resumed = train_clip(load_base_clip(str(tiny_base)), train, val, cfg, tmp_path / "b")
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3 and full.resumed_from_epoch == 0
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in full.history], rel=1e-5)
    a = load_file(str(tmp_path / "a" / "checkpoints" / "last" / "weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "weights.safetensors"))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    opt_a = load_file(str(tmp_path / "a" / "checkpoints" / "last" / "optimizer.safetensors"))
    opt_b = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "optimizer.safetensors"))
    assert all(torch.allclose(opt_a[k], opt_b[k], atol=1e-6) for k in opt_a)
    # a finished run is not trained again; another config starts over
    again = train_clip(load_base_clip(str(tiny_base)), train, val, cfg, tmp_path / "b")
    assert again.resumed_from_epoch == 3 and len(again.history) == 3
    other = train_clip(load_base_clip(str(tiny_base)), train, val, replace(cfg, epochs=1), tmp_path / "b")
    assert other.resumed_from_epoch == 0 and other.epochs_run == 1


def test_demo_tokenizer_loads_with_full_vocabulary(tiny_base):
    from transformers import CLIPTokenizerFast

    card = json.loads((tiny_base / "base_card.json").read_text())
    tok = CLIPTokenizerFast.from_pretrained(tiny_base)
    assert len(tok) == card["vocab_size"] > 500
    ids = tok("a red circle on a blue background")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 9  # every generic word is one token
    # a client word is unknown to the base: it falls apart into sub-word pieces, never <unk>
    ids = tok("laparoscopic")["input_ids"]
    assert len(ids) > 4 and tok.eos_token_id not in ids[1:-1]


def test_demo_tokenizer_is_the_same_every_time():
    # Before, the trainer numbered word-final tokens in a hash map's order, so equal-count merges (and the base's
    # figures) changed from call to call: four calls gave four vocabularies.
    from components.finetune_clip.base_model import generic_corpus, train_tokenizer

    corpus = generic_corpus()
    vocabs = {tuple(sorted(train_tokenizer(corpus).get_vocab().items())) for _ in range(3)}
    assert len(vocabs) == 1
    vocab = dict(next(iter(vocabs)))
    assert all(ch + "</w>" in vocab for ch in "az0!") and len(vocab) > 500


def test_base_model_errors_are_clear(tmp_path):
    import subprocess
    import sys

    from components.finetune_clip.model import ModelLoadError, load_base_clip

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_base_clip(str(tmp_path / "empty"))
    # A hub id without network (offline mode, so no retries): a clear error naming the model.
    code = (
        "from components.finetune_clip.model import load_base_clip, ModelLoadError\n"
        "try:\n    load_base_clip('openai/clip-vit-base-patch32')\n"
        "except ModelLoadError as e:\n    print('ERR', e)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "ERR cannot load base CLIP 'openai/clip-vit-base-patch32'" in out.stdout


def test_stage_registers_challenger_and_evaluates(tiny_base, tmp_path):
    """run_finetune_clip + run_evaluate_clip on a small frames Dataset with MLflow on sqlite."""
    import mlflow

    from components.common import tracking
    from components.config import from_dict
    from components.evaluate.core import run_evaluate_clip
    from components.finetune_clip.core import run_finetune_clip

    frames = make_frames(tmp_path / "frames", 24, rejected=True)
    config = from_dict(
        {"state_dir": str(tmp_path / "state"), "client_id": "acme", "window": {"as_of": "2026-11-01", "days": 30}}
    )
    cfg = _cfg(base_model=str(tiny_base), epochs=2)
    report = run_finetune_clip(frames, tmp_path / "model", cfg, config.context())
    assert report.registered_version == "1" and report.n_train == 12 and report.n_val == 6
    assert [s["video_id"] for s in report.skipped] == ["f" * 16]
    assert report.skipped[0]["reason"].startswith("frames not extracted: decode_error")
    assert tracking.get_version_by_alias(config.tracking, "clip-acme", "challenger") == "1"
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["window"] == "2026-10-02..2026-11-01" and card["client_id"] == "acme"
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(report.run_id)
    assert 0 < run.data.metrics["trainable_fraction"] < 0.1
    assert len(client.get_metric_history(report.run_id, "val_loss")) == 2
    ev = run_evaluate_clip(frames, tmp_path / "model", tmp_path / "eval", cfg, config.context())
    assert ev.baseline_kind == "base" and ev.n_test_videos == 6
    assert ev.challenger.queries == ev.baseline.queries == sorted(f"{c} video" for c in CATEGORIES)
    assert (tmp_path / "eval" / "clip_report.html").is_file()
    # next month: version 1 is champion; the challenger is compared against it (same weights: same figures)
    client.set_registered_model_alias("clip-acme", "champion", "1")
    ev2 = run_evaluate_clip(frames, tmp_path / "model", tmp_path / "eval2", cfg, config.context())
    assert ev2.baseline_kind == "champion v1"
    assert ev2.baseline.rank.tolist() == ev2.challenger.rank.tolist() == ev.challenger.rank.tolist()
    # The same window again (v1 is not warm-started from within its own window): v1 had these inputs already.
    again = run_finetune_clip(frames, tmp_path / "again", cfg, config.context())
    assert again.registered_version is None and again.epochs_run == 0
    assert again.not_trained_reason == "identical to v1: nothing new to train"
    assert (tmp_path / "again" / "no_challenger.json").is_file()
    # Different settings are a new training.
    new = run_finetune_clip(frames, tmp_path / "new", _cfg(base_model=str(tiny_base), epochs=1), config.context())
    assert new.registered_version == "2" and not new.not_trained_reason


def test_base_model_from_s3_folder(tiny_base, tmp_path, monkeypatch):
    """An s3:// base folder (moto's S3 server on loopback) loads the same weights as the local folder."""
    import socket

    moto_server = pytest.importorskip("moto.server")
    from minio import Minio

    from components.finetune_clip.model import encode_texts, load_base_clip

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {
            "MINIO_ENDPOINT": f"http://127.0.0.1:{port}",
            "MINIO_ACCESS_KEY": "test",
            "MINIO_SECRET_KEY": "testsecret",
            "MINIO_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        client = Minio(
            f"127.0.0.1:{port}", access_key="test", secret_key="testsecret", secure=False, region="us-east-1"
        )
        client.make_bucket("models")
        for f in tiny_base.iterdir():
            client.fput_object("models", f"clip/base/{f.name}", str(f))
        remote = load_base_clip("s3://models/clip/base", cache_dir=tmp_path / "cache")
    finally:
        server.stop()
    local = load_base_clip(str(tiny_base))
    assert (tmp_path / "cache" / "base-models" / "models__clip__base" / "config.json").is_file()
    assert remote.image_spec == local.image_spec and len(remote.tokenizer) == len(local.tokenizer)
    with torch.no_grad():
        a = encode_texts(remote.model, remote.tokenizer, ["a red circle"])
        b = encode_texts(local.model, local.tokenizer, ["a red circle"])
    assert torch.equal(a, b)


def test_grad_accumulation_steps_and_bf16_autocast(tiny_base, tmp_path):
    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.train import train_clip

    bundle = load_base_clip(str(tiny_base))
    train = _samples(10, bundle.image_spec, seed=4)  # batches of 4, 4, 2 -> one optimizer step per epoch
    cfg = _cfg(epochs=2, grad_accum=3, precision="bf16", warmup_ratio=0.5)
    result = train_clip(bundle, train, [], cfg, tmp_path / "w")
    state = json.loads((tmp_path / "w" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 2 and result.precision == "bf16" and result.epochs_run == 2
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    # warm-up of 1 step (0.5 x 2), then cosine: the lr after the last step has decayed to 0
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RuntimeError, match="fp16 needs CUDA"):
        train_clip(load_base_clip(str(tiny_base)), train, [], _cfg(precision="fp16"), tmp_path / "x")


def test_a_window_too_small_to_train_leaves_no_challenger_and_the_gate_keeps(tiny_base, tmp_path):
    """One training video: nothing is registered, the artifact and the stage run say why, the gate keeps."""
    import mlflow

    from components.ab_gate.core import run_ab_gate
    from components.common import tracking
    from components.common.no_challenger import pass_on_no_challenger
    from components.config import from_dict
    from components.finetune_clip.core import run_finetune_clip

    frames = make_frames(tmp_path / "frames", 1, rejected=True)
    config = from_dict(
        {"state_dir": str(tmp_path / "state"), "client_id": "acme", "window": {"as_of": "2026-11-01", "days": 30}}
    )
    report = run_finetune_clip(frames, tmp_path / "model", _cfg(base_model=str(tiny_base)), config.context())
    assert report.registered_version is None
    assert report.not_trained_reason == "need at least 2 labelled training videos, got 1"
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["no_challenger.json"]
    assert tracking.get_version_by_alias(config.tracking, "clip-acme", "challenger") is None
    run = mlflow.MlflowClient(config.tracking.tracking_uri).get_run(report.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["clipsync.no_challenger"] == report.not_trained_reason

    assert pass_on_no_challenger(tmp_path / "model", tmp_path / "eval") == report.not_trained_reason
    gate_md = tmp_path / "gate.md"
    decision = run_ab_gate("clip", tmp_path / "eval", "", gate_md, config.ab_gate, config.context(track=False))
    assert not decision.promote
    assert decision.reasons == [f"not evaluable, champion kept: no challenger this month: {report.not_trained_reason}"]
    assert decision.to_markdown().startswith("### ab_gate clip: **KEEP** no challenger\n")


def test_hub_layout_base_clip_runs_through_finetune_and_evaluate(tmp_path):
    """A production base CLIP from a local folder in the `openai/clip-vit-base-patch32` hub layout."""
    from hub_clip import HUB_FILES, write_hub_clip

    from components.config import from_dict
    from components.evaluate.clip_eval import evaluate_clip
    from components.finetune_clip.core import run_finetune_clip
    from components.finetune_clip.model import encode_texts, load_base_clip, load_clip_model

    base = write_hub_clip(tmp_path / "clip-vit-base-patch32", [f"{c} video" for c in CATEGORIES] * 3)
    assert {p.name for p in base.iterdir()} == HUB_FILES
    bundle = load_base_clip(str(base))
    tok = bundle.tokenizer
    assert len(tok) == len(json.loads((base / "vocab.json").read_text())) > 300  # not a 2-token vocabulary
    assert bundle.image_spec.size == 32
    ids = tok(["surgery video", "a"], padding=True, return_tensors="pt")
    assert ids["input_ids"][:, 0].tolist() == [tok.bos_token_id] * 2 and tok.eos_token_id == len(tok) - 1
    # The hub config keeps eos_token_id 2: the text tower pools at the highest id, which must be <|endoftext|>.
    with torch.no_grad():
        out = bundle.model.text_model(**ids)
    eos_at = (ids["input_ids"] == tok.eos_token_id).int().argmax(dim=-1)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), eos_at])

    frames = make_frames(tmp_path / "frames", 16)
    config = from_dict(
        {
            "state_dir": str(tmp_path / "state"),
            "client_id": "hub",
            "window": {"as_of": "2026-11-01", "days": 30},
            "finetune_clip": {"base_model": str(base)},
        }
    )
    cfg = _cfg(base_model=str(base), epochs=2)
    # MLflow left out (the other stage tests cover it): the stage code the DAG runs, on this base.
    report = run_finetune_clip(frames, tmp_path / "model", cfg, config.context(track=False))
    assert report.base_model == str(base) and report.n_train == 8 and report.epochs_run == 2
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["base_model"] == card["tokenizer"] == str(base) and card["image_spec"]["size"] == 32
    ev = evaluate_clip(tmp_path / "model", str(base), frames, tmp_path / "eval", "base", relevance="category")
    assert ev.baseline_kind == "base" and ev.n_test_videos == 4 and len(ev.challenger.queries) == 3
    tuned = load_clip_model(tmp_path / "model")
    with torch.no_grad():
        before = encode_texts(bundle.model, tok, ["surgery video"])
        after = encode_texts(tuned.model, tuned.tokenizer, ["surgery video"])
    assert after.shape == before.shape == (1, 32) and not torch.allclose(after, before)

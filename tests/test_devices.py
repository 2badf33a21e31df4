"""GPU paths without a GPU: device placement on the ``meta`` device, half precision on the CPU.

Mixing a CPU tensor into an op on ``meta`` tensors raises the same error as mixing it into a CUDA op
("Tensor on device cpu is not on the expected device meta!"), and a value out of float16's range fails on the
CPU as on CUDA. Where the code finally copies a result to the host, a meta tensor raises "Cannot copy out of
meta tensor": reaching that error means every op before it ran on the model's device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from synthetic_frames import CATEGORIES

torch = pytest.importorskip("torch")

from components.common.config import ConfigError  # noqa: E402
from components.finetune_clip.config import FinetuneClipConfig  # noqa: E402
from components.finetune_lipsync.config import FinetuneLipsyncConfig  # noqa: E402

META = torch.device("meta")
HOST_COPY = "Cannot copy out of meta tensor"
LIPSYNC_TINY = {"crop_size": 16, "visual_channels": 4, "audio_channels": 8, "embed_dim": 8, "attention_heads": 2}
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from serving_assets import make_base

    return make_base(tmp_path_factory.mktemp("base") / "base-clip")


def _samples(n: int, spec, seed: int = 0):
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import prepare_frames

    rng = np.random.default_rng(seed)
    out = []
    for i, (cat, colour) in enumerate(list(CATEGORIES.items()) * n):
        if i == n:
            break
        frames = rng.integers(0, 60, size=(3, 40, 40, 3)).astype(np.uint8)
        frames[:, 10:30, 10:30] = colour
        out.append(ClipSample(f"v{i:03d}", prepare_frames(frames, 2, spec), (f"{cat} video",), cat))
    return out


def _all_on(module, device: torch.device) -> bool:
    return all(t.device == device for t in [*module.parameters(), *module.buffers()])


# ------------------------------------------------------------------------------------------ CLIP on meta


@pytest.mark.parametrize("strategy", ["lora", "hybrid"])
def test_clip_training_step_on_meta(tiny_base, strategy):
    """The step train_clip runs (encode, loss, backward, clipping, AdamW) with the model on meta: nothing on the CPU."""
    from components.finetune_clip.metrics import embed_samples
    from components.finetune_clip.model import apply_strategy, load_base_clip
    from components.finetune_clip.train import _batch_loss

    bundle = load_base_clip(str(tiny_base))
    cfg = FinetuneClipConfig(strategy=strategy, lora_r=4, lora_alpha=8, batch_size=4, frames_per_video=2)
    samples = _samples(4, bundle.image_spec)  # CPU uint8 frames, as load_frame_samples gives them
    model, _ = apply_strategy(bundle.model, cfg)
    model.to(META).train()
    video_emb = None
    if strategy == "hybrid":  # the frozen tower's embeddings, computed once per run
        video_emb = embed_samples(bundle, model, samples, cfg.pooling)
        assert video_emb.device == META and video_emb.shape[0] == 4
    loss = _batch_loss(model, bundle, samples, cfg, video_emb)
    assert loss.device == META and loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and p.grad.device == META for p in params)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.optim.AdamW(params, lr=1e-3).step()


def test_text_embeddings_do_not_depend_on_padding(tiny_base):
    """encode_texts passes no attention mask (it would cost a host sync): right padding must change nothing."""
    from components.finetune_clip.model import encode_texts, load_base_clip

    bundle = load_base_clip(str(tiny_base))
    texts = ["a red circle", "a small green square on a big blue background with a yellow line"]
    with torch.no_grad():
        batch = encode_texts(bundle.model, bundle.tokenizer, texts)
        single = torch.cat([encode_texts(bundle.model, bundle.tokenizer, [t]) for t in texts])
    assert bundle.tokenizer.padding_side == "right"
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=1e-5)


def test_clip_evaluation_pass_on_meta(tiny_base):
    from components.evaluate.clip_eval import score_model
    from components.finetune_clip.metrics import query_video_similarity, retrieval_problem
    from components.finetune_clip.model import load_base_clip

    bundle = load_base_clip(str(tiny_base))
    samples = _samples(5, bundle.image_spec)
    queries, _, _ = retrieval_problem(samples)
    model = bundle.model.to(META).eval()
    sim = query_video_similarity(bundle, model, samples, queries, "mean", batch_size=2)
    assert sim.device == META and sim.shape == (len(queries), 5) and sim.dtype == torch.float32
    # The stage's entry point moves the model to the configured device and fails only at the final host copy.
    with pytest.raises(NotImplementedError, match=HOST_COPY):
        score_model(bundle, samples, "mean", device="meta")


def test_clip_predictor_call_on_meta(tiny_base, tmp_path):
    """ClipBackbones puts base and adapters on its device; a search then runs there up to the host copy."""
    from serving_assets import make_adapter

    from serving.clip_search import ClipBackbones, ClipSearchModel

    acme = make_adapter(tiny_base, tmp_path / "acme", seed=1)
    beta = make_adapter(tiny_base, tmp_path / "beta", seed=2)
    backbones = ClipBackbones(device="meta")
    predictor = ClipSearchModel("clip-acme", acme, backbones=backbones)
    assert predictor.load()
    handle = backbones.attach("clip-beta", beta)  # a second adapter on the shared base
    model = handle.backbone.bundle.model
    assert _all_on(model, META)
    assert {n.split(".lora_A.")[1].split(".")[0] for n, _ in model.named_parameters() if ".lora_A." in n} == {
        a for adapters in backbones.shared_bases().values() for a in adapters
    }
    with pytest.raises(NotImplementedError, match=HOST_COPY):
        predictor.search_sync(["surgery video"], 2)
    frames = np.zeros((3, 40, 40, 3), np.uint8)
    with pytest.raises(NotImplementedError, match=HOST_COPY):
        handle.encode_frames([frames])
    # The predictor's own backbones follow serving.device.
    from serving.config import ServingConfig

    assert ClipSearchModel("clip-x", acme, ServingConfig(device="cpu")).backbones.device == torch.device("cpu")


# --------------------------------------------------------------------------------------- lip-sync on meta


def _lipsync_model(**changes):
    from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig

    torch.manual_seed(0)
    return LipSyncDetector(LipSyncModelConfig(**{**LIPSYNC_TINY, **changes}))


@pytest.mark.parametrize(("fusion", "sync_lags"), [("concat", 0), ("cross_attention", 0), ("concat", 3)])
def test_lipsync_training_step_on_meta(fusion, sync_lags):
    from components.finetune_lipsync.augment import augment_video
    from components.finetune_lipsync.config import AugmentConfig
    from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig
    from components.finetune_lipsync.synthetic import synthetic_video
    from components.finetune_lipsync.train import _window_loss

    config = LipSyncModelConfig(**{**LIPSYNC_TINY, "fusion": fusion, "sync_lags": sync_lags})
    model = LipSyncDetector(config).to(META).train()
    crops, audio = synthetic_video(True, 0, duration_s=1.0, size=24)  # 24 px crops: resized inside the model
    video, sound = torch.from_numpy(np.stack([crops, crops])), torch.from_numpy(np.stack([audio, audio]))
    # As in train_lipsync: the uint8 batch goes to the device, is augmented there (CPU generator), then the loss.
    video = augment_video(video.to(META), AugmentConfig(), torch.Generator().manual_seed(0))
    assert video.device == META
    loss = _window_loss(model, video, sound, torch.tensor([1.0, 0.0]), torch.tensor(2.0), None)
    assert loss.device == META and loss.dim() == 0
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()


def test_lipsync_evaluation_pass_on_meta(tmp_path):
    from components.evaluate.lipsync_eval import evaluate_model
    from components.finetune_lipsync.data import LipsyncVideo
    from components.finetune_lipsync.model import save_model
    from components.finetune_lipsync.synthetic import synthetic_video

    model_dir = save_model(_lipsync_model(), tmp_path / "m")
    videos = []
    for i in range(2):
        crops, audio = synthetic_video(i == 1, i, duration_s=1.0, size=24)
        videos.append(LipsyncVideo(f"v{i}", crops, audio, 25.0, i))
    # evaluate loads the model on the configured device and scores there until the first host copy.
    with pytest.raises(NotImplementedError, match=HOST_COPY):
        evaluate_model(model_dir, videos, videos, "meta", None)


def test_lipsync_predictor_call_on_meta(model_cache, tmp_path):
    pytest.importorskip("av")
    from serving_assets import make_face_video, make_lipsync

    from serving.config import ServingConfig
    from serving.lipsync import LipSyncModel

    model_dir = make_lipsync(tmp_path / "lipsync")
    predictor = LipSyncModel("lipsync-acme", model_dir, cache_dir=model_cache, device="meta")
    assert predictor.load() and _all_on(predictor.model, META)
    with pytest.raises(NotImplementedError, match=HOST_COPY):
        predictor.analyze_file(make_face_video(tmp_path / "v.mp4", seconds=1.0))
    predictor.stop()
    assert LipSyncModel("x", model_dir, ServingConfig(device="cpu")).device == "cpu"


# ------------------------------------------------------------------------------- half precision on the CPU


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_contrastive_loss_in_half_precision(dtype):
    from components.finetune_clip.loss import _directional_nll, contrastive_loss

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    mask = torch.tensor([[True, True, True], [False, True, False], [False, False, True], [True, False, False]])
    reference = contrastive_loss(v, t, mask, 20.0)
    # Half inputs: the loss is float32 and agrees with the float32 loss to the inputs' rounding.
    half = contrastive_loss(v.to(dtype), t.to(dtype), mask, 20.0)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(reference.item(), abs=0.05)
    # The fill of a row without negatives (row 0) fits the dtype: no "cannot be converted without overflow".
    logits = (20.0 * v @ t.T).to(dtype).requires_grad_(True)
    nll = _directional_nll(logits, mask)
    nll.backward()
    assert torch.isfinite(nll) and torch.isfinite(logits.grad).all()
    # Under autocast (what precision bf16/fp16 runs), embeddings from a Linear come out in half precision.
    layer = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=dtype):
        ve = torch.nn.functional.normalize(layer(v), dim=-1)
        te = torch.nn.functional.normalize(layer(t), dim=-1)
        assert ve.dtype == dtype
        loss = contrastive_loss(ve, te, mask, torch.tensor(100.0))
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clip_batch_loss_under_cpu_autocast(tiny_base, dtype):
    from components.finetune_clip.model import apply_strategy, load_base_clip
    from components.finetune_clip.train import _batch_loss

    bundle = load_base_clip(str(tiny_base))
    cfg = FinetuneClipConfig(lora_r=4, lora_alpha=8, batch_size=4, frames_per_video=2)
    model, _ = apply_strategy(bundle.model, cfg)
    with torch.autocast("cpu", dtype=dtype):
        loss = _batch_loss(model, bundle, _samples(4, bundle.image_spec), cfg)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("sync_lags", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lipsync_window_loss_under_cpu_autocast(dtype, sync_lags):
    from components.finetune_lipsync.synthetic import synthetic_video
    from components.finetune_lipsync.train import _window_loss

    model = _lipsync_model(sync_lags=sync_lags).train()
    crops, audio = synthetic_video(True, 0, duration_s=1.0, size=16)
    video, sound = torch.from_numpy(np.stack([crops, crops])), torch.from_numpy(np.stack([audio, audio]))
    loss = _window_loss(model, video, sound, torch.tensor([1.0, 0.0]), torch.tensor(2.0), dtype)
    loss.backward()
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------- device settings


def test_device_settings_are_validated_everywhere():
    from components.common.device import resolve_device
    from serving.config import ServingConfig

    for cls, section in ((FinetuneClipConfig, "finetune_clip"), (FinetuneLipsyncConfig, "finetune_lipsync")):
        assert cls(device="cuda:1").device == "cuda:1"
        for bad in ("gpu", "cuda:x", "mps"):
            with pytest.raises(ConfigError, match=f"{section}: device"):
                cls(device=bad)
    assert ServingConfig().device == "auto" and ServingConfig(device="cuda").device == "cuda"
    with pytest.raises(ConfigError, match="serving: device"):
        ServingConfig(device="tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_one_precision_vocabulary_for_both_fine_tunes():
    from components.common.device import Runtime, cpu_has_native_bf16, resolve_precision, resolve_runtime
    from components.config import from_dict

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None and resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(RuntimeError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
    runtime = resolve_runtime("cpu", "bf16")
    assert runtime == Runtime(cpu, torch.bfloat16) and runtime.precision == "bf16"
    assert not runtime.grad_scaler().is_enabled()  # the scaler is for fp16 on CUDA only
    with runtime.autocast():
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    for cls, section in ((FinetuneClipConfig, "finetune_clip"), (FinetuneLipsyncConfig, "finetune_lipsync")):
        assert cls(precision="fp32").precision == "fp32"
        with pytest.raises(ConfigError, match=f"{section}: precision must be one of"):
            cls(precision="no")
    with pytest.raises(ConfigError, match=r"finetune_clip\.mixed_precision has moved: use finetune_clip\.precision"):
        from_dict({"finetune_clip": {"mixed_precision": "no"}})


def test_stages_take_the_configured_device(tiny_base, tmp_path):
    """Both fine-tune stages pass ``device`` through: on a machine without CUDA, ``cuda`` fails loudly."""
    from synthetic_frames import make_frames

    from components.config import from_dict
    from components.finetune_clip.core import run_finetune_clip
    from components.finetune_lipsync.synthetic import synthetic_video
    from components.finetune_lipsync.train import train_lipsync

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = from_dict({"state_dir": str(tmp_path / "state"), "window": {"as_of": "2026-11-01"}})
    frames = make_frames(tmp_path / "frames", 8)
    clip_cfg = FinetuneClipConfig(base_model=str(tiny_base), device="cuda", epochs=1, batch_size=2)
    with pytest.raises(RuntimeError, match="'cuda' requested but CUDA is not available"):
        run_finetune_clip(frames, tmp_path / "model", clip_cfg, config.context(track=False))
    from components.finetune_lipsync.data import LipsyncVideo

    videos = [
        LipsyncVideo(f"v{i}", *synthetic_video(i % 2 == 1, i, duration_s=1.0, size=16), 25.0, i % 2) for i in range(4)
    ]
    lip_cfg = FinetuneLipsyncConfig(model=LIPSYNC_TINY, device="cuda", epochs=1, freeze_epochs=0, pretrained="")
    with pytest.raises(RuntimeError, match="'cuda' requested but CUDA is not available"):
        train_lipsync(videos[:2], videos[2:], lip_cfg, tmp_path / "lip")
    card = json.dumps(clip_cfg.training_fingerprint())
    assert "device" not in card  # the device is not part of what a checkpoint must match

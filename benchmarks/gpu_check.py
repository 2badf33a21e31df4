"""GPU check: the CUDA paths of both fine-tune stages and both predictors, in one command.

For a person with a GPU. It needs only torch, transformers, peft, safetensors, tokenizers, numpy and
scikit-learn (what a bare GPU box has; no av, mlflow, kfp, kserve, faiss, mediapipe or minio is imported), and
this repository on ``PYTHONPATH``. Nothing is downloaded: the CLIP is ``CLIPModel(CLIPConfig())`` (the
``openai/clip-vit-base-patch32`` architecture, random weights) with a small tokenizer trained here, the videos
are synthetic.

1. finetune_clip: each strategy (lora, hybrid, full) in each precision (bf16, fp16) trains ``--epochs`` epochs
   with ``train_clip``, interrupted after epoch 1 and resumed from its checkpoint (so every combination also
   checks the resume); epoch time (the last epoch, after the resume) and peak GPU memory
   (``torch.cuda.max_memory_allocated``).
2. finetune_lipsync: ``train_lipsync`` on synthetic talking mouths in bf16 and fp16, interrupted and resumed
   the same way; validation AUC.
3. The predictors' model code on the device: the trained LoRA adapter through ``ClipBackbones`` (or, without
   kserve, the same loading and encoding functions it calls) and the lip-sync model through ``load_model`` +
   ``predict_video``; their outputs are compared with the same model on the CPU. Video decoding and face
   tracking (av, MediaPipe) run on the CPU in serving and are not part of this check.
4. The ratios LoRA / full and hybrid / full of epoch time and peak memory.

Run (on the GPU machine): ``PYTHONPATH=. python benchmarks/gpu_check.py``
A CPU smoke run (what the test suite runs): ``python benchmarks/gpu_check.py --device cpu --tiny --precisions bf16``
Exit status 1 when a check fails (each failure is printed; the other checks still run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ("red circle", "blue square", "green triangle", "yellow star")  # words the generic tokenizer knows
STRATEGIES = ("lora", "hybrid", "full")


class Interrupted(Exception):
    """Raised after the first epoch to stop a run the way a preempted pod stops."""


def _stop_after(first_epoch: int):
    """A ``log_fn`` that stops training after its first epoch (train_clip counts epochs from 1, lipsync from 0)."""

    def log_fn(metrics: dict, epoch: int) -> None:
        if epoch == first_epoch:
            raise Interrupted

    return log_fn


def build_base(folder: Path, tiny: bool) -> Path:
    """Save a randomly initialized CLIP (ViT-B/32, or a 1-layer one with ``tiny``) with a generic tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from components.finetune_clip.base_model import _demo_clip_config, generic_corpus, save_base_clip, train_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tokenizer(generic_corpus())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if tiny:
        config = _demo_clip_config(len(tokenizer), 32, 16, 32, 1, ids["eos_token_id"], ids["bos_token_id"])
    else:
        config = CLIPConfig(text_config={**ids, "pad_token_id": ids["eos_token_id"]})
    return save_base_clip(CLIPModel(config), tokenizer, folder)


def clip_samples(n: int, frames: int, side: int, seed: int) -> list:
    """``n`` synthetic labelled videos of ``frames`` frames at ``side`` px (a coloured square per label)."""
    from components.finetune_clip.core import ClipSample
    from components.finetune_clip.model import ImageSpec, prepare_frames

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        video = rng.integers(0, 60, size=(frames, side, side, 3)).astype(np.uint8)
        video[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 50 + 50 * (i % len(LABELS))
        out.append(ClipSample(f"s{seed}-{i:03d}", prepare_frames(video, frames, ImageSpec(side)), (label,), label))
    return out


def _peak_mib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def _reset_peak(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_clip(base: Path, strategy: str, precision: str, args, work: Path) -> dict:
    """Train 1 epoch, stop, resume to ``args.epochs``; returns times, peak memory and the resumed result."""
    from transformers import CLIPConfig

    from components.common.device import resolve_device
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.core import train_clip
    from components.finetune_clip.model import load_base_clip

    device = resolve_device(args.device)
    side = CLIPConfig.from_pretrained(base).vision_config.image_size
    train = clip_samples(args.videos, args.frames, side, seed=1)
    val = clip_samples(max(2, args.videos // 4), args.frames, side, seed=2)
    cfg = FinetuneClipConfig(
        base_model=str(base),
        strategy=strategy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        frames_per_video=args.frames,
        lr=1e-4,
        early_stopping_patience=0,
        mixed_precision=precision,
        device=args.device,
    )
    _reset_peak(device)
    started = time.monotonic()
    with contextlib.suppress(Interrupted):
        train_clip(load_base_clip(str(base)), train, val, cfg, work, _stop_after(1))
    bundle = load_base_clip(str(base))
    resumed = train_clip(bundle, train, val, cfg, work)
    seconds = time.monotonic() - started
    losses = [h["train_loss"] for h in resumed.history] + [h["val_loss"] for h in resumed.history]
    if resumed.resumed_from_epoch != 1 or resumed.epochs_run != args.epochs:
        raise AssertionError(f"resumed from {resumed.resumed_from_epoch}, ran {resumed.epochs_run} epochs")
    if not all(np.isfinite(losses)):
        raise AssertionError(f"non-finite losses {losses}")
    if {p.device.type for p in resumed.model.parameters()} != {device.type}:
        raise AssertionError("the trained model is not on the device")
    return {
        "epoch_seconds": [round(h["epoch_seconds"], 3) for h in resumed.history],
        "total_seconds": round(seconds, 2),
        "peak_mib": round(_peak_mib(device), 1),
        "val_loss": round(resumed.best_val_loss, 4),
        "trainable": resumed.stats.trainable,
        "result": resumed,
        "bundle": bundle,
        "cfg": cfg,
    }


def check_clip_predictor(model_dir: Path, args) -> dict:
    """The clip-search predictor's model path on the device vs the same model on the CPU."""
    import torch

    from components.common.device import resolve_device

    texts = [f"a {label}" for label in LABELS]
    frames = np.random.default_rng(0).integers(0, 255, size=(args.frames, 64, 64, 3)).astype(np.uint8)

    def encode(device: str):
        try:
            from serving.clip_search import ClipBackbones
        except ImportError:  # no kserve here: the loading and encoding ClipBackbones does, without the server
            from components.finetune_clip.model import encode_texts, encode_videos, load_clip_model, prepare_frames

            bundle = load_clip_model(model_dir, merge=False)
            model = bundle.model.to(resolve_device(device)).eval()
            with torch.inference_mode():
                text = encode_texts(model, bundle.tokenizer, texts).cpu().numpy()
                prepared = prepare_frames(frames, args.frames, bundle.image_spec)[None]
                video = encode_videos(model, prepared, bundle.image_spec).cpu().numpy()
            return text, video, model, "components.finetune_clip.model (kserve not installed)"
        handle = ClipBackbones(device=device).attach("clip-check", model_dir)
        model = handle.backbone.bundle.model
        return handle.encode_texts(texts), handle.encode_frames([frames]), model, "serving.clip_search.ClipBackbones"

    text, video, model, path = encode(args.device)
    devices = {p.device.type for p in model.parameters()}
    if devices != {resolve_device(args.device).type}:
        raise AssertionError(f"predictor parameters on {devices}")
    text_cpu, video_cpu, _, _ = encode("cpu")
    diff = max(float(np.abs(text - text_cpu).max()), float(np.abs(video - video_cpu).max()))
    if diff > 2e-3:
        raise AssertionError(f"embeddings on {args.device} differ from the CPU's by {diff:.2e}")
    return {"path": path, "max_abs_diff_vs_cpu": diff, "text_shape": list(text.shape)}


def lipsync_videos(n: int, size: int, duration_s: float) -> list:
    from components.finetune_lipsync.core import LipsyncVideo
    from components.finetune_lipsync.synthetic import synthetic_video

    return [
        LipsyncVideo(f"v{i:03d}", *synthetic_video(i % 2 == 1, i, duration_s=duration_s, size=size), 25.0, i % 2)
        for i in range(n)
    ]


def check_lipsync(precision: str, args, work: Path) -> dict:
    from components.common.device import resolve_device
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.core import split_by_video, train_lipsync

    device = resolve_device(args.device)
    size = 16 if args.tiny else 96
    tiny = {"crop_size": 16, "visual_channels": 4, "audio_channels": 8, "embed_dim": 8, "attention_heads": 2}
    cfg = FinetuneLipsyncConfig(
        **(tiny if args.tiny else {}),
        epochs=args.lipsync_epochs,
        freeze_epochs=0,
        pretrained="",
        precision=precision,
        device=args.device,
    )
    train, val = split_by_video(lipsync_videos(args.lipsync_videos, size, 1.5 if args.tiny else 3.0), 0.2, 0)
    _reset_peak(device)
    started = time.monotonic()
    with contextlib.suppress(Interrupted):
        train_lipsync(train, val, cfg, work / "model", _stop_after(0), work_dir=work)
    result = train_lipsync(train, val, cfg, work / "model", work_dir=work)
    if result.resumed_from_epoch != 1 or len(result.history) != cfg.epochs:
        raise AssertionError(f"resumed from {result.resumed_from_epoch}, {len(result.history)} epochs")
    if not all(np.isfinite([h["train_loss"] for h in result.history])):
        raise AssertionError("non-finite training loss")
    return {
        "seconds": round(time.monotonic() - started, 2),
        "val_auc": result.val_metrics.get("roc_auc"),
        "peak_mib": round(_peak_mib(device), 1),
        "model_dir": result.model_dir,
        "val": val,
    }


def check_lipsync_predictor(model_dir: Path, videos: list, args) -> dict:
    """The lipsync predictor's model path (``load_model`` on the device + ``predict_video``) vs the CPU."""
    from components.common.device import resolve_device
    from components.finetune_lipsync.model import load_model, predict_video

    model = load_model(model_dir, resolve_device(args.device))
    devices = {p.device.type for p in model.parameters()}
    if devices != {resolve_device(args.device).type}:
        raise AssertionError(f"lip-sync model parameters on {devices}")
    on_device = [predict_video(model, v.crops, v.audio, v.fps).probability for v in videos]
    on_cpu = [predict_video(load_model(model_dir), v.crops, v.audio, v.fps).probability for v in videos]
    diff = float(np.abs(np.array(on_device) - np.array(on_cpu)).max())
    if diff > 1e-3:
        raise AssertionError(f"probabilities on {args.device} differ from the CPU's by {diff:.2e}")
    return {"videos": len(videos), "max_abs_diff_vs_cpu": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a smoke run)")
    parser.add_argument("--precisions", default="bf16,fp16", help="comma-separated: bf16, fp16 (fp16 needs CUDA)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--tiny", action="store_true", help="a 1-layer CLIP at 32 px and a tiny lip-sync model")
    parser.add_argument("--videos", type=int, default=96, help="CLIP training videos")
    parser.add_argument("--frames", type=int, default=8, help="frames per CLIP video")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lipsync-videos", type=int, default=36)
    parser.add_argument("--lipsync-epochs", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")

    import torch

    from components.finetune_clip.core import export_model

    precisions = [p for p in args.precisions.split(",") if p]
    if not args.device.startswith("cuda") and "fp16" in precisions:
        print("fp16 needs CUDA (a GradScaler on the GPU): skipped on", args.device)
        precisions.remove("fp16")
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "none"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {args.device} ({gpu})")
    figures: dict = {"device": args.device, "gpu": gpu, "clip": {}, "lipsync": {}}
    failures: list[str] = []

    def attempt(name: str, fn):
        try:
            return fn()
        except Exception as exc:  # report every failing check, not only the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAILED {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None

    with tempfile.TemporaryDirectory(prefix="clipsync-gpu-check-") as tmp:
        tmp_dir = Path(tmp)
        base = build_base(tmp_dir / "base", args.tiny)
        adapter_dir = None
        for precision in precisions:
            for strategy in args.strategies.split(","):
                name = f"finetune_clip {strategy} {precision}"
                out = attempt(name, lambda s=strategy, p=precision: check_clip(base, s, p, args, tmp_dir / f"{s}-{p}"))
                if out is None:
                    continue
                if strategy == "lora" and adapter_dir is None:
                    adapter_dir = tmp_dir / "clip-adapter"
                    res = out["result"]
                    export_model(res.model, out["bundle"], out["cfg"], res.stats, adapter_dir, {})
                figures["clip"][f"{strategy}/{precision}"] = {
                    k: v for k, v in out.items() if k not in ("result", "bundle", "cfg")
                }
                print(f"ok {name}: {json.dumps(figures['clip'][f'{strategy}/{precision}'])}")
                del out
        if adapter_dir is not None:
            served = attempt("clip-search predictor", lambda: check_clip_predictor(adapter_dir, args))
            if served is not None:
                figures["clip_predictor"] = served
                print(f"ok clip-search predictor: {json.dumps(served)}")
        lipsync_model = None
        for precision in precisions:
            name = f"finetune_lipsync {precision}"
            out = attempt(name, lambda p=precision: check_lipsync(p, args, tmp_dir / f"lipsync-{p}"))
            if out is None:
                continue
            lipsync_model = lipsync_model or (out["model_dir"], out["val"])
            figures["lipsync"][precision] = {k: v for k, v in out.items() if k not in ("model_dir", "val")}
            print(f"ok {name}: {json.dumps(figures['lipsync'][precision])}")
        if lipsync_model is not None:
            served = attempt("lipsync predictor", lambda: check_lipsync_predictor(*lipsync_model, args))
            if served is not None:
                figures["lipsync_predictor"] = served
                print(f"ok lipsync predictor: {json.dumps(served)}")

    print("\nratios (last epoch, after the resume; peak memory over the run):")
    for precision in precisions:
        full = figures["clip"].get(f"full/{precision}")
        for strategy in ("lora", "hybrid"):
            other = figures["clip"].get(f"{strategy}/{precision}")
            if full and other:
                time_ratio = other["epoch_seconds"][-1] / full["epoch_seconds"][-1]
                memory = other["peak_mib"] / full["peak_mib"] if full["peak_mib"] == full["peak_mib"] else float("nan")
                figures.setdefault("ratios", {})[f"{strategy}/full {precision}"] = [time_ratio, memory]
                print(
                    f"  {strategy}/full {precision}: epoch time {time_ratio:.3f}x "
                    f"({other['epoch_seconds'][-1]:.3f} s vs {full['epoch_seconds'][-1]:.3f} s), "
                    f"peak memory {memory:.3f}x ({other['peak_mib']:.0f} vs {full['peak_mib']:.0f} MiB)"
                )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print(
        "\n"
        + ("ALL CHECKS PASSED" if not failures else f"{len(failures)} CHECK(S) FAILED:\n  " + "\n  ".join(failures))
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The finetune_clip Model artifact: only what a deployment needs, with its card (``card.json``, ``model_card.md``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_clip.model import CARD_FILE, HYBRID_PREFIXES, ClipBundle, ImageSpec, TrainableStats


def export_model(
    model: Any,
    bundle: ClipBundle,
    cfg: FinetuneClipConfig,
    stats: TrainableStats,
    model_dir: Path,
    card: dict[str, Any],
) -> Path:
    """Write the Model artifact: only what a deployment needs.

    ``lora``: ``adapter_model.safetensors`` + ``adapter_config.json``; ``hybrid``: ``model.safetensors``
    with the text tower and text projection; ``full``: ``model.safetensors`` with every weight. Always
    ``card.json`` (base model reference, which also names the tokenizer and image processor, the image
    spec, pooling, strategy, metrics and whatever ``card`` adds: data window, client) and ``model_card.md``.

    Args:
        model: The trained model (a ``PeftModel`` for lora).
        bundle: The bundle it came from (base reference and image spec).
        cfg: Stage settings.
        stats: Trainable-parameter statistics.
        model_dir: The folder to write (created).
        card: Extra card fields (``window``, ``client_id``, ``metrics``, ...).

    Returns:
        ``model_dir``.
    """
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if cfg.strategy == "lora":
        model.save_pretrained(str(model_dir), safe_serialization=True)
        readme = model_dir / "README.md"
        if readme.is_file():  # peft's template card; ours is model_card.md
            readme.unlink()
        adapter_cfg = model_dir / "adapter_config.json"
        data = json.loads(adapter_cfg.read_text())
        data["base_model_name_or_path"] = bundle.base_ref
        adapter_cfg.write_text(json.dumps(data, indent=2, sort_keys=True))
    else:
        state = model.state_dict()
        if cfg.strategy == "hybrid":
            state = {k: v for k, v in state.items() if k.startswith(HYBRID_PREFIXES)}
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(model_dir / "model.safetensors")
        )
    spec: ImageSpec = bundle.image_spec
    full_card = {
        "format": "clipsync-clip/1",
        "base_model": bundle.base_ref,
        "tokenizer": bundle.base_ref,
        "image_processor": bundle.base_ref,
        "image_spec": asdict(spec),
        "strategy": cfg.strategy,
        "pooling": cfg.pooling,
        "frames_per_video": cfg.frames_per_video,
        "lora": {
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": list(cfg.target_modules),
        }
        if cfg.strategy == "lora"
        else None,
        "trainable_params": stats.trainable,
        "total_params": stats.total,
        "trainable_fraction": stats.fraction,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **card,
    }
    (model_dir / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True, default=float) + "\n")
    (model_dir / "model_card.md").write_text(_model_card_md(full_card))
    return model_dir


def _model_card_md(card: dict[str, Any]) -> str:
    metrics = card.get("metrics") or {}
    lines = [
        f"# clip-{card.get('client_id', 'client')}: CLIP search model",
        "",
        f"- Base model: `{card['base_model']}` (tokenizer and image processor from the same reference)",
        f"- Strategy: {card['strategy']}"
        + (
            f" (r={card['lora']['r']}, alpha={card['lora']['alpha']},"
            f" targets {', '.join(card['lora']['target_modules'])})"
            if card.get("lora")
            else ""
        ),
        f"- Trainable parameters: {card['trainable_params']:,} of {card['total_params']:,}"
        f" ({100 * card['trainable_fraction']:.3f}%)",
        f"- Data window: {card.get('window', 'n/a')}; training videos: {card.get('n_train', 'n/a')},"
        f" validation videos: {card.get('n_val', 'n/a')}",
        f"- Video embedding: {card['pooling']} of {card['frames_per_video']} frames at {card['image_spec']['size']} px",
        f"- Created: {card['created_at']}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "Load with `components.finetune_clip.model.load_clip_model(<this folder>)`.", ""]
    return "\n".join(lines)

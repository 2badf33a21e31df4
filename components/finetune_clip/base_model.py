"""The demo base CLIP: a small CLIP pretrained offline on a generic synthetic domain.

Production configs start from a real checkpoint (``openai/clip-vit-base-patch32``). No hub is reachable
here, so for the embedded default ``clipsync demo-data`` calls :func:`build_demo_base_clip`, which

1. trains a byte-level BPE tokenizer (the CLIP layout: ``</w>`` word suffix, ``<|startoftext|>`` /
   ``<|endoftext|>``) with the ``tokenizers`` library on a generic caption corpus,
2. builds a small :class:`~transformers.CLIPConfig` (4 + 4 layers, width 128, 64 px images, 16 px patches),
3. pretrains it contrastively for a bounded time on numpy-rendered images of coloured shapes on coloured
   backgrounds ("a small red circle on a blue background"),
4. saves model (safetensors), tokenizer and image processor with ``save_pretrained`` plus ``base_card.json``.

What it knows: colours, the five shape names, two sizes and background colours, nothing else. It has never
seen a client's words (surgery, forklift, curling, thermostat, ...) nor their images: byte-level BPE still
tokenizes those words into sub-word pieces, but their embeddings carry no learned meaning, so its
retrieval on client categories starts near chance. That is the point: it is the "before" of the demo.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("clipsync.finetune_clip")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (250, 140, 20),
    "purple": (140, 40, 170),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")
SIZES = ("small", "large")

#: Generic words added to the tokenizer corpus so that common caption words get whole-word tokens.
GENERIC_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "two",
    "three",
    "one",
    "video",
    "image",
    "photo",
    "picture",
    "scene",
    "shape",
    "object",
    "thing",
    "moving",
    "still",
    "left",
    "right",
    "up",
    "down",
    "fast",
    "slow",
    "big",
    "tiny",
    "bright",
    "dark",
    "light",
    "gray",
    "grey",
    "pink",
    "brown",
    "background",
    "foreground",
    "top",
    "bottom",
    "center",
    "middle",
    "corner",
    "near",
    "far",
    "over",
    "under",
    "next",
    "to",
    "behind",
    "front",
    "many",
    "few",
    "some",
    "this",
    "that",
    "is",
    "are",
    "it",
    "its",
    "there",
    "here",
    "person",
    "people",
    "hand",
    "hands",
    "room",
    "outdoor",
    "indoor",
    "day",
    "night",
    "close",
    "view",
]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class ShapeImage:
    """Attributes of one rendered image (a caption mentions a subset of them)."""

    colour: str
    shape: str
    size: str
    background: str


def caption_for(attrs: ShapeImage, parts: tuple[str, ...]) -> str:
    """A caption naming the attribute ``parts`` (subset of colour/shape/size/background; shape always)."""
    words = ["a"]
    if "size" in parts:
        words.append(attrs.size)
    if "colour" in parts:
        words.append(attrs.colour)
    words.append(attrs.shape)
    if "background" in parts:
        words += ["on", "a", attrs.background, "background"]
    return " ".join(words)


def caption_matches(caption_attrs: tuple[ShapeImage, tuple[str, ...]], image: ShapeImage) -> bool:
    """Whether a caption (its source attributes and the parts it names) is true of ``image``."""
    src, parts = caption_attrs
    if src.shape != image.shape:
        return False
    return all(getattr(src, p) == getattr(image, p) for p in parts)


def render_shape_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, ShapeImage]:
    """Render one random coloured shape on a coloured, slightly noisy background.

    Args:
        rng: Random generator.
        size: Image side in pixels.

    Returns:
        ``uint8 [size, size, 3]`` RGB image and its attributes.
    """
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    background = names[rng.integers(len(names))]
    while background == colour:
        background = names[rng.integers(len(names))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    big = rng.random() < 0.5
    radius = size * (rng.uniform(0.28, 0.38) if big else rng.uniform(0.12, 0.2))
    cx, cy = rng.uniform(radius, size - radius, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        mask = dx**2 + dy**2 <= radius**2
    elif shape == "ring":
        d2 = dx**2 + dy**2
        mask = (d2 <= radius**2) & (d2 >= (0.55 * radius) ** 2)
    elif shape == "square":
        mask = (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    elif shape == "triangle":
        mask = (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    else:  # cross
        arm = radius * 0.3
        mask = ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    img = np.empty((size, size, 3), np.float32)
    img[:] = COLOURS[background]
    img[mask] = COLOURS[colour]
    img += rng.normal(0, 8, size=img.shape)
    attrs = ShapeImage(colour=colour, shape=shape, size="large" if big else "small", background=background)
    return np.clip(img, 0, 255).astype(np.uint8), attrs


def generic_corpus() -> list[str]:
    """The tokenizer's training corpus: every caption form of the generic domain plus generic words."""
    lines = []
    for shape in SHAPES:
        for colour in COLOURS:
            for bg in COLOURS:
                for size in SIZES:
                    lines.append(f"a {size} {colour} {shape} on a {bg} background")
            lines.append(f"a {colour} {shape}")
    lines.append(" ".join(GENERIC_WORDS))
    lines += [f"{a} {b}" for a, b in itertools.pairwise(GENERIC_WORDS)]
    return lines


def train_tokenizer(corpus: list[str], vocab_size: int = 600):
    """Train a CLIP-layout byte-level BPE tokenizer and wrap it as a ``transformers.CLIPTokenizer``.

    Args:
        corpus: Training sentences.
        vocab_size: Upper bound on the vocabulary (the corpus may yield fewer merges).

    Returns:
        The ``CLIPTokenizer`` (save it with ``save_pretrained``).
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    tok = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # The same normalizer and pre-tokenizer as transformers' CLIPTokenizer, so the trained merges apply as is.
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Word-final byte tokens ("x</w>") must exist, as in CLIP's vocabulary, or a word ending in a byte that never
    # ended a training word would map to <unk>. They are given to the trainer up front, in a fixed order: left to
    # it, it numbers them in the order it meets words (a hash map's, new in every process), and merges of equal
    # count are ranked by those numbers, so the vocabulary changed from run to run. The trainer's bound grows by
    # the ones no training word ends with, so the number of merges is what ``vocab_size`` gave before.
    word_final = [ch + "</w>" for ch in alphabet]
    words = (w for text in corpus for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    unused_final = len(alphabet) - len({w[-1] for w in words})
    trainer = BpeTrainer(
        vocab_size=vocab_size + unused_final,
        special_tokens=[BOS, EOS, *word_final],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model_state = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]
    return CLIPTokenizer(vocab=model_state["vocab"], merges=merges, model_max_length=32)


def _demo_clip_config(
    vocab_size: int, image_size: int, patch_size: int, width: int, layers: int, eos_id: int, bos_id: int
):
    from transformers import CLIPConfig

    heads = max(1, width // 32)
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": 32,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "pad_token_id": eos_id,
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=width,
    )


def save_base_clip(model, tokenizer, out_dir: Path) -> Path:
    """Write a CLIP, its tokenizer and its image processor (CLIP's mean/std) as a base model folder."""
    from transformers import CLIPImageProcessor

    from components.finetune_clip.model import CLIP_MEAN, CLIP_STD

    size = int(model.config.vision_config.image_size)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(out_dir)
    return Path(out_dir)


def build_demo_base_clip(
    out_dir: Path,
    seed: int = 0,
    time_budget_s: float = 55.0,
    max_steps: int = 800,
    batch_size: int = 64,
    image_size: int = 64,
    patch_size: int = 16,
    width: int = 128,
    layers: int = 4,
    lr: float = 1e-3,
    num_threads: int = 0,
) -> Path:
    """Train and save the demo base CLIP (see the module docstring for what it knows).

    Args:
        out_dir: Folder to write (model.safetensors, config.json, tokenizer files, preprocessor_config.json,
            base_card.json). Created; existing files of the same name are replaced.
        seed: Seed of the tokenizer corpus order, initialization and rendered images.
        time_budget_s: Wall-clock bound of the contrastive pretraining.
        max_steps: Upper bound on pretraining steps (whichever of the two bounds comes first).
        batch_size: Images (and captions) per step.
        image_size: Image side the model sees.
        patch_size: ViT patch side.
        width: Hidden size of both towers and of the projection.
        layers: Transformer layers per tower.
        lr: AdamW peak learning rate.
        num_threads: Torch CPU threads (0: the CPUs available to the process, see ``components.common.cpus``).

    Returns:
        ``out_dir``.
    """
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel

    from components.common.cpus import set_torch_threads
    from components.finetune_clip.loss import contrastive_loss
    from components.finetune_clip.model import normalize_pixels

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_torch_threads(num_threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    corpus = generic_corpus()
    rng.shuffle(corpus)
    tokenizer = train_tokenizer(corpus)
    config = _demo_clip_config(
        len(tokenizer), image_size, patch_size, width, layers, tokenizer.eos_token_id, tokenizer.bos_token_id
    )
    model = CLIPModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, max_steps // 20)

    started = time.monotonic()

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        # Cosine over whichever bound (steps or seconds) is nearer, so a time-bounded run still decays.
        progress = max((step - warmup) / max(1, max_steps - warmup), (time.monotonic() - started) / time_budget_s)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    all_parts = ("colour", "size", "background")
    step, loss_value, losses = 0, float("nan"), []
    while step < max_steps and time.monotonic() - started < time_budget_s:
        images, attrs = zip(*(render_shape_image(rng, image_size) for _ in range(batch_size)), strict=True)
        captions = []
        for a in attrs:
            parts = tuple(p for p in all_parts if p == "colour" or rng.random() < 0.5)
            captions.append((a, parts))
        texts = [caption_for(a, p) for a, p in captions]
        unique = sorted(set(texts))
        source = {texts[i]: captions[i] for i in range(batch_size)}
        mask = torch.tensor([[caption_matches(source[t], a) for t in unique] for a in attrs])
        pixels = normalize_pixels(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), image_size)
        tokens = tokenizer(unique, padding=True, truncation=True, return_tensors="pt")
        img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        loss = contrastive_loss(img, txt, mask, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        loss_value = float(loss.detach())
        losses.append(loss_value)
        if step % 50 == 0:
            logger.info("demo base CLIP: step %d loss %.3f (%.0f s)", step, loss_value, time.monotonic() - started)

    model.eval()
    save_base_clip(model, tokenizer, out_dir)
    tail = losses[-20:] or [loss_value]
    card = {
        "kind": "clipsync demo base CLIP",
        "knows": {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES)},
        "does_not_know": "any client domain (medical, industrial, sports, security, products)",
        "steps": step,
        "seconds": round(time.monotonic() - started, 1),
        "final_loss": round(float(np.mean(tail)), 4),
        "first_loss": round(losses[0], 4) if losses else None,
        "vocab_size": len(tokenizer),
        "image_size": image_size,
        "patch_size": patch_size,
        "width": width,
        "layers": layers,
        "seed": seed,
    }
    (out_dir / "base_card.json").write_text(json.dumps(card, indent=2) + "\n")
    logger.info(
        "demo base CLIP saved in %s: %d steps in %.0f s, loss %.3f -> %.3f",
        out_dir,
        step,
        card["seconds"],
        card["first_loss"] or float("nan"),
        card["final_loss"],
    )
    return out_dir

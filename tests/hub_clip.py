"""A tiny, randomly initialised CLIP saved the way the Hugging Face hub holds ``openai/clip-vit-base-patch32``.

The hub folder holds ``config.json`` (the transformers-4 layout: legacy keys, ``text_config_dict: null``, the text
config's ``eos_token_id`` left at 2 so the text tower pools at the highest token id), ``model.safetensors``,
the byte-level BPE tokenizer as ``vocab.json`` + ``merges.txt`` + ``tokenizer.json`` with its
``tokenizer_config.json`` and ``special_tokens_map.json`` (``<|startoftext|>`` and ``<|endoftext|>`` are the two
last ids, ``<|endoftext|>`` also pads), and the image processor's ``preprocessor_config.json`` with integer
``size`` / ``crop_size``. Only the sizes differ here: 1 layer, width 32, 32 px images, a 600-token vocabulary
trained with the ``tokenizers`` library.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
HUB_FILES = {
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
}
_LEGACY = {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "max_length": 20}


def _train_bpe(corpus: list[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-level BPE (``</w>`` word ends, lower case), trained on ``corpus``; specials get the last ids."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    split = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=600, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    # The trainer numbers tokens of equal count in no fixed order; number them by merge order instead, so the
    # same corpus gives the same ids (and the same text embeddings) in every run.
    merged = list(dict.fromkeys(m.replace(" ", "") for m in merges))
    rest = sorted(set(model["vocab"]) - set(merged))
    vocab: dict[str, int] = {t: i for i, t in enumerate(rest + merged)}
    for ch in sorted(alphabet):
        vocab.setdefault(ch + "</w>", len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_hub_clip(out: Path, corpus: list[str], seed: int = 0) -> Path:
    """Write the tiny CLIP in the hub layout into ``out`` (created) and return it."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_bpe(corpus)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(specials))
    tokenizer_config = {**specials, "add_prefix_space": False, "errors": "replace", "do_lower_case": True}
    tokenizer_config.update(model_max_length=77, name_or_path="openai/clip-vit-base-patch32")
    (out / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "tokenizer_class": "CLIPTokenizer"}))
    CLIPTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**small, "vocab_size": len(vocab), "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
    text.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)  # the hub's values, not the tokenizer's ids
    vision = {**small, "image_size": 32, "patch_size": 16, "hidden_act": "quick_gelu"}
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    for key in ("text_config", "vision_config"):
        config[key].update(_LEGACY, transformers_version="4.16.0.dev0")
    config.update(
        _name_or_path="openai/clip-vit-base-patch32",
        initializer_factor=1.0,
        text_config_dict=None,
        vision_config_dict=None,
        transformers_version=None,
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 32,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3,
                "size": 32,
            }
        )
    )
    return out

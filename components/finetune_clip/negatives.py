"""Client feedback in the contrastive loss: results marked not relevant (hard negatives) and searches as labels.

The plain loss (:func:`components.finetune_clip.core.contrastive_loss`) treats every pair that is not a positive
as a negative, but most of those are easy and only assumed. Feedback adds what the client said, and only that:

- A pair the client said is wrong is certain and, having been a top result, hard.
  :func:`contrastive_loss_with_negatives` weighs such pairs ``negative_weight`` times an ordinary negative in the
  softmax denominators (a weighted InfoNCE): with no known negative, or a weight of 1, it is exactly the plain loss.
  A search text whose rated results in a batch were all wrong still joins the batch: its known-negative videos are
  pushed away from it (each one's own labels must outscore it).
- A search rated relevant on a video makes its text a label of that video (``ClipSample.feedback_labels``). The
  client said nothing about the other videos of that video's category, and the evaluation counts them as right
  answers to the search (``eval_relevance: category``), so the text is not an assumed negative of them:
  :func:`unknown_pairs` leaves such pairs out of the loss. A feedback text is an assumed negative only of videos
  of other categories, as any label is.
- A ``category_label`` record (the rated video's client category, ``feedback.propagate``) makes its text a feedback
  label of every training video of that category, except one the client said it is wrong for (a hard negative of
  the text): the client's word on a video wins over what its category suggests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from components.finetune_clip.data import ClipSample


def read_feedback_records(feedback_dir: Path | None) -> list[dict[str, Any]]:
    """The feedback stage's training records (``kind``, ``video_id``, ``text``, provenance); none without a folder."""
    from components.common.names import FEEDBACK_RECORDS_FILE

    path = Path(feedback_dir) / FEEDBACK_RECORDS_FILE if feedback_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def apply_feedback(samples: Sequence[ClipSample], records: Iterable[Mapping[str, Any]]) -> list[ClipSample]:
    """Training samples with the feedback's labels and known negatives added (``samples`` are not modified).

    A ``label`` record's text becomes one more label of its video (once) and one of its ``feedback_labels`` (unless
    the video's own label records have it); a ``hard_negative`` record's text goes into the video's ``negatives``
    unless it is already one of its labels (the loss cannot hold a pair as both); a ``category_label`` record's
    text becomes a feedback label of every sample of its ``category`` that does not hold it as a negative. Records
    of videos (and categories) not among ``samples`` are left out.
    """
    labels: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    by_category: dict[str, list[str]] = {}
    for r in records:
        if r["kind"] == "category_label":
            by_category.setdefault(r["category"], []).append(r["text"])
            continue
        target = labels if r["kind"] == "label" else negatives
        target.setdefault(r["video_id"], []).append(r["text"])
    out = []
    for s in samples:
        own = [t for t in s.labels if t not in s.feedback_labels]
        told = [*s.feedback_labels, *labels.get(s.video_id, [])]
        known_wrong = {*s.negatives, *negatives.get(s.video_id, [])} - set(told)
        implied = [t for t in by_category.get(s.category, []) if s.category and t not in known_wrong]
        fed = tuple(dict.fromkeys(t for t in [*told, *implied] if t not in own))
        new_labels = (*own, *fed)
        new_negatives = tuple(
            dict.fromkeys(t for t in [*s.negatives, *negatives.get(s.video_id, [])] if t not in new_labels)
        )
        changed = (new_labels, new_negatives, fed) != (tuple(s.labels), tuple(s.negatives), tuple(s.feedback_labels))
        fields = {"labels": new_labels, "negatives": new_negatives, "feedback_labels": fed}
        out.append(dataclasses.replace(s, **fields) if changed else s)
    return out


def negative_mask(video_ids: Sequence[str], texts: Sequence[str], negatives: Mapping[str, Set[str]]) -> torch.Tensor:
    """``[B, T]`` bool: video ``i`` is a known negative of text ``j`` (``negatives``: text -> video ids)."""
    import torch

    return torch.tensor([[v in negatives.get(t, ()) for t in texts] for v in video_ids], dtype=torch.bool)


def unknown_pairs(
    samples: Sequence[ClipSample], texts: Sequence[str], positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """``[B, T]`` bool: pairs of a feedback text the loss leaves out (neither a positive nor a negative).

    A text is a feedback text when it reached the batch only through feedback (a video's ``feedback_labels`` or
    ``negatives``), not through any batch video's own labels. Such a text is, besides its positives and known
    negatives, left out for the videos of the categories of the batch videos it labels (categories named; an
    unnamed category counts as none), and for every video when it labels none of the batch (it is only a known
    wrong answer here).
    """
    import torch

    own = {t for s in samples for t in s.labels if t not in s.feedback_labels}
    pos = positive.tolist()
    out = torch.zeros(len(samples), len(texts), dtype=torch.bool)
    for j, text in enumerate(texts):
        if text in own:
            continue
        labelled = [s for s, row in zip(samples, pos, strict=True) if row[j]]
        categories = {s.category for s in labelled if s.category}
        for i, s in enumerate(samples):
            out[i, j] = not labelled or s.category in categories
    return out & ~positive & ~negative


def contrastive_loss_with_negatives(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    logit_scale: torch.Tensor | float,
    negative_weight: float = 2.0,
    unknown: torch.Tensor | None = None,
) -> torch.Tensor:
    """The symmetric multi-positive InfoNCE of ``contrastive_loss`` with known negatives weighted up.

    A known negative ``(i, k)`` enters the denominators of video ``i``'s and text ``k``'s positive pairs as
    ``negative_weight * exp(l_ik)`` instead of ``exp(l_ik)`` (its logit shifted by ``log(negative_weight)``); an
    ``unknown`` pair enters none (:func:`unknown_pairs`).

    Args:
        video_emb: ``[B, D]`` L2-normalized video embeddings.
        text_emb: ``[T, D]`` L2-normalized text embeddings.
        positive: ``[B, T]`` bool mask of true (video, text) pairs.
        negative: ``[B, T]`` bool mask of known negatives (never a positive).
        logit_scale: Multiplier of the cosine similarities.
        negative_weight: Weight of a known negative (>= 1).
        unknown: ``[B, T]`` bool mask of pairs left out (never a positive or known negative); ``None``: none.

    Returns:
        Scalar loss (float32).

    Raises:
        ValueError: Masks that do not match the embeddings, no positive pair, a pair both positive and a known
            negative (or left out), or a weight below 1.
    """
    import torch

    from components.common.device import no_autocast
    from components.finetune_clip.loss import _directional_nll

    shape = (video_emb.shape[0], text_emb.shape[0])
    unknown = torch.zeros(shape, dtype=torch.bool) if unknown is None else unknown
    masks = (positive, negative, unknown)
    if any(tuple(m.shape) != shape for m in masks):
        raise ValueError(f"masks {[tuple(m.shape) for m in masks]} do not match logits {shape}")
    if not bool(positive.any()):
        raise ValueError("no positive pair in the batch")
    if bool((positive & negative).any()):
        raise ValueError("a pair is both a positive and a known negative")
    if bool((unknown & (positive | negative)).any()):
        raise ValueError("a pair left out is also a positive or a known negative")
    if not negative_weight >= 1.0:
        raise ValueError(f"negative_weight must be >= 1, got {negative_weight}")
    with no_autocast(video_emb.device):
        logits = (video_emb.float() @ text_emb.float().T) * logit_scale
        pos = positive.to(device=logits.device, dtype=torch.bool)
        shift = negative.to(device=logits.device, dtype=logits.dtype) * math.log(negative_weight)
        weighted = logits + shift  # positives are never shifted: the masks are disjoint
        # The dtype's lowest value: exp() of it is 0, so a pair left out adds nothing to any denominator.
        weighted = weighted.masked_fill(unknown.to(logits.device), torch.finfo(weighted.dtype).min)
        return 0.5 * (_directional_nll(weighted, pos) + _directional_nll(weighted.T, pos.T))

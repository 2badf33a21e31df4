"""The CLIP search model's training loss: symmetric multi-positive InfoNCE between videos and their label texts.

A video may carry several labels and a label may be shared by several videos: every (video, label) pair that is
true is a positive, and a positive is never used as a negative of the same video or label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def positive_mask(video_labels: Sequence[Sequence[str]], texts: Sequence[str]) -> torch.Tensor:
    """``[B, T]`` bool: text ``j`` is one of video ``i``'s labels."""
    import torch

    return torch.tensor([[t in set(labels) for t in texts] for labels in video_labels], dtype=torch.bool)


def batch_texts(video_labels: Sequence[Sequence[str]]) -> list[str]:
    """The unique label texts of a batch, in first-seen order (a shared label appears once)."""
    return list(dict.fromkeys(t for labels in video_labels for t in labels))


def contrastive_loss(
    video_emb: torch.Tensor, text_emb: torch.Tensor, positive: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE.

    With ``l = logit_scale * v @ t.T`` and ``P`` the positive mask, the video-to-text term of a positive
    pair ``(i, j)`` is ``-log(exp(l_ij) / (exp(l_ij) + sum_{k not in P_i} exp(l_ik)))``: the pair competes
    only with the video's negatives, never with its other labels. Pair terms are averaged per video, then
    over videos with at least one positive; the text-to-video term is the same on ``l.T`` (a label shared
    by two videos is positive for both). The loss is the mean of the two directions. With one label per
    video and no shared labels (``P`` = identity) this is exactly CLIP's loss.

    The logits are computed in float32 whatever the embeddings' dtype or an active autocast (half precision
    would round away the small differences between similarities), on the embeddings' device.

    Args:
        video_emb: ``[B, D]`` L2-normalized video embeddings.
        text_emb: ``[T, D]`` L2-normalized text embeddings.
        positive: ``[B, T]`` bool mask of true (video, text) pairs.
        logit_scale: Multiplier of the cosine similarities (CLIP's ``logit_scale.exp()``).

    Returns:
        Scalar loss (float32).

    Raises:
        ValueError: If the mask does not match the embeddings or holds no positive pair.
    """
    import torch

    from components.common.device import no_autocast

    if tuple(positive.shape) != (video_emb.shape[0], text_emb.shape[0]):
        raise ValueError(
            f"positive mask {tuple(positive.shape)} does not match logits {(video_emb.shape[0], text_emb.shape[0])}"
        )
    if not bool(positive.any()):  # checked on the mask as built (CPU), not on the device
        raise ValueError("no positive pair in the batch")
    with no_autocast(video_emb.device):
        logits = (video_emb.float() @ text_emb.float().T) * logit_scale
        pos = positive.to(device=logits.device, dtype=torch.bool)
        return 0.5 * (_directional_nll(logits, pos) + _directional_nll(logits.T, pos.T))


def _directional_nll(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One direction of :func:`contrastive_loss` (rows are the anchors), without a host synchronization."""
    import torch

    # The dtype's lowest value stands for "minus infinity": it keeps a row without negatives finite in any
    # precision (a fixed -1e9 does not fit in float16).
    neg_lse = torch.logsumexp(logits.masked_fill(pos, torch.finfo(logits.dtype).min), dim=1, keepdim=True)
    nll = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits
    counts = pos.sum(dim=1)
    rows = (counts > 0).to(logits.dtype)
    per_row = (nll * pos).sum(dim=1) / counts.clamp(min=1)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)

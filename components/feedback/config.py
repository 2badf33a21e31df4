"""Settings of the feedback stage (standard library only: the kfp wrapper imports this)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from components.common.errors import require

_require = functools.partial(require, section="feedback")


@dataclass(frozen=True)
class FeedbackConfig:
    """How last month's client feedback feeds this month's retrain.

    The weight of a hard negative in the loss is a training setting: ``finetune_clip.negative_weight``.

    Attributes:
        enabled: Read last month's feedback into training records; off: the stage writes no records (the review
            queue is still written, so the client sees what to rate).
        max_review: Longest review queue (searches nobody gave the right answer of: unrated low-confidence ones
            and ones whose rated results were all wrong; most unsure x most frequent first).
        propagate: A search rated relevant on a video also labels the training videos of that video's client
            category (``category_label`` records, with the rating's provenance); validation and test videos are
            never labelled by feedback.
    """

    enabled: bool = True
    max_review: int = 200
    propagate: bool = True

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), f"enabled must be true or false, got {self.enabled!r}")
        _require(
            isinstance(self.max_review, int) and 1 <= self.max_review <= 100_000,
            f"max_review must be 1..100000, got {self.max_review!r}",
        )
        _require(isinstance(self.propagate, bool), f"propagate must be true or false, got {self.propagate!r}")

"""The ideal-observer ceiling of benchmark v2 (``benchmarks/lipsync_ceiling.py``): its premise and its arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import lipsync_ceiling as lc

from components.demo_data.benchmark import REALISM, _articulate
from components.demo_data.config import BenchmarkConfig
from components.demo_data.core import _syllables

FPS = 25.0
LEAD = (-0.02, 0.08)


def _distribution_auc(shifts_scored: np.ndarray, shifts_drawn: np.ndarray) -> float:
    """The exact AUC of the observer that scores with ``shifts_scored`` on fakes drawn with ``shifts_drawn``:
    densities on a fine grid as sample weights (the scores are piecewise constant, so the grid is exact up to
    its step at the edges)."""
    x = np.arange(-0.2, 0.3, 1e-5)
    real = lc.lead_density(x, *LEAD)
    fake = np.mean([lc.lead_density(x + s, *LEAD) for s in shifts_drawn], axis=0)
    score = lc.offset_posterior(x, LEAD, shifts_scored)
    y = np.r_[np.zeros(len(x)), np.ones(len(x))]
    return float(roc_auc_score(y, np.r_[score, score], sample_weight=np.r_[real, fake]))


def test_an_offset_fake_is_a_real_with_a_shifted_lead():
    # The premise of the offset ceiling, on the generator's own code: shifting the driving syllables by k frames
    # draws exactly the mouth of a real whose lead is k frames smaller (same random draws).
    syl = _syllables(BenchmarkConfig(), ["bench", 3])
    shifted = syl.copy()
    shifted[:, 0] += 2 / FPS
    fake = _articulate(shifted, 75, FPS, 0.05, np.random.default_rng(7))
    real = _articulate(syl, 75, FPS, 0.05 - 2 / FPS, np.random.default_rng(7))
    np.testing.assert_allclose(fake, real, atol=1e-9)


def test_lead_density_is_a_density():
    x = np.linspace(-0.5, 0.5, 200_001)
    for sigma in (0.0, 0.01, 0.03):
        assert np.trapezoid(lc.lead_density(x, *LEAD, sigma), x) == pytest.approx(1.0, abs=1e-3)


def test_offset_ceiling_matches_its_closed_form():
    # U(-20, 80) ms against 1-3 frame shifts (40 ms each), worked by hand: the fakes outside the reals' range
    # (11/15 of them) rank first; inside, the reals' range is covered by one or two of the six shifted ranges.
    shifts = lc.offset_shifts((1, 3), FPS)
    assert sorted(np.round(shifts * FPS).astype(int).tolist()) == [-3, -2, -1, 1, 2, 3]
    assert _distribution_auc(shifts, shifts) == pytest.approx(133 / 150, abs=2e-3)  # 0.887
    one, two = lc.offset_shifts((1, 3), FPS, (1,)), lc.offset_shifts((1, 3), FPS, (2,))
    assert _distribution_auc(shifts, one) == pytest.approx(0.72, abs=2e-3)  # the type's observer on 1-frame fakes
    assert _distribution_auc(one, one) == pytest.approx(0.74, abs=2e-3)  # one that knows the magnitude
    assert _distribution_auc(shifts, two) == pytest.approx(0.94, abs=2e-3)
    assert _distribution_auc(shifts, lc.offset_shifts((1, 3), FPS, (3,))) == pytest.approx(1.0, abs=1e-6)


def test_jitter_blurs_the_ceiling():
    shifts = lc.offset_shifts((1, 3), FPS)
    rng = np.random.default_rng(0)
    n = 20_000
    lead = rng.uniform(*LEAD, 2 * n) - np.r_[np.zeros(n), rng.choice(shifts, n)]
    y = np.r_[np.zeros(n), np.ones(n)]
    sigma = REALISM["syllable_jitter_s"] / np.sqrt(8)
    seen = lead + rng.normal(0.0, sigma, 2 * n)
    exact = roc_auc_score(y, lc.offset_posterior(lead, LEAD, shifts))
    blurred = roc_auc_score(y, lc.offset_posterior(seen, LEAD, shifts, sigma))
    naive = roc_auc_score(y, lc.offset_posterior(seen, LEAD, shifts))  # ignoring the noise ranks worse
    assert exact == pytest.approx(133 / 150, abs=0.01)
    assert naive < blurred < exact


def test_unexplained_gestures():
    own = np.array([[0.0, 0.2, 1.0], [0.4, 0.2, 1.0], [0.8, 0.2, 1.0]])  # centres 0.1, 0.5, 0.9
    args = dict(segment_s=(0.0, 1.2), tolerance_s=0.1, stretch=(0.8, 1.3))
    assert lc.unexplained_gestures(own, own, lead_offsets=(0.0, 0.0), **args) == 0
    assert lc.unexplained_gestures(own, own[:2], lead_offsets=(0.0, 0.0), **args) == 1  # a gesture missing
    longer = own.copy()
    longer[1, 1] = 0.4  # twice its sound: no stretch in 0.8-1.3 on both sides reconciles them
    longer[1, 0] = 0.3  # same centre
    assert lc.unexplained_gestures(own, longer, lead_offsets=(0.0, 0.0), **args) == 1
    late = own + np.array([0.15, 0.0, 0.0])
    assert lc.unexplained_gestures(own, late, lead_offsets=(0.0, 0.0), **args) == 3  # the lead is pinned
    assert lc.unexplained_gestures(own, late, lead_offsets=(0.0, 0.1), **args) == 0  # another lead explains it
    assert lc.syllables_in_clip(own, 0.5) == 2


def test_the_ideal_score_combines_both_kinds_of_evidence():
    def clip(lead: float, fake_type: str = "", frames: int = 0, unexplained: int = 0) -> dict:
        return {
            "effective_lead_s": lead, "label": int(bool(fake_type)), "fake_type": fake_type, "offset_frames": frames,
            "syllables": 8, "unexplained": unexplained,
        }  # fmt: skip

    clips = [
        clip(0.03),  # a real inside the reals' range: a graded posterior
        clip(0.03 - 3 / FPS, "offset", 3),  # no real has that lead
        clip(0.03, "partial", unexplained=2),
        clip(0.03, "partial"),  # nothing unexplained: it looks real
    ]
    scores = lc.ideal_scores(clips, BenchmarkConfig())
    assert 0 < scores[0] < 0.5 and scores[1] == 1.0 and scores[2] == 1.0 and scores[3] == scores[0]
    figures = lc.split_figures(clips, BenchmarkConfig())
    assert figures["partial"]["value"] == pytest.approx(0.75)  # one of two certain, the other tied with the real
    assert figures["partial_events"] == {"with_one_or_more": 1, "with_two_or_more": 1}


def test_every_stride_scores_the_windows_predict_video_scores():
    from dataclasses import replace

    import torch

    from components.finetune_lipsync.data import LipsyncVideo
    from components.finetune_lipsync.model import LipSyncDetector, LipSyncModelConfig, predict_video
    from components.finetune_lipsync.synthetic import synthetic_video

    torch.manual_seed(0)
    config = LipSyncModelConfig(crop_size=16, visual_channels=4, audio_channels=8, embed_dim=8, attention_heads=2)
    model = LipSyncDetector(config).eval()
    crops, audio = synthetic_video(False, 1, duration_s=2.0, size=32)
    hops = (0.5, 0.12)
    per_hop = lc.window_logits_by_hop(model, [LipsyncVideo("v", crops, audio, 25.0, 0, "test", False)], hops)[0]
    for hop in hops:
        at_hop = LipSyncDetector(replace(config, hop_s=hop))
        at_hop.load_state_dict(model.state_dict())
        score = predict_video(at_hop, crops, audio, 25.0)
        assert len(score.window_probabilities) == len(per_hop[hop])
        np.testing.assert_allclose(score.window_probabilities, 1 / (1 + np.exp(-per_hop[hop])), rtol=1e-5, atol=1e-6)


def test_simulated_clips_are_drawn_by_the_generator():
    config = BenchmarkConfig()
    rows = lc.simulated_rows(config, 3)
    assert [r["fake_type"] for r in rows[:4]] == ["", "offset", "partial", "other_speaker"] and len(rows) == 12
    for r in rows:
        assert LEAD[0] <= r["lead_s"] <= LEAD[1]
        start, end = r["manipulated_frames"]
        if r["fake_type"] == "offset":
            assert 1 <= abs(r["offset_frames"]) <= 3
        if r["fake_type"] == "partial":
            assert config.partial_s[0] <= (end - start) / FPS <= config.partial_s[1] and start > 0 and end < 75
    clips = lc.clip_evidence(config, rows)
    assert all(("unexplained" in c) == (c["fake_type"] in ("partial", "other_speaker")) for c in clips)
    assert all(5 <= c["syllables"] <= 14 for c in clips)

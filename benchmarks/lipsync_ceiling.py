"""How far the lip-sync targets are reachable on benchmark v2 at all, and where the trained model stands against that.

Two modes:

``ceiling`` (a minute or two, no model, no video): an ideal observer's ROC AUC per fake type on the test split (the
ingest split the training uses), on all clips and on new clips drawn by the generator's own ``_mouth_track``, from
the generator's truth rows and its own ``REALISM`` and ``BenchmarkConfig`` (imported, not copied), with the project's
bootstrap intervals (``components/common/stats.py``), and the offset ceiling at the distribution level (a large
simulation), so that the test split's sampling is visible.

- ``offset``: in version 2 every speaker's lips lead the sound by ``lead_s`` ~ U(REALISM lead_s), reals and fakes
  alike, and an offset fake shifts the syllables that drive its mouth by ``offset_frames`` / fps, so its effective
  lead is ``lead_s - offset_frames / fps``. Given that lead, a fake's mouth is distributed exactly as a real's with
  that lead (:func:`components.demo_data.benchmark._articulate` draws the same way), so the effective lead is all
  the evidence there is: the best any detector can do is rank by its likelihood ratio (:func:`offset_posterior`).
  ``exact`` knows the lead; ``jitter`` sees it through the per-syllable onset jitter (``REALISM syllable_jitter_s``,
  s.d. sigma): an observer that reads every gesture's centre exactly sees ``centre_i = sound centre_i - lead + e_i``
  (the stretch is symmetric about the centre), whose mean over the clip's m syllables is the sufficient statistic,
  ``lead + N(0, sigma^2 / m)``; the likelihood ratio then uses the densities convolved with that noise.
- ``partial`` and ``other_speaker`` are separable in principle: their mouths follow another speaker's syllables,
  whose timing is independent of the clip's own sound. :func:`unexplained_gestures` counts, inside the manipulated
  segment, what no real mouth shows: a gesture count unlike the sound's syllable count, a gesture no stretch in
  ``REALISM syllable_stretch`` makes from its sound, or one farther than ``TOLERANCE_SIGMAS`` jitter s.d. from where
  any lead in the reals' range puts it (probability under 1e-4 per syllable for a real). Scoring a fake with such an
  event as certain and the rest by their lead gives a lower bound of their ceiling (:func:`ideal_scores`).

``model`` (minutes on the CPU): the trained detector on an export (``benchmarks/lipsync_gpu.py export``): its test
scores per offset magnitude and effective lead beside the ceiling of the same clips, partial fakes by the length of the
manipulated segment and whether a scored window lies inside it, and the evaluation-time levers that need no
retraining: the window stride (``hop_s``) with every ``video_aggregation``, chosen on validation, reported on test.
Each window is cut by the model's own ``extract_window`` at the starts ``window_starts`` gives for that stride, so a
row at ``hop_s`` h is exactly what ``predict_video`` scores with ``hop_s`` h.

Run:
    PYTHONPATH=. .venv/bin/python benchmarks/lipsync_ceiling.py ceiling --home /tmp/lips18b/full
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/lipsync_ceiling.py model --home /tmp/lips18b/full \\
        --data lipsync_v2.npz --model W/full60/model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("clipsync.benchmarks.lipsync_ceiling")

#: A gesture farther than this many jitter s.d. beyond the lead range from every own syllable is unexplained.
TOLERANCE_SIGMAS = 4.0
#: The strides (seconds) the ``model`` mode scores, the default first.
HOPS = (0.5, 0.24, 0.12, 0.08, 0.04)


# ------------------------------------------------------------------------------------------------ ceiling


def lead_density(x: np.ndarray, low: float, high: float, sigma: np.ndarray | float = 0.0) -> np.ndarray:
    """Density at ``x`` of U(low, high) plus independent N(0, sigma^2) noise (sigma 0: the uniform itself)."""
    from scipy.stats import norm

    x = np.asarray(x, dtype=np.float64)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), x.shape)
    exact = ((x >= low) & (x <= high)).astype(np.float64)
    safe = np.where(sigma > 0, sigma, 1.0)
    smooth = norm.cdf((x - low) / safe) - norm.cdf((x - high) / safe)
    return np.where(sigma > 0, smooth, exact) / (high - low)


def offset_shifts(offset_frames: tuple[int, int], fps: float, magnitudes: tuple[int, ...] | None = None) -> np.ndarray:
    """The signed shifts (seconds) an offset fake draws, equally likely: +-low..high frames (or ``magnitudes``)."""
    low, high = offset_frames
    frames = [m for m in range(low, high + 1) if magnitudes is None or m in magnitudes]
    return np.array([s * m / fps for m in frames for s in (1, -1)], dtype=np.float64)


def offset_posterior(
    lead: np.ndarray, lead_range: tuple[float, float], shifts: np.ndarray, sigma: np.ndarray | float = 0.0
) -> np.ndarray:
    """P(offset fake | observed effective lead) at equal priors: a monotone function of the likelihood ratio.

    Args:
        lead: Observed effective lead per clip (seconds; for a fake ``lead_s - shift``).
        lead_range: The speakers' lead distribution U(low, high) (``REALISM["lead_s"]``).
        shifts: The signed shifts an offset fake draws, equally likely (:func:`offset_shifts`).
        sigma: s.d. of the observation noise per clip (0: the lead is known exactly).

    Returns:
        float64 per clip in [0, 1]; 1 where no real has that lead, 0.5 where neither explains it.
    """
    lead = np.asarray(lead, dtype=np.float64)
    real = lead_density(lead, *lead_range, sigma)
    fake = np.mean([lead_density(lead + s, *lead_range, sigma) for s in shifts], axis=0)
    total = real + fake
    return np.where(total > 0, fake / np.where(total > 0, total, 1.0), 0.5)


def syllables_in_clip(syl: np.ndarray, duration_s: float) -> int:
    """The syllables whose centre lies inside the clip: the gestures an observer can time."""
    centres = syl[:, 0] + syl[:, 1] / 2
    return int(np.sum((centres >= 0) & (centres <= duration_s)))


def unexplained_gestures(
    own: np.ndarray,
    driver: np.ndarray,
    segment_s: tuple[float, float],
    lead_offsets: tuple[float, float],
    tolerance_s: float,
    stretch: tuple[float, float],
) -> int:
    """Events inside ``segment_s`` that no real mouth driven by the clip's own syllables ``own`` shows, for a mouth
    driven by ``driver`` instead (an ideal observer that reads every gesture's centre and length).

    The syllables whose centre lies in the segment are paired in time order (syllables do not overlap). Events: the
    difference of their counts (a real has one gesture per own syllable); a pair whose lengths no stretch in
    ``stretch`` can reconcile (``REALISM syllable_stretch``: a real gesture lasts 0.8-1.3x its sound, so this cannot
    happen to a real); a pair whose centres differ by more than ``lead_offsets`` (the difference between the fake's
    lead and any lead a real could have: 0 for a partial fake, whose lead the rest of the clip shows) widened by
    ``tolerance_s`` of onset jitter (probability under 1e-4 per syllable for a real at 4 s.d.).

    Args:
        own: The clip's own syllables ``[K, 3]`` (start, duration, amplitude).
        driver: The syllables that drive the fake's mouth.
        segment_s: The manipulated interval (seconds).
        lead_offsets: (low, high) of the centre difference a real's lead could explain.
        tolerance_s: Jitter allowed beyond that (seconds).
        stretch: (low, high) of a gesture's length over its sound's.
    """
    lo, hi = segment_s

    def inside(s: np.ndarray) -> np.ndarray:
        c = s[:, 0] + s[:, 1] / 2
        return s[(c >= lo) & (c <= hi)]

    a, b = inside(own), inside(driver)
    if len(a) != len(b):  # pairing the rest would be arbitrary: the missing or extra gestures are the events
        return abs(len(a) - len(b))
    ratio = b[:, 1] / a[:, 1]
    events = int(np.sum((ratio * stretch[0] > stretch[1]) | (ratio * stretch[1] < stretch[0])))
    diff = (b[:, 0] + b[:, 1] / 2) - (a[:, 0] + a[:, 1] / 2)
    return events + int(np.sum((diff < lead_offsets[0] - tolerance_s) | (diff > lead_offsets[1] + tolerance_s)))


def _auc(y: np.ndarray, s: np.ndarray) -> dict:
    from components.common.stats import bootstrap_two_class

    d = bootstrap_two_class("roc_auc", y, s).to_dict()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _plain_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, s)), 4)


def split_clips(home: Path) -> tuple[object, list[dict]]:
    """The benchmark's config and the truth rows of its ingested lip-sync clips, each with ``index`` (the generator's
    talking-head index), ``video_id`` and ``split`` (the ingest split: the training's test set is ``test``)."""
    from components.common.manifest import read_manifest
    from components.demo_data.benchmark import _plan_benchmark
    from components.demo_data.config import BenchmarkConfig

    doc = json.loads((home / "demo" / "bench" / "benchmark.json").read_text())
    config = BenchmarkConfig(**doc["config"])
    index = {job.name: job.params["index"] for job in _plan_benchmark(config) if job.group == "talking"}
    truth = {r["video_path"]: r for r in map(json.loads, (home / "demo" / "bench" / "truth.jsonl").open())}
    rows = []
    for rec in read_manifest(home / "quality" / "ingest" / "manifest.jsonl"):
        if rec.key in index and rec.key in truth:
            rows.append(truth[rec.key] | {"index": index[rec.key], "video_id": rec.video_id, "split": rec.split})
    return config, rows


def clip_evidence(config, rows: list[dict]) -> list[dict]:
    """Per clip: its effective lead, the number of gestures an observer can time, and for a fake driven by another
    speaker the unexplained events of :func:`unexplained_gestures` (the generator's own syllables and speaker choice).
    """
    from components.demo_data.benchmark import REALISM, _similar_speaker
    from components.demo_data.core import _syllables
    from components.demo_data.speech import frame_envelope

    fps, dur = config.talking_fps, config.talking_duration_s
    n = round(dur * fps)
    tolerance = TOLERANCE_SIGMAS * REALISM["syllable_jitter_s"]
    out = []
    for r in rows:
        syl = _syllables(config, ["bench", r["index"]])
        item = {
            "video_id": r["video_id"],
            "split": r["split"],
            "label": int(r["authenticity"] == "fake"),
            "fake_type": r["fake_type"],
            "offset_frames": int(r["offset_frames"]),
            "effective_lead_s": float(r["lead_s"]) - int(r["offset_frames"]) / fps,
            "syllables": syllables_in_clip(syl, dur),
            "manipulated_frames": list(r["manipulated_frames"]),
        }
        if r["fake_type"] in ("partial", "other_speaker"):
            start, end = r["manipulated_frames"]
            other, _ = _similar_speaker(config, frame_envelope(syl, n, fps), r["index"], slice(start, end))
            lead, (low, high) = float(r["lead_s"]), REALISM["lead_s"]
            # A partial fake's lead is the one its untouched part shows; an other_speaker fake's could be any.
            offsets = (0.0, 0.0) if r["fake_type"] == "partial" else (lead - high, lead - low)
            segment = (start / fps, end / fps)
            item["unexplained"] = unexplained_gestures(
                syl, other, segment, offsets, tolerance, REALISM["syllable_stretch"]
            )
        out.append(item)
    return out


def offset_ceiling(clips: list[dict], config, draws: int = 200, seed: int = 0) -> dict:
    """The ideal observer's AUC on ``clips`` (reals and offset fakes): overall and per magnitude, exact and through
    the syllable jitter (mean over ``draws`` noise draws, and their 2.5-97.5 % range)."""
    from components.demo_data.benchmark import REALISM

    fps = config.talking_fps
    lead_range = REALISM["lead_s"]
    clips = [c for c in clips if c["label"] == 0 or c["fake_type"] == "offset"]
    y = np.array([c["label"] for c in clips])
    lead = np.array([c["effective_lead_s"] for c in clips])
    mag = np.array([abs(c["offset_frames"]) for c in clips])
    sigma = REALISM["syllable_jitter_s"] / np.sqrt(np.maximum([c["syllables"] for c in clips], 1))
    rng = np.random.default_rng(seed)
    noisy = [lead + rng.normal(0.0, sigma) for _ in range(draws)]
    all_shifts = offset_shifts(config.offset_frames, fps)

    def figures(keep: np.ndarray, shifts: np.ndarray) -> dict:
        exact = offset_posterior(lead[keep], lead_range, shifts)
        jit = [_plain_auc(y[keep], offset_posterior(x[keep], lead_range, shifts, sigma[keep])) for x in noisy]
        return {
            "n_fake": int(y[keep].sum()),
            "n_real": int((y[keep] == 0).sum()),
            "exact": _auc(y[keep], exact),
            "jitter": {
                "mean": round(float(np.mean(jit)), 4),
                "range": np.quantile(jit, [0.025, 0.975]).round(4).tolist(),
            },
        }

    out = {"all": figures(np.ones(len(y), bool), all_shifts)}
    for m in range(config.offset_frames[0], config.offset_frames[1] + 1):
        if not np.any(mag == m):
            continue
        keep = (y == 0) | (mag == m)
        one = offset_shifts(config.offset_frames, fps, (m,))
        out[f"{m}_frames"] = figures(keep, all_shifts) | {
            "magnitude_aware_exact": _auc(y[keep], offset_posterior(lead[keep], lead_range, one))
        }
    return out


def simulated_ceiling(config, n: int = 100_000, seed: int = 0) -> dict:
    """The offset ceiling at the distribution level: ``n`` reals and ``n`` offset fakes drawn as the generator draws
    them (syllable counts from the generator's own ``syllables``), AUC overall and per magnitude, exact and jittered."""
    from components.demo_data.benchmark import REALISM
    from components.demo_data.speech import syllables

    rng = np.random.default_rng(seed)
    fps, dur = config.talking_fps, config.talking_duration_s
    lead_range = REALISM["lead_s"]
    counts = np.array([syllables_in_clip(syllables(rng, -1.5, dur + 1.5), dur) for _ in range(2000)])
    low, high = config.offset_frames
    frames = rng.integers(low, high + 1, n) * np.where(rng.random(n) < 0.5, 1, -1)
    lead = rng.uniform(*lead_range, 2 * n) - np.r_[np.zeros(n), frames / fps]
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    mag = np.r_[np.zeros(n, int), np.abs(frames)]
    sigma = REALISM["syllable_jitter_s"] / np.sqrt(np.maximum(rng.choice(counts, 2 * n), 1))
    seen = lead + rng.normal(0.0, sigma)
    shifts = offset_shifts(config.offset_frames, fps)
    exact, jit = offset_posterior(lead, lead_range, shifts), offset_posterior(seen, lead_range, shifts, sigma)
    out = {
        "n_per_class": n,
        "syllables_in_clip": {"median": float(np.median(counts)), "range": [int(counts.min()), int(counts.max())]},
        "all": {"exact": _plain_auc(y, exact), "jitter": _plain_auc(y, jit)},
    }
    for m in range(low, high + 1):
        keep = (y == 0) | (mag == m)
        out[f"{m}_frames"] = {"exact": _plain_auc(y[keep], exact[keep]), "jitter": _plain_auc(y[keep], jit[keep])}
    return out


def ideal_scores(clips: list[dict], config) -> np.ndarray:
    """The ideal observer's score per clip (higher: more likely fake): 1 where a gesture no real shows is seen
    (:func:`unexplained_gestures`), else the offset posterior of the clip's effective lead (exact)."""
    from components.demo_data.benchmark import REALISM

    lead = np.array([c["effective_lead_s"] for c in clips])
    posterior = offset_posterior(lead, REALISM["lead_s"], offset_shifts(config.offset_frames, config.talking_fps))
    return np.where([c.get("unexplained", 0) >= 1 for c in clips], 1.0, posterior)


def split_figures(clips: list[dict], config) -> dict:
    """The ideal observer's AUC on ``clips``: all fakes and each fake type against all reals, the offset detail and
    the unexplained events of the fakes driven by another speaker."""
    y = np.array([c["label"] for c in clips])
    scores = ideal_scores(clips, config)
    out: dict = {"n_real": int((y == 0).sum()), "n_fake": int(y.sum()), "all": _auc(y, scores)}
    for kind in ("offset", "partial", "other_speaker"):
        keep = (y == 0) | np.array([c["fake_type"] == kind for c in clips])
        out[kind] = _auc(y[keep], scores[keep])
        if kind != "offset":
            events = [c["unexplained"] for c in clips if c["fake_type"] == kind]
            out[f"{kind}_events"] = {
                "with_one_or_more": sum(e >= 1 for e in events),
                "with_two_or_more": sum(e >= 2 for e in events),
            }
    out["offset_detail"] = offset_ceiling(clips, config)
    return out


def simulated_rows(config, n: int, seed: int = 0) -> list[dict]:
    """``n`` new reals and ``n`` new fakes of each type as truth rows, drawn by the generator's own ``_mouth_track``
    (lead, shift, manipulated segment): new talking-head indices give new speakers and new other-speaker candidates."""
    from components.demo_data.benchmark import _mouth_track
    from components.demo_data.core import _syllables

    frames = round(config.talking_duration_s * config.talking_fps)
    rows = []
    for k, kind in enumerate(["", "offset", "partial", "other_speaker"] * n):
        index = 10_000 + k
        syl = _syllables(config, ["bench", index])
        params = {"fake_type": kind, "index": index}
        _, info = _mouth_track(config, params, syl, frames, np.random.default_rng([seed, k]))
        rows.append(
            {"index": index, "video_id": f"sim{k}", "split": "simulated", "fake_type": kind}
            | {"authenticity": "fake" if kind else "real"}
            | {key: info[key] for key in ("lead_s", "offset_frames", "manipulated_frames")}
        )
    return rows


def ceiling_figures(home: Path, simulate: int = 100_000, simulate_clips: int = 1000) -> dict:
    """Every ceiling figure of the benchmark state under ``home``: its test split, all its clips (the same
    generator, three times the clips), ``simulate_clips`` new clips of each kind, and the offset ceiling at the
    distribution level (``simulate`` clips per class)."""
    from components.demo_data.benchmark import REALISM

    config, rows = split_clips(home)
    clips = clip_evidence(config, rows)
    return {
        "lead_s": list(REALISM["lead_s"]),
        "syllable_jitter_s": REALISM["syllable_jitter_s"],
        "test": split_figures([c for c in clips if c["split"] == "test"], config),
        "all_splits": split_figures(clips, config),
        "simulated": split_figures(clip_evidence(config, simulated_rows(config, simulate_clips)), config),
        "offset_distribution": simulated_ceiling(config, simulate),
    }


# -------------------------------------------------------------------------------------------------- model


def window_logits_by_hop(model, videos: list, hops: tuple[float, ...]) -> list[dict[float, np.ndarray]]:
    """Per video and stride: the window logits ``predict_video`` would aggregate at that ``hop_s`` (each distinct
    window start is scored once; at the model's own stride and aggregation the video scores are evaluate's)."""
    from components.finetune_lipsync.model import AVWindows, extract_window, window_logits, window_starts

    c = model.config
    n_frames, n_samples = max(1, round(c.window_s * c.fps)), max(1, round(c.window_s * c.sample_rate))
    out = []
    for v in videos:
        starts = {h: window_starts(len(v.crops) / v.fps, c.window_s, h) for h in hops}
        unique = sorted({round(float(s), 6) for ss in starts.values() for s in ss})
        cut = [extract_window(v.crops, v.audio, v.fps, s, n_frames, c.fps, n_samples, c.sample_rate) for s in unique]
        av = AVWindows(np.stack([w[0] for w in cut]), np.stack([w[1] for w in cut]), np.array(unique, np.float32))
        logit = dict(zip(unique, window_logits(model, av), strict=True))
        out.append({h: np.array([logit[round(float(s), 6)] for s in ss]) for h, ss in starts.items()})
    return out


def _window_inside(segment_s: tuple[float, float], duration_s: float, window_s: float, hop_s: float) -> bool:
    from components.finetune_lipsync.model import window_starts

    lo, hi = segment_s
    return any(lo <= s and s + window_s <= hi for s in window_starts(duration_s, window_s, hop_s))


def model_figures(home: Path, data: Path, model_dir: Path, hops: tuple[float, ...] = HOPS) -> dict:
    """The trained model beside the ceiling, and the stride / aggregation levers (chosen on validation)."""
    import lipsync_gpu  # benchmarks/lipsync_gpu.py, beside this file

    from components.common.cpus import set_torch_threads
    from components.demo_data.benchmark import REALISM
    from components.finetune_lipsync.config import AGGREGATIONS, FinetuneLipsyncConfig
    from components.finetune_lipsync.data import split_by_video, training_pool
    from components.finetune_lipsync.model import aggregate, load_model

    config, rows = split_clips(home)
    _, videos = lipsync_gpu.load_export(data)
    cfg = FinetuneLipsyncConfig()  # the split train_recipe made (as lipsync_gpu.py evaluate)
    _, val = split_by_video(training_pool(videos), cfg.val_fraction, cfg.seed)
    test = [v for v in videos if v.split == "test"]
    set_torch_threads()
    model = load_model(model_dir, "cpu")
    c = model.config
    logger.info("scoring %d validation and %d test videos at strides %s", len(val), len(test), hops)
    val_logits, test_logits = window_logits_by_hop(model, val, hops), window_logits_by_hop(model, test, hops)
    evidence = {e["video_id"]: e for e in clip_evidence(config, [r for r in rows if r["split"] == "test"])}

    def scores(per_video: list[dict], hop: float, method: str) -> np.ndarray:
        return np.array([aggregate(w[hop], method) for w in per_video])

    def by_type(videos: list, s: np.ndarray, auc) -> dict:
        y = np.array([v.label for v in videos])
        out = {"all": auc(y, s)}
        for kind in sorted({v.fake_type for v in videos if v.label}):
            keep = (y == 0) | np.array([v.fake_type == kind for v in videos])
            out[kind] = auc(y[keep], s[keep])
        return out

    y_val = np.array([v.label for v in val])
    val_default = scores(val_logits, c.hop_s, c.video_aggregation)
    levers = []
    for hop in hops:
        for method in AGGREGATIONS:
            val_scores = scores(val_logits, hop, method)
            levers.append(
                {
                    "hop_s": hop,
                    "video_aggregation": method,
                    "val": by_type(val, val_scores, _plain_auc),
                    "val_gain_over_default": lipsync_gpu.paired_auc(y_val, val_default, val_scores)["b_minus_a"],
                    "test": by_type(test, scores(test_logits, hop, method), _auc),
                }
            )

    y = np.array([v.label for v in test])
    ev = [evidence[v.video_id] for v in test]
    fps, dur = config.talking_fps, config.talking_duration_s
    low, high = REALISM["lead_s"]
    default = scores(test_logits, c.hop_s, c.video_aggregation)

    def beside(keep: np.ndarray, extra: dict | None = None) -> dict:
        row = {"n_fake": int(y[keep].sum()), "n_real": int((y[keep] == 0).sum()), "model": _auc(y[keep], default[keep])}
        return row | (extra or {})

    reals = y == 0
    ideal = ideal_scores(ev, config)
    per_type = {"all": beside(np.ones(len(y), bool), {"ceiling": _auc(y, ideal)})}
    for kind in ("offset", "partial", "other_speaker"):
        keep = reals | np.array([e["fake_type"] == kind for e in ev])
        per_type[kind] = beside(keep, {"ceiling": _auc(y[keep], ideal[keep])})
    offset_rows = {}
    for m in range(config.offset_frames[0], config.offset_frames[1] + 1):
        keep = reals | np.array([e["fake_type"] == "offset" and abs(e["offset_frames"]) == m for e in ev])
        offset_rows[f"{m}_frames"] = beside(keep, {"ceiling": _auc(y[keep], ideal[keep])})
    inside = np.array([low <= e["effective_lead_s"] <= high for e in ev])
    is_offset = np.array([e["fake_type"] == "offset" for e in ev])
    for name, part in (("lead_inside_reals_range", inside), ("lead_outside_reals_range", ~inside)):
        keep = reals | (is_offset & part)
        offset_rows[name] = beside(keep, {"ceiling": _auc(y[keep], ideal[keep])})

    partial_rows = {}
    part = [(i, e) for i, e in enumerate(ev) if e["fake_type"] == "partial"]
    finest = min(hops)

    def segment(e: dict) -> tuple[float, float]:
        return e["manipulated_frames"][0] / fps, e["manipulated_frames"][1] / fps

    def window_inside(e: dict) -> bool:
        return _window_inside(segment(e), dur, c.window_s, c.hop_s)

    groups = {
        "segment_under_1.25s": lambda e: segment(e)[1] - segment(e)[0] < 1.25,
        "segment_1.25s_or_more": lambda e: segment(e)[1] - segment(e)[0] >= 1.25,
        "a_default_window_inside": window_inside,
        "no_default_window_inside": lambda e: not window_inside(e),
    }
    for name, rule in groups.items():
        keep = reals.copy()
        keep[[i for i, e in part if rule(e)]] = True
        if keep.sum() > reals.sum():
            row = beside(keep, {"ceiling": _auc(y[keep], ideal[keep])})
            for method in ("mean_logit", "max", "top2_logit"):
                row[f"hop_{finest}_{method}"] = _auc(y[keep], scores(test_logits, finest, method)[keep])
            partial_rows[name] = row
    return {
        "model": str(model_dir),
        "default": {"hop_s": c.hop_s, "video_aggregation": c.video_aggregation},
        "videos": {"val": len(val), "test": len(test)},
        "per_type_vs_ceiling": per_type,
        "offset_vs_ceiling": offset_rows,
        "partial": partial_rows,
        "levers": levers,
        "test_scores": [
            {k: e[k] for k in ("video_id", "label", "fake_type", "offset_frames", "effective_lead_s")}
            | {"score": round(float(p), 4), "ceiling": round(float(q), 4)}
            for e, p, q in zip(ev, default, ideal, strict=True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    ce = sub.add_parser("ceiling", help="the ideal observer's figures (seconds)")
    ce.add_argument("--home", type=Path, required=True, help="the benchmark's state folder (quality.py's --home)")
    ce.add_argument("--simulate", type=int, default=100_000, help="clips per class of the offset's distribution")
    ce.add_argument("--simulate-clips", type=int, default=1000, help="new clips of each kind, every fake type's")
    mo = sub.add_parser("model", help="a trained model beside the ceiling, and the evaluation-time levers")
    mo.add_argument("--home", type=Path, required=True)
    mo.add_argument("--data", type=Path, required=True, help="the export the model was trained on")
    mo.add_argument("--model", type=Path, required=True)
    mo.add_argument("--hops", default=",".join(map(str, HOPS)), help="comma-separated strides in seconds")
    for p in (ce, mo):
        p.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.mode == "ceiling":
        figures = ceiling_figures(args.home, args.simulate, args.simulate_clips)
    else:
        hops = tuple(float(h) for h in args.hops.split(","))
        figures = model_figures(args.home, args.data, args.model, hops)
    text = json.dumps(figures, indent=1, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The hard benchmark: a generated library where both models have something to get wrong.

``clipsync demo-data --profile benchmark`` writes it like the demo library (a client's bucket with
``videos/*.mp4`` and ``labels/records.jsonl``, and ``truth.jsonl`` outside it), plus ``benchmark.json`` beside
the truth: the settings, every fake type and condition with its count and share, the search categories with
their labels, and the held-out test queries. Its default size (925 files) is far beyond ``make run``'s demo.

Lip-sync (``talking_heads`` clips, half real, half fake). The fakes are hard in the ways real lip-sync fakes
are (the demo's fakes shift the whole clip by 0.3-0.8 s or use unrelated speech):

- ``offset``: the mouth follows the clip's own speech, 1-3 frames (40-120 ms) early or late, the whole clip;
- ``partial``: the mouth follows the clip's own speech except for one 1.0-1.5 s segment, where it follows
  another speaker (blended in and out over two frames);
- ``other_speaker``: the mouth follows another speaker for the whole clip, the one among
  ``similar_candidates`` whose speech envelope correlates best with the clip's own.

Version 2 (``BENCHMARK_VERSION``) makes the reals as imperfect as real footage (``REALISM``), so that a fake's
difference from a real is small: a speaker's lips lead (or lag) the sound by -20..80 ms, each syllable's gesture
jitters around that (25 ms s.d.), is longer or shorter than its sound and opens the mouth by its own amount;
gestures are smoothed into each other (coarticulation); the mouth moves in pauses too (breath, lip presses); faces
blink and move their heads more; a clip has a hand or a microphone over the mouth for 0.3-0.9 s with probability
12 % and is low-resolution (rendered at 40-65 % of the side and upscaled) with probability 15 %. Fakes are
articulated the same way: they differ from reals only in what drives the mouth. Version 1 had the mouth follow the
voice exactly.

Every clip, real or fake, draws its conditions independently of its label: a head pose (``frontal``,
``tilted`` 15-30 degrees of roll, ``turned``: a yaw-like perspective squeeze to 55-80 %), a face size
(``small`` 18-25 % of the frame side, ``medium`` 25-35 %, ``large`` 35-48 %), an x264 CRF from ``crf_levels``
(the bitrate it gave is in the truth) and how expressive the speaker is (mouth opening scaled by 0.55-1.0,
with a slow articulation jitter). ``two_face_fraction`` of them are two-face interviews: two faces side by
side at independent sizes, one speaking (the manipulated one in a fake), the other closed-mouthed or
murmuring, so that neither the larger nor the longer track is reliably the speaker.

Search (``clips_per_category`` clips in each of 21 categories, 7 groups of 3): each group holds one of the
demo's client categories and two near distractors drawn by the same scene code with another subject
(laparoscopy vs. arthroscopy and colonoscopy, forklift near a walkway vs. a forklift carrying pallets and a
conveyor, ...). A clip is labelled with its category's main phrase, 2-3 of its 5 paraphrases and one of its
group's phrases (so labels are shared across categories: multi-label training). The test queries are never
labels: 3 held-out paraphrases per category (new combinations of the category's words: the demo base CLIP
has no language prior that a real synonym could draw on) and 2 held-out group queries per group, whose right
answers are the clips of all three categories of the group (multi-label queries).

Why this file is long: the benchmark's plan (fake types, conditions, categories, held-out queries) and its
renderers share one seeded plan that benchmark.json describes; splitting them would split that description.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from components.demo_data.config import FACE_SIZES, FAKE_TYPES, POSES, BenchmarkConfig
from components.demo_data.core import (
    _S_PLAN,
    _S_SEARCH,
    _S_TALK,
    DemoSummary,
    _face_truth,
    _Job,
    _name_and_date,
    _pose_dict,
    _render_search,
    _rng,
    _syllables,
    write_library,
)
from components.demo_data.scenes import (
    CATEGORIES,
    Renderer,
    render_bowling,
    render_ice_hockey,
    render_industrial,
    render_medical,
    render_product,
    render_security,
    render_traffic,
    render_underwater,
    render_welding,
)

__all__ = ["BENCHMARK_FILE", "BenchmarkConfig", "generate_benchmark", "held_out_queries"]

BENCHMARK_FILE = "benchmark.json"

FAKE_TYPE_DOCS = {
    "offset": "mouth follows the clip's own speech 1-3 frames early or late, the whole clip",
    "partial": "mouth follows the clip's own speech except one 1.0-1.5 s segment driven by another speaker",
    "other_speaker": "mouth follows another speaker with the most similar speech envelope, the whole clip",
}
POSE_DOCS = {
    "frontal": "in-plane roll within 8 degrees, no perspective",
    "tilted": "in-plane roll of 15-30 degrees",
    "turned": "a yaw-like perspective squeeze of the far side to 55-80 %, roll within 10 degrees",
}
FACE_SIZE_RANGES = {"small": (0.18, 0.25), "medium": (0.25, 0.35), "large": (0.35, 0.48)}

#: The generator's version, in benchmark.json and every truth row. 1: a real speaker's mouth followed the voice
#: exactly (lip-sync AUC 1.000 at every level: too easy). 2: real footage's imperfections (``REALISM``). Its
#: parameters were fixed before any model was trained on version 2; changing one makes a new version.
BENCHMARK_VERSION = 2

#: How mouths and faces depart from the voice in real footage (version 2), for reals and fakes alike: a fake differs
#: from a real only in what drives the mouth. Drawn per clip (speaker), per syllable or per event, never by label.
REALISM: dict[str, Any] = {
    "lead_s": (-0.02, 0.08),  # per speaker: the lips lead the sound by this much (negative: lag behind it)
    "syllable_jitter_s": 0.025,  # per syllable: s.d. of the gesture's onset around the speaker's lead
    "syllable_stretch": (0.8, 1.3),  # per syllable: gesture / sound duration (coarticulation spreads gestures)
    "syllable_gain": (0.7, 1.2),  # per syllable: mouth opening / loudness (the vowel, not the volume, opens it)
    "smoothing_frames": (0.5, 1.5),  # per speaker: Gaussian s.d. of coarticulation smoothing, in frames
    "silent_moves_per_s": 0.4,  # mouth movements without sound (breath, lip press, smile): Poisson rate
    "silent_move_s": (0.2, 0.6),
    "silent_move_opening": (0.08, 0.35),
    "blinks_per_s": (0.1, 0.5),  # per face; a blink shuts the eyes for 3-4 frames
    "head_wobble_of_side": (0.004, 0.035),  # head motion amplitude, fraction of the frame side (v1: up to 0.02)
    "head_wobble_deg": (0.0, 5.0),  # head rotation amplitude (v1: up to 3)
    "occluded_fraction": 0.12,  # clips where a hand or a microphone hides the mouth for a while
    "occlusion_s": (0.3, 0.9),
    "low_res_fraction": 0.15,  # clips recorded at low resolution: rendered at a fraction of the side, upscaled
    "low_res_scale": (0.4, 0.65),
}


@dataclass(frozen=True)
class BenchCategory:
    """A search category of the benchmark.

    Attributes:
        name: Category name (label records' ``category``).
        group: The group of three near categories it belongs to.
        client: One of the demo's client categories (else a near distractor).
        query: The main phrase, always among a clip's labels.
        paraphrases: Training phrases; each clip gets 2-3.
        held_out: Test queries, never used as labels.
        render: The scene renderer.
    """

    name: str
    group: str
    client: bool
    query: str
    paraphrases: tuple[str, ...]
    held_out: tuple[str, ...]
    render: Renderer


#: group -> (training phrases, one per clip; held-out multi-label test queries)
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "surgery": (
        ("surgical endoscopy footage", "medical procedure video"),
        ("endoscopy during a medical procedure", "surgical video footage"),
    ),
    "warehouse": (
        ("warehouse operations footage", "logistics facility video"),
        ("footage of warehouse logistics", "operations in a logistics warehouse"),
    ),
    "sport": (
        ("sports footage", "athletes competing"),
        ("footage of athletes competing", "competitive sports video"),
    ),
    "surveillance": (
        ("surveillance camera footage", "CCTV recording"),
        ("recording from a surveillance camera", "CCTV camera footage"),
    ),
    "unboxing": (
        ("product unboxing video", "consumer electronics reveal"),
        ("video revealing a consumer product", "electronics taken out of a box"),
    ),
    "metalwork": (
        ("metalworking footage", "hot work in a fabrication shop"),
        ("fabrication shop metalworking", "hot metal work footage"),
    ),
    "subsea": (
        ("subsea footage", "underwater camera video"),
        ("footage from an underwater camera", "subsea video survey"),
    ),
}


def _client_category(name: str, group: str, held_out: tuple[str, ...]) -> BenchCategory:
    """One of the demo's client categories (its phrases and scene), placed in a group with held-out queries."""
    demo = next(c for c in CATEGORIES if c.name == name)
    return BenchCategory(name, group, True, demo.query, demo.paraphrases, held_out, demo.render)


BENCH_CATEGORIES: tuple[BenchCategory, ...] = (
    _client_category(
        "medical",
        "surgery",
        (
            "laparoscopic gallbladder removal",
            "keyhole cholecystectomy with a grasper",
            "abdominal surgery removing the gallbladder",
        ),
    ),
    BenchCategory(
        "arthroscopy",
        "surgery",
        False,
        "arthroscopic knee surgery",
        (
            "keyhole surgery inside the knee joint",
            "arthroscope view of cartilage and meniscus",
            "minimally invasive knee joint repair",
            "probe examining the knee cartilage",
            "orthopaedic arthroscopy of the knee",
        ),
        (
            "knee arthroscopy with a probe",
            "cartilage repair through an arthroscope",
            "keyhole orthopaedic surgery on a knee",
        ),
        partial(render_medical, variant="arthroscopy"),
    ),
    BenchCategory(
        "colonoscopy",
        "surgery",
        False,
        "colonoscopy examination",
        (
            "endoscope travelling through the colon",
            "bowel lumen seen by a colonoscope",
            "gastrointestinal endoscopy of the large intestine",
            "screening colonoscopy footage",
            "ringed folds of the colon wall",
        ),
        (
            "colonoscope view of the bowel",
            "screening endoscopy of the colon",
            "large intestine lumen during colonoscopy",
        ),
        partial(render_medical, variant="colonoscopy"),
    ),
    _client_category(
        "industrial_safety",
        "warehouse",
        (
            "pedestrian close to a forklift in the warehouse",
            "lift truck passing a marked walkway",
            "near miss on a pedestrian lane",
        ),
    ),
    BenchCategory(
        "forklift_pallets",
        "warehouse",
        False,
        "forklift carrying a loaded pallet",
        (
            "lift truck moving pallets of boxes",
            "warehouse forklift transporting stacked cartons",
            "pallet handling with a forklift",
            "forklift driving through an empty aisle",
            "material handling with loaded forks",
        ),
        (
            "forklift moving a pallet of cartons",
            "lift truck with loaded forks in an aisle",
            "pallets transported by a warehouse forklift",
        ),
        partial(render_industrial, variant="pallets"),
    ),
    BenchCategory(
        "conveyor",
        "warehouse",
        False,
        "parcels on a conveyor belt",
        (
            "cardboard boxes riding a conveyor",
            "package sorting conveyor line",
            "conveyor belt moving cartons",
            "distribution centre parcel conveyor",
            "boxes travelling on rollers",
        ),
        (
            "cartons moving along a conveyor line",
            "parcel sorting on rollers",
            "conveyor belt carrying cardboard packages",
        ),
        partial(render_industrial, variant="conveyor"),
    ),
    _client_category(
        "niche_sport",
        "sport",
        (
            "granite stone sliding to the button",
            "curling throw with sweepers",
            "stone delivered toward the house on the ice sheet",
        ),
    ),
    BenchCategory(
        "ice_hockey",
        "sport",
        False,
        "ice hockey game",
        (
            "hockey players chasing the puck",
            "overhead view of an ice hockey rink",
            "skaters with sticks on the rink",
            "face-off circles and blue lines on ice",
            "ice hockey match from above",
        ),
        (
            "puck chased by hockey skaters",
            "rink view of an ice hockey match",
            "players with sticks at the face-off circles",
        ),
        render_ice_hockey,
    ),
    BenchCategory(
        "bowling",
        "sport",
        False,
        "ten pin bowling strike",
        (
            "bowling ball rolling down the lane",
            "ball knocking down ten pins",
            "wooden bowling lane with gutters",
            "bowler's view of the pins",
            "bowling alley throw",
        ),
        (
            "ball rolling into the ten pins",
            "strike on a wooden bowling lane",
            "bowling alley lane with pins and gutters",
        ),
        render_bowling,
    ),
    _client_category(
        "security",
        "surveillance",
        (
            "trespasser walking through the gate at night",
            "unauthorized person crossing the perimeter fence",
            "CCTV of an intruder in a no entry zone",
        ),
    ),
    BenchCategory(
        "vehicle_gate",
        "surveillance",
        False,
        "vehicle passing the security gate",
        (
            "car driving through the fence gate at night",
            "CCTV footage of a vehicle at the perimeter",
            "headlights of a car entering the site",
            "night security camera sees a car",
            "vehicle access through the gate",
        ),
        (
            "car entering through the security gate at night",
            "vehicle with headlights at the perimeter fence",
            "CCTV of a car passing the gate",
        ),
        partial(render_security, variant="vehicle"),
    ),
    BenchCategory(
        "traffic",
        "surveillance",
        False,
        "daytime road traffic camera",
        (
            "cars driving along a road",
            "traffic CCTV of a two lane road",
            "vehicles passing on the highway",
            "road with lane markings and moving cars",
            "daylight traffic monitoring footage",
        ),
        (
            "cars passing a traffic camera in daylight",
            "two lane road with moving vehicles",
            "highway traffic monitoring CCTV",
        ),
        render_traffic,
    ),
    _client_category(
        "custom_product",
        "unboxing",
        (
            "round thermostat taken out of the box",
            "unboxing a wifi smart thermostat",
            "hands lifting the thermostat out of its package",
        ),
    ),
    BenchCategory(
        "phone_unboxing",
        "unboxing",
        False,
        "smartphone unboxing",
        (
            "unboxing a new mobile phone",
            "taking a smartphone out of its box",
            "hands lifting a phone from the package",
            "product reveal of a touchscreen phone",
            "new cell phone unboxed on a desk",
        ),
        (
            "mobile phone taken out of the box",
            "hands lifting a new smartphone from its package",
            "touchscreen phone unboxed on a wooden desk",
        ),
        partial(render_product, variant="phone"),
    ),
    BenchCategory(
        "headphones_unboxing",
        "unboxing",
        False,
        "wireless headphones unboxing",
        (
            "unboxing over-ear headphones",
            "taking headphones out of the box",
            "hands lifting a headset from its package",
            "product reveal of noise cancelling headphones",
            "new headset unboxed on a desk",
        ),
        (
            "over-ear headset taken out of the box",
            "unboxing noise cancelling wireless headphones",
            "headphones lifted from the package on a desk",
        ),
        partial(render_product, variant="headphones"),
    ),
    _client_category(
        "welding",
        "metalwork",
        (
            "sparks from arc welding a seam",
            "MIG welding a steel plate",
            "bright arc and glowing weld bead",
        ),
    ),
    BenchCategory(
        "grinding",
        "metalwork",
        False,
        "angle grinder cutting metal",
        (
            "grinding disc throwing a stream of sparks",
            "metal grinding in a workshop",
            "abrasive wheel on a steel plate",
            "angle grinder sparks flying sideways",
            "fabrication shop grinding footage",
        ),
        (
            "sparks from an angle grinder disc",
            "grinding wheel on steel in the workshop",
            "abrasive disc cutting a metal plate",
        ),
        partial(render_welding, variant="grinding"),
    ),
    BenchCategory(
        "plasma_cutting",
        "metalwork",
        False,
        "plasma cutting steel plate",
        (
            "plasma torch cutting through metal",
            "CNC plasma cutter leaving a kerf",
            "cyan plasma arc slicing steel",
            "sparks falling below a plasma cut",
            "metal fabrication with a plasma torch",
        ),
        (
            "plasma torch slicing a steel plate",
            "kerf left by a plasma cutter",
            "cutting metal with a cyan plasma arc",
        ),
        partial(render_welding, variant="plasma"),
    ),
    _client_category(
        "underwater_inspection",
        "subsea",
        (
            "ROV inspecting a subsea pipeline",
            "pipeline field joint on the seabed",
            "offshore pipe survey footage",
        ),
    ),
    BenchCategory(
        "hull_inspection",
        "subsea",
        False,
        "ship hull inspection",
        (
            "ROV survey of a vessel hull",
            "marine growth on ship hull plating",
            "underwater inspection of a hull weld seam",
            "diver camera along the hull of a ship",
            "hull plating below the waterline",
        ),
        (
            "ROV inspecting hull plating",
            "weld seams on a ship hull underwater",
            "vessel hull survey below the waterline",
        ),
        partial(render_underwater, variant="hull"),
    ),
    BenchCategory(
        "coral_survey",
        "subsea",
        False,
        "coral reef survey",
        (
            "colourful coral heads on the seabed",
            "diver camera over a reef",
            "marine life survey of a coral reef",
            "underwater footage of reef corals",
            "ROV transect over coral",
        ),
        (
            "survey of coral heads on a reef",
            "diver camera footage of a coral reef",
            "reef transect over the seabed corals",
        ),
        partial(render_underwater, variant="coral"),
    ),
)


def held_out_queries() -> list[dict[str, Any]]:
    """The held-out search queries and the categories whose clips answer them.

    Returns:
        Rows ``{"query", "kind", "categories"}``: ``kind`` is ``paraphrase`` (one category) or ``multi_label``
        (a group query: the three categories of the group).
    """
    rows = [{"query": q, "kind": "paraphrase", "categories": [c.name]} for c in BENCH_CATEGORIES for q in c.held_out]
    for group, (_, held_out) in GROUPS.items():
        members = [c.name for c in BENCH_CATEGORIES if c.group == group]
        rows += [{"query": q, "kind": "multi_label", "categories": members} for q in held_out]
    return rows


# ----------------------------------------------------------------------------------------------- plan


def _plan_benchmark(config: BenchmarkConfig) -> list[_Job]:
    rng = _rng(config, _S_PLAN, 0)
    jobs: list[_Job] = []
    for c, cat in enumerate(BENCH_CATEGORIES):
        group_phrases = GROUPS[cat.group][0]
        for i in range(config.clips_per_category):
            k = int(rng.integers(2, 4))
            chosen = sorted(int(j) for j in rng.choice(len(cat.paraphrases), size=k, replace=False))
            labels = [cat.query, *(cat.paraphrases[j] for j in chosen), group_phrases[int(rng.integers(2))]]
            jobs.append(_Job("search", cat.name, labels, params={"category": c, "index": i}, group="search"))
    n_two = round(config.talking_heads * config.two_face_fraction)
    n_fakes = 0
    # Its own stream, so that the version-1 plan (search clips, names, conditions) stays as it was.
    flaws = _rng(config, _S_PLAN, 1)
    for i in range(config.talking_heads):
        two = i < n_two
        fake = i % 2 == 1
        params: dict[str, Any] = {
            "env": ["bench", i],
            "index": i,
            "scene": "two_face" if two else "single",
            "fake_type": FAKE_TYPES[n_fakes % len(FAKE_TYPES)] if fake else "",
            "pose": POSES[int(rng.integers(len(POSES)))],
            "face_size": FACE_SIZES[int(rng.integers(len(FACE_SIZES)))],
            "crf": int(config.crf_levels[int(rng.integers(len(config.crf_levels)))]),
            "occluded": bool(flaws.random() < REALISM["occluded_fraction"]),
            "low_res": bool(flaws.random() < REALISM["low_res_fraction"]),
        }
        n_fakes += fake
        jobs.append(
            _Job(
                "two_face" if two else "talking_head",
                "interview" if two else "talking_head",
                [],  # lip-sync data only: the search benchmark is the search clips
                "fake" if fake else "real",
                params,
                group="talking",
            )
        )
    _name_and_date(jobs, config, rng)
    return jobs


# --------------------------------------------------------------------------------------------- render


def _similar_speaker(config: BenchmarkConfig, own: np.ndarray, index: int, frames: slice) -> tuple[np.ndarray, float]:
    """The syllables of the candidate speaker whose envelope correlates best with ``own`` over ``frames``."""
    from components.demo_data.speech import frame_envelope

    n, fps = len(own), config.talking_fps
    best, best_corr = None, -2.0
    for k in range(config.similar_candidates):
        syl = _syllables(config, [f"other{k}", index])
        a, b = own[frames], frame_envelope(syl, n, fps)[frames]
        corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else -1.0
        if corr > best_corr:
            best, best_corr = syl, corr
    return best, best_corr


def _articulate(syl: np.ndarray, n: int, fps: float, lead_s: float, rng: np.random.Generator) -> np.ndarray:
    """A speaker's mouth opening per frame for the syllables ``syl`` that drive it, imperfectly (``REALISM``).

    Each syllable's gesture starts ``lead_s`` before its sound, give or take a per-syllable jitter, lasts longer or
    shorter than the sound (coarticulation) and opens the mouth by its own amount, not exactly its loudness.
    """
    from components.demo_data.speech import frame_envelope

    k = len(syl)
    stretch = rng.uniform(*REALISM["syllable_stretch"], k)
    visual = syl.copy()
    visual[:, 0] = syl[:, 0] - lead_s + rng.normal(0.0, REALISM["syllable_jitter_s"], k) - (stretch - 1) * syl[:, 1] / 2
    visual[:, 1] = syl[:, 1] * stretch
    visual[:, 2] = syl[:, 2] * rng.uniform(*REALISM["syllable_gain"], k)
    return frame_envelope(visual, n, fps)


def _silent_moves(config: BenchmarkConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Mouth movements without sound (breath, lip presses, a smile) per frame: raised-cosine bumps, Poisson times."""
    from components.demo_data.speech import frame_envelope

    k = int(rng.poisson(REALISM["silent_moves_per_s"] * config.talking_duration_s))
    moves = np.stack(
        [
            rng.uniform(-0.3, config.talking_duration_s, k),
            rng.uniform(*REALISM["silent_move_s"], k),
            rng.uniform(*REALISM["silent_move_opening"], k),
        ],
        axis=1,
    )
    return frame_envelope(moves, n, config.talking_fps)


def _blinks(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Eye closure per frame (0 open, 1 shut): blinks of 3-4 frames at a per-speaker rate, Poisson times."""
    closure = np.zeros(n)
    rate = float(rng.uniform(*REALISM["blinks_per_s"]))
    for start in np.sort(rng.uniform(0, n, int(rng.poisson(rate * n / fps)))).astype(int):
        profile = (0.5, 1.0, 1.0, 0.5) if rng.random() < 0.5 else (0.6, 1.0, 0.6)
        for i, v in enumerate(profile):
            if start + i < n:
                closure[start + i] = max(closure[start + i], v)
    return closure


def _mouth_track(
    config: BenchmarkConfig, params: dict, syl: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """The speaker's mouth opening per frame and what was done to it.

    Real or fake, the mouth is articulated the same imperfect way (:func:`_articulate`, silent moves, smoothing);
    a fake differs from a real only in the syllables that drive it.
    """
    from scipy.ndimage import gaussian_filter1d

    from components.demo_data.speech import frame_envelope

    fps = config.talking_fps
    lead_s = float(rng.uniform(*REALISM["lead_s"]))
    smoothing = float(rng.uniform(*REALISM["smoothing_frames"]))
    kind = params["fake_type"]
    info: dict[str, Any] = {
        "offset_frames": 0,
        "manipulated_frames": [0, n] if kind else [0, 0],
        "lead_s": round(lead_s, 4),
        "smoothing_frames": round(smoothing, 3),
    }
    if kind == "offset":
        low, high = config.offset_frames
        frames = int(rng.integers(low, high + 1)) * (1 if rng.random() < 0.5 else -1)
        info["offset_frames"] = frames
        shifted = syl.copy()
        shifted[:, 0] += frames / fps
        mouth = _articulate(shifted, n, fps, lead_s, rng)
    elif kind == "other_speaker":
        own = frame_envelope(syl, n, fps)
        other, info["envelope_corr"] = _similar_speaker(config, own, params["index"], slice(0, n))
        mouth = _articulate(other, n, fps, lead_s, rng)
    elif kind == "partial":
        own = frame_envelope(syl, n, fps)
        length = round(float(rng.uniform(*config.partial_s)) * fps)
        start = int(rng.integers(round(0.25 * fps), n - length - round(0.25 * fps) + 1))
        segment = slice(start, start + length)
        other, info["envelope_corr"] = _similar_speaker(config, own, params["index"], segment)
        weight = np.zeros(n)
        weight[segment] = 1.0
        weight[start - 1], weight[start] = 1 / 3, 2 / 3  # two-frame blends in and out
        weight[start + length - 1], weight[start + length] = 2 / 3, 1 / 3
        info["manipulated_frames"] = [start, start + length]
        mouth = (1 - weight) * _articulate(syl, n, fps, lead_s, rng) + weight * _articulate(other, n, fps, lead_s, rng)
    else:
        mouth = _articulate(syl, n, fps, lead_s, rng)
    mouth = np.maximum(mouth, _silent_moves(config, n, rng))
    return np.clip(gaussian_filter1d(mouth, smoothing, mode="nearest"), 0.0, 1.0), info


def _bench_pose(rng: np.random.Generator, size: int, pose: str, face_px: float, cx_range=None):
    from components.demo_data.faces import FacePose

    wobble_px = float(rng.uniform(*REALISM["head_wobble_of_side"])) * size
    margin = 0.75 * face_px + wobble_px
    if pose == "tilted":
        angle = float(rng.uniform(15.0, 30.0)) * (1 if rng.random() < 0.5 else -1)
    else:
        angle = float(rng.uniform(-8.0, 8.0) if pose == "frontal" else rng.uniform(-10.0, 10.0))
    low, high = cx_range if cx_range else (margin / size, 1 - margin / size)
    return FacePose(
        cx=float(rng.uniform(low, high)) * size,
        cy=float(rng.uniform(margin, size - margin)),
        face_px=face_px,
        angle_deg=angle,
        flip=bool(rng.random() < 0.5),
        squeeze=float(rng.uniform(0.55, 0.8)) if pose == "turned" else 1.0,
        squeeze_right=bool(rng.random() < 0.5),
        wobble_px=wobble_px,
        wobble_deg=float(rng.uniform(*REALISM["head_wobble_deg"])),
        wobble_hz=float(rng.uniform(0.2, 0.5)),
        wobble_phase=float(rng.uniform(0, 2 * np.pi)),
        gain=tuple(float(g) for g in rng.uniform(0.8, 1.12, 3)),
    )


def _occluder(config: BenchmarkConfig, rng: np.random.Generator, n: int) -> dict[str, Any]:
    """A hand (skin-coloured) or a microphone (dark) in front of the speaker's mouth for a while."""
    length = round(float(rng.uniform(*REALISM["occlusion_s"])) * config.talking_fps)
    start = int(rng.integers(0, n - length + 1))
    hand = bool(rng.random() < 0.5)
    colour = rng.uniform(0.85, 1.1, 3) * ((196.0, 150.0, 128.0) if hand else (38.0, 38.0, 44.0))
    return {
        "frames": [start, start + length],
        "hand": hand,
        "colour": colour.astype(np.float32),
        "dx": float(rng.uniform(-0.3, 0.3)),  # the object's centre from the mouth's, in mouth widths
        "dy": float(rng.uniform(0.0, 0.5)),
    }


def _paint_occluder(img: np.ndarray, occluder: dict[str, Any], face: dict) -> None:
    from components.demo_data import draw

    mx, my = face["mouth"]
    w = face["mouth_width"]
    cx, cy = mx + occluder["dx"] * w, my + occluder["dy"] * w
    if occluder["hand"]:
        draw.ellipse(img, cx, cy, 0.85 * w, 0.6 * w, occluder["colour"], angle=0.3)
    else:  # a microphone on a stand, from below
        draw.disc(img, cx, cy, 0.45 * w, occluder["colour"])
        draw.capsule(img, cx, cy, cx + 0.1 * w, img.shape[0], 0.12 * w, occluder["colour"])


def _low_resolution(frames: np.ndarray, scale: float) -> np.ndarray:
    """The frames as a low-resolution camera would give them: down to ``scale`` of the side, then back up."""
    import cv2

    h, w = frames.shape[1:3]
    small = (max(8, round(w * scale)), max(8, round(h * scale)))
    return np.stack([cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h)) for f in frames])


def _size_class(fraction: float) -> str:
    return next((k for k, (_, high) in FACE_SIZE_RANGES.items() if fraction < high), "large")


def _render_bench_talking(config: BenchmarkConfig, params: dict, rng: np.random.Generator, path: Path) -> dict:
    from components.demo_data import draw
    from components.demo_data.faces import FaceSprite, studio_background
    from components.demo_data.media import write_mp4
    from components.demo_data.speech import frame_envelope, speech_audio

    size, fps = config.size, config.talking_fps
    n = round(config.talking_duration_s * fps)
    syl = _syllables(config, params["env"])
    opening, info = _mouth_track(config, params, syl, n, rng)
    knots = rng.normal(0.0, 1.0, int(config.talking_duration_s * 4) + 2)
    jitter = np.interp(np.arange(n) / fps * 4, np.arange(len(knots)), knots)
    expressive = float(rng.uniform(0.55, 1.0))
    opening = np.clip(opening * expressive * (1 + 0.12 * jitter), 0.0, 1.0)
    two = params["scene"] == "two_face"
    if two:
        speaker = int(rng.integers(0, 2))
        fractions = rng.uniform(0.2, 0.3, 2)
        quiet = frame_envelope(_syllables(config, ["quiet", params["index"]]), n, fps) * 0.15
        if rng.random() < 0.5:
            quiet = np.full(n, 0.02)
        poses = [
            _bench_pose(rng, size, params["pose"] if i == speaker else "frontal", fractions[i] * size, cx)
            for i, cx in enumerate(((0.22, 0.32), (0.68, 0.78)))
        ]
        mouths = [opening if i == speaker else quiet for i in range(2)]
    else:
        speaker = 0
        low, high = FACE_SIZE_RANGES[params["face_size"]]
        fractions = [float(rng.uniform(low, high))]
        poses = [_bench_pose(rng, size, params["pose"], fractions[0] * size)]
        mouths = [opening]
    bg = studio_background(rng, size, size)
    noise = rng.normal(0.0, 1.5, (4, size, size, 1)).astype(np.float32)
    sprites = [FaceSprite(pose) for pose in poses]
    blinks = [_blinks(rng, n, fps) for _ in poses]
    occluder = _occluder(config, rng, n) if params["occluded"] else None
    frames = np.empty((n, size, size, 3), np.uint8)
    for f in range(n):
        img = bg + noise[f % len(noise)]
        for sprite, mouth, blink in zip(sprites, mouths, blinks, strict=True):
            sprite.paint(img, float(mouth[f]), f / fps, float(blink[f]))
        if occluder and occluder["frames"][0] <= f < occluder["frames"][1]:
            _paint_occluder(img, occluder, poses[speaker].truth(f / fps))
        frames[f] = draw.to_uint8(img)
    scale = float(rng.uniform(*REALISM["low_res_scale"])) if params["low_res"] else 1.0
    if params["low_res"]:
        frames = _low_resolution(frames, scale)
    info.update(
        occluded_frames=occluder["frames"] if occluder else [0, 0],
        low_res_scale=round(scale, 3),
        blinks=[int(np.sum(np.diff(np.r_[0.0, b]) > 0.4)) for b in blinks],
    )
    sound = speech_audio(syl, config.talking_duration_s, config.sample_rate, rng)
    write_mp4(path, frames, fps, sound, config.sample_rate, crf=params["crf"], preset=config.preset)
    faces = [_face_truth(p, n, fps, (size, size), i == speaker, i) for i, p in enumerate(poses)]
    return {
        "fps": float(fps),
        "n_frames": n,
        "width": size,
        "height": size,
        "faces": faces,
        "has_audio": True,
        "av_offset_s": info["offset_frames"] / fps,
        "fake_kind": params["fake_type"],
        "mouth_opening": [round(float(v), 4) for v in opening],
        "transform": {"poses": [_pose_dict(p) for p in poses], "speaker": speaker, "expressive": round(expressive, 3)},
        "benchmark": {
            "scene": params["scene"],
            "fake_type": params["fake_type"],
            "pose": params["pose"],
            "face_size": _size_class(float(fractions[speaker])),
            "face_fraction": round(float(fractions[speaker]), 3),
            "crf": params["crf"],
            "occluded": params["occluded"],
            "low_res": params["low_res"],
            "version": BENCHMARK_VERSION,
            "bitrate_kbps": round(path.stat().st_size * 8 / config.talking_duration_s / 1000, 1),
            **info,
        },
    }


def _render_bench_job(config: BenchmarkConfig, bucket: str, kind: str, params: dict, index: int) -> dict[str, Any]:
    path = Path(bucket) / params["name"]
    if kind == "search":
        cat = BENCH_CATEGORIES[params["category"]]
        truth = _render_search(config, params["category"], _rng(config, _S_SEARCH, index), path, BENCH_CATEGORIES)
        truth["benchmark"] = {"group": cat.group, "client_category": cat.client}
        return truth
    return _render_bench_talking(config, params, _rng(config, _S_TALK, index), path)


# ----------------------------------------------------------------------------------------------- main


def _shares(values: list[str]) -> dict[str, dict[str, float]]:
    counts = Counter(values)
    return {k: {"count": v, "share": round(v / len(values), 4)} for k, v in sorted(counts.items())}


def generate_benchmark(bucket_dir: Path, truth_dir: Path, config: BenchmarkConfig) -> DemoSummary:
    """Write the benchmark library into ``bucket_dir``, its truth and ``benchmark.json`` into ``truth_dir``.

    Args:
        bucket_dir: The client's bucket folder (created).
        truth_dir: Where ``truth.jsonl`` and ``benchmark.json`` go; keep it outside the bucket.
        config: What to generate.

    Returns:
        The summary (as for the demo library).
    """
    summary = write_library(bucket_dir, truth_dir, config, _plan_benchmark, _render_bench_job)
    rows = [json.loads(line) for line in summary.truth_path.read_text().splitlines()]
    talking = [r for r in rows if r["kind"] != "search"]
    fakes = [r for r in talking if r["authenticity"] == "fake"]
    search = [r for r in rows if r["kind"] == "search"]
    doc = {
        "profile": "benchmark",
        "version": BENCHMARK_VERSION,
        "config": asdict(config),
        "as_of": summary.as_of,
        "lipsync": {
            "videos": len(talking),
            "authenticity": _shares([r["authenticity"] for r in talking]),
            "fake_types": {
                k: {**v, "of": "fakes", "description": FAKE_TYPE_DOCS[k]}
                for k, v in _shares([r["fake_type"] for r in fakes]).items()
            },
            "scenes": _shares([r["scene"] for r in talking]),
            "poses": {k: {**v, "description": POSE_DOCS[k]} for k, v in _shares([r["pose"] for r in talking]).items()},
            "face_sizes": {
                k: {**v, "fraction_of_frame": FACE_SIZE_RANGES[k]}
                for k, v in _shares([r["face_size"] for r in talking]).items()
            },
            "crf": _shares([str(r["crf"]) for r in talking]),
            "occluded": _shares([str(r["occluded"]).lower() for r in talking]),
            "low_res": _shares([str(r["low_res"]).lower() for r in talking]),
            "realism": REALISM,
        },
        "search": {
            "videos": len(search),
            "categories": [
                {
                    "name": c.name,
                    "group": c.group,
                    "client": c.client,
                    "query": c.query,
                    "paraphrases": list(c.paraphrases),
                    "held_out": list(c.held_out),
                    "videos": sum(r["category"] == c.name for r in search),
                }
                for c in BENCH_CATEGORIES
            ],
            "groups": {g: {"labels": list(labels), "held_out": list(held)} for g, (labels, held) in GROUPS.items()},
            "test_queries": held_out_queries(),
        },
    }
    (Path(summary.truth_path).parent / BENCHMARK_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    return summary

"""The monthly learning loop, two months on demo data: does month 2's CLIP answer phrasings nobody labelled better?

Month 1 (window up to 2026-10-02) ingests, extracts frames and fine-tunes CLIP; that adapter becomes the champion
and answers searches in October (in process: the serving code's ``ClipBackbones`` over the library's frames).
Simulated users search with paraphrases the labels never used (:data:`PARAPHRASES`, not in the demo's label
phrases) and rate the top 5 results (relevant when the video's category is the query's, from the demo's truth);
the search log and the answers are written where the model server writes them. Half of each category's
paraphrases are given as feedback; the other half is held out and never rated.

Month 2 (window up to 2026-11-01) runs the feedback stage (October's answers -> labels and hard negatives) and
fine-tunes again: on its own window plus month 1's remembered videos, warm-started from the champion. The
baseline is the same month 2 without feedback (``feedback.enabled: false``), so the gain is the feedback's, not
the extra month's. The figure: top-1 category hit rate (R@1) on the held-out paraphrases over the whole library,
month 1's champion vs month 2 with and without feedback. Then users search the held-out paraphrases with month 2's
model in November, and the monitor stage compares November with October.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/learning_loop.py [--clips 6] [--epochs 30]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: category -> phrasings no demo label uses (the demo labels with each category's query and 2-3 of its paraphrases).
PARAPHRASES = {
    "medical": [
        "removing a gallbladder through small cuts",
        "camera inside the belly during an operation",
        "surgeons operating with thin tools in the abdomen",
        "endoscopic gallbladder operation footage",
    ],
    "industrial_safety": [
        "pallet truck too close to people on foot",
        "warehouse vehicle and walker on a collision course",
        "forklift driving past a worker in the aisle",
        "dangerous traffic of lift trucks near staff",
    ],
    "niche_sport": [
        "granite stone gliding on an ice rink",
        "winter sport with brooms and stones",
        "stone thrown towards the target rings on ice",
        "team sweeping ice in front of a sliding stone",
    ],
    "security": [
        "trespasser caught on a night camera",
        "someone sneaking past the security fence",
        "unauthorised entry seen by surveillance",
        "intruder crossing a restricted boundary",
    ],
    "custom_product": [
        "opening the box of a new thermostat",
        "smart home device coming out of its packaging",
        "first look at a round wall thermostat",
        "unpacking a connected temperature controller",
    ],
    "welding": [
        "bright sparks from joining metal",
        "metal fabrication with a welding torch",
        "arc welding seam on steel plates",
        "welder working on a metal joint",
    ],
    "underwater": [
        "fish swimming over a coral reef",
        "diving footage beneath the sea surface",
        "marine life filmed under water",
        "scuba view of the ocean floor",
    ],
}

MONTH1, MONTH2 = "2026-10-02", "2026-11-01"


def _stages(config, as_of: str, out: Path, feedback_enabled: bool = True, track: bool = True) -> dict:
    """ingest -> frame_extraction -> feedback -> finetune_clip of one month, with stage seconds."""
    from components.feedback.core import run_feedback
    from components.finetune_clip.core import run_finetune_clip
    from components.frame_extraction.core import run_frame_extraction
    from components.ingest.core import run_ingest

    config = dataclasses.replace(config, window=dataclasses.replace(config.window, as_of=as_of))
    ctx = config.context(track=track)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    t = time.perf_counter()
    run_ingest(out / "manifest.jsonl", config.ingest, ctx)
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    run_frame_extraction(out / "manifest.jsonl", out / "frames", config.frame_extraction, ctx)
    seconds["frame_extraction"] = time.perf_counter() - t
    t = time.perf_counter()
    fb_cfg = dataclasses.replace(config.feedback, enabled=feedback_enabled)
    data = run_feedback(out / "feedback", fb_cfg, ctx, serving=config.serving)
    seconds["feedback"] = time.perf_counter() - t
    t = time.perf_counter()
    report = run_finetune_clip(out / "frames", out / "model", config.finetune_clip, ctx, feedback_dir=out / "feedback")
    seconds["finetune_clip"] = time.perf_counter() - t
    return {"report": report, "feedback": data, "seconds": seconds, "frames": out / "frames", "model": out / "model"}


class Library:
    """The client's searchable library under one model: every video of the given frames Datasets."""

    def __init__(self, model_dir: Path, frames_dirs: list[Path], cache_dir: str) -> None:
        from components.frame_extraction.dataset import load_search_frames, read_frame_index
        from serving.clip_backbones import ClipBackbones

        self.handle = ClipBackbones(cache_dir).attach("benchmark", model_dir)
        self.ids, self.categories, vectors = [], [], []
        for frames_dir in frames_dirs:
            for rec in read_frame_index(frames_dir):
                if rec.status == "ok" and rec.video_id not in self.ids:
                    vectors.append(self.handle.encode_frames([load_search_frames(frames_dir, rec)])[0])
                    self.ids.append(rec.video_id)
                    self.categories.append(rec.category)
        self.vectors = np.stack(vectors)

    def search(self, text: str, k: int = 5) -> tuple[list[int], float]:
        """Top ``k`` library rows and a confidence (softmax of the scaled cosines at the top)."""
        scores = self.vectors @ self.handle.encode_texts([text])[0]
        order = np.argsort(-scores)[:k]
        z = np.exp(100.0 * (scores - scores.max()))
        return [int(i) for i in order], float(z[order[0]] / z.sum())

    def recall_at_1(self, queries: dict[str, list[str]]) -> float:
        hits = [self.categories[self.search(q, 1)[0][0]] == cat for cat, qs in queries.items() for q in qs]
        return float(np.mean(hits))


def _simulate_users(store, library: Library, queries: dict[str, list[str]], month: str, rate: bool) -> int:
    """Searches (and ratings of the top 5) as the model server would log them, dated in ``month``."""
    from serving.feedback import Feedback, feedback_entry

    log, answers = [], []
    for n, (category, texts) in enumerate((c, q) for c, qs in queries.items() for q in qs):
        rows, confidence = library.search(texts)
        ts = f"{month}-{1 + n % 27:02d}T10:00:{n % 60:02d}.000+00:00"
        query_id = f"{month}-q{n}"
        results = [library.ids[i] for i in rows]
        log.append(
            {
                "ts": ts,
                "model": "clip-demo",
                "query_id": query_id,
                "query": texts,
                "top_video": results[0],
                "confidence": round(confidence, 5),
                "low_confidence": confidence < 0.5,
                "k": len(results),
                "protocol": "v1",
                "version": "1",
            }
        )
        if rate:
            for i in rows:
                item = Feedback(query_id, library.ids[i], library.categories[i] == category, "")
                entry = feedback_entry("clip-demo", "1", item, {"query": texts, "results": results}, "v1")
                answers.append(entry | {"ts": ts})
    store.put_bytes(f"querylog/clip-demo/{month}/sim.jsonl", "".join(json.dumps(e) + "\n" for e in log).encode())
    if answers:
        body = "".join(json.dumps(e) + "\n" for e in answers).encode()
        store.put_bytes(f"feedback/clip-demo/{month}/sim.jsonl", body)
    return len(answers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="demo clips per category (7 categories)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--base", type=Path, default=None, help="a base CLIP folder (default: pretrain a small one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from components.common.storage import LocalStore
    from components.config import from_dict
    from components.demo_data.core import DemoConfig, generate_demo_data
    from components.deploy.core import promote
    from components.finetune_clip.base_model import build_demo_base_clip
    from components.monitor.core import run_monitor

    work = Path(tempfile.mkdtemp(prefix="learning-loop-"))
    base = args.base
    if base is None:
        base = work / "state" / "models" / "base-clip"
        build_demo_base_clip(base, seed=1, time_budget_s=30, max_steps=200)
    config = from_dict(
        {
            "client_id": "demo",
            "state_dir": str(work / "state"),
            "finetune_clip": {"base_model": str(base), "epochs": args.epochs, "early_stopping_patience": 0},
        }
    )
    demo = DemoConfig(
        seed=args.seed,
        as_of=MONTH2,
        clips_per_category=args.clips,
        talking_real=0,
        talking_fake=0,
        two_face=0,
        no_face=0,
        broken=False,
        span_days=60,
        in_window_fraction=0.5,
    )
    generate_demo_data(Path(config.storage.source_uri), work / "truth", demo)
    store = LocalStore(config.storage.artifacts_uri, create=True)
    given = {c: qs[: len(qs) // 2] for c, qs in PARAPHRASES.items()}
    held_out = {c: qs[len(qs) // 2 :] for c, qs in PARAPHRASES.items()}

    t0 = time.perf_counter()
    month1 = _stages(config, MONTH1, work / "month1")
    promote(config.tracking, "clip-demo", month1["report"].registered_version)
    served1 = Library(month1["model"], [month1["frames"]], config.cache_dir)
    n_answers = _simulate_users(store, served1, given, "2026-10", rate=True)

    # The baseline first and untracked (it registers nothing); what it remembers is month 1's and its own window's
    # videos as they were, which month 2 overwrites with the feedback's labels.
    baseline = _stages(config, MONTH2, work / "month2-no-feedback", feedback_enabled=False, track=False)
    month2 = _stages(config, MONTH2, work / "month2")
    frames = [month1["frames"], month2["frames"]]
    before = Library(month1["model"], frames, config.cache_dir).recall_at_1(held_out)
    no_feedback = Library(baseline["model"], frames, config.cache_dir).recall_at_1(held_out)
    served2 = Library(month2["model"], frames, config.cache_dir)
    after = served2.recall_at_1(held_out)
    seen_after = served2.recall_at_1(given)
    seen_before = Library(month1["model"], frames, config.cache_dir).recall_at_1(given)

    # November: the held-out and the rated phrasings asked of month 2's model. The monitor stage as month 2's DAG
    # runs it (October's signals, month 1's uploads become the library), then at the next month's end.
    _simulate_users(store, served2, held_out | given, "2026-11", rate=False)
    t = time.perf_counter()
    for as_of, uploads in (("2026-11-01", month1["frames"]), ("2026-12-01", month2["frames"])):
        at = dataclasses.replace(config, window=dataclasses.replace(config.window, as_of=as_of))
        ctx = at.context(track=False)
        report = run_monitor(uploads, None, work / f"monitor-{as_of}", config.monitor, ctx, serving=config.serving)
    monitor_s = (time.perf_counter() - t) / 2

    r2 = month2["report"]
    n_queries = sum(len(q) for q in held_out.values())
    print(f"# learning loop, two months on demo data ({args.clips} clips x 7 categories, {args.epochs} epochs)")
    print(f"month 1: {month1['report'].n_train} train videos; users rated {n_answers} results in October")
    print(
        f"month 2: {r2.n_train} train videos ({r2.n_remembered} remembered from month 1), feedback "
        f"{r2.feedback_labels} labels + {r2.feedback_negatives} hard negatives, warm start from champion "
        f"v{r2.warm_start_version or '-'}"
    )
    print(f"\nR@1 (top-1 category) on {n_queries} held-out paraphrases, library of {len(served2.ids)} videos:")
    print(f"  month 1 champion                 {before:.3f}")
    print(f"  month 2 without feedback (base.) {no_feedback:.3f}")
    print(f"  month 2 with feedback            {after:.3f}   ({after - no_feedback:+.3f} vs baseline)")
    print(f"R@1 on the rated paraphrases: {seen_before:.3f} -> {seen_after:.3f}")
    seconds = {**month2["seconds"], "monitor": monitor_s}
    print("\nstage seconds (month 2): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"whole benchmark {time.perf_counter() - t0:.0f} s\n")
    print(report.to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

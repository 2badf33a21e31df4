"""The monthly learning loop, two months on demo data: does month 2's CLIP answer phrasings nobody labelled better?

Month 1 (window up to 2026-10-02) ingests, extracts frames and fine-tunes CLIP; that adapter becomes the champion
and answers searches in October (in process: the serving code's ``ClipBackbones`` over the library's frames).
Simulated users search in their own words (:data:`USER_QUERIES`: phrasings, and user words, that no demo label
uses) and rate the top 5 results (relevant when the video's category is the query's, from the demo's truth); the
search log and the answers are written where the model server writes them. Half of each category's phrasings
(:data:`RATED`) are asked and rated; the other half (:data:`HELD_OUT`) is never asked before month 2 is trained,
never rated or reviewed, and in no training text but the oracle's (asserted). A reviewer then answers the first
:data:`REVIEW_BUDGET` entries of October's review queue (``clipsync feedback review``: the searches whose rated
results were all wrong) with a right video found in the library (:func:`review`).

Month 2 (window up to 2026-11-01) runs the feedback stage (October's answers -> labels, category labels and hard
negatives) and fine-tunes again: on its own window plus month 1's remembered videos, warm-started from the
champion. Its arms share the frames, the remembered videos, the warm start and the epochs and differ only in what
the feedback stage gives: none (``feedback.enabled: false``, the baseline, so a gain is the feedback's, not the
extra month's), ratings on training videos only (``feedback.propagate: false``), the defaults, the defaults with
the reviewer's answers, and with ``--oracle`` an upper bound (the held-out phrasings as category labels). The
figure: top-1 category hit rate (R@1) on the 42 held-out (and the 42 rated) phrasings over the whole library, each
with its Wilson interval, and gains paired over the same queries with a bootstrap interval
(``components/common/stats.py``), besides the share of the held-out phrasings' words each arm's training texts
hold. Then users search all phrasings with month 2's model in
November, and the monitor stage compares November with October. With ``--month3`` users rate month 2's answers to
the rated phrasings in November and month 3 (window up to 2026-12-01, no new uploads) retrains with and without
that second round (reported apart from month 2).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/learning_loop.py [--clips 6] [--epochs 15] [--base DIR] [--oracle]
[--month3] [--threads 1] [--seed S] [--review-budget 20] [--out hits.json]`` (8 minutes with ``--oracle`` at 15
epochs, one thread, three seeds side by side on a loaded 2-core machine; 22 with ``--month3``), then ``--pool
hits_0.json hits_1.json ...`` for the gains over seeds (per query averaged over the runs, bootstrap over the
queries); the figures and their diagnosis are in the README's learning-loop section.

Why this file is long: the 84 user phrasings (:data:`USER_QUERIES`, fixed data) take a fifth of it, and month 2's
arms, month 3 and the pooling over seeds are one benchmark that share its months and its simulated users.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: category -> what its users type (fixed before any training): phrasings no demo label uses, in the users' own
#: words ("belly", "pallet loader", "rink", "burglar", "carton", "torch", "ocean tube"), which no label has either.
#: The demo base CLIP knows no client word (``components/finetune_clip/base_model.py``), so a phrasing nobody
#: rated can only be learned through words it shares with phrasings that were rated: each held-out phrasing is a
#: new combination of its category's user words, never a rated phrasing. The split is fixed by position (even:
#: asked and rated in October; odd: held out, never rated).
USER_QUERIES = {
    "medical": [
        "camera in the belly during an operation",
        "belly operation filmed through a scope",
        "doctors taking out the bile sack",
        "bile sack operation with a tiny camera",
        "scope footage of a tummy operation",
        "doctors working inside the tummy",
        "removing an organ through the belly button",
        "tiny camera pictures of an organ being taken out",
        "tummy scope operation on the bile organ",
        "doctors with a camera in someone's belly",
        "bile organ taken out by doctors",
        "operation scope moving around the tummy",
    ],
    "industrial_safety": [
        "pallet loader almost hitting people on foot",
        "people walking next to a moving pallet loader",
        "depot vehicle and staff nearly colliding",
        "staff on foot beside a pallet mover in the depot",
        "collision risk between loader and people",
        "pallet loader passing walking staff",
        "depot traffic too close to people walking",
        "close call with a pallet mover and staff",
        "loader reversing towards people in the depot",
        "staff crossing in front of a depot loader",
        "pallet mover and walking people in one lane",
        "near collision of a loader with depot staff",
    ],
    "niche_sport": [
        "rock gliding across the rink",
        "team sweeping with brooms in front of a rock",
        "throwing a rock at the target rings",
        "broom team on the rink",
        "rink game with heavy rocks and brooms",
        "rock sliding to the rings on the rink",
        "players sweeping a gliding rock",
        "target rings seen from above the rink",
        "brooms brushing the rink before the rock",
        "heavy rock thrown down the rink",
        "rings at the end of the rink and a gliding rock",
        "players with brooms chasing a rock",
    ],
    "security": [
        "burglar sneaking onto the property in the dark",
        "prowler climbing over a barrier at night",
        "guard camera shows a burglar",
        "someone sneaking past the barrier in the dark",
        "dark footage of a prowler on the property",
        "burglar slipping through the barrier",
        "property guard cameras catching someone sneaking in",
        "prowler in the dark near the guard post",
        "sneaking across the property line after dark",
        "guard footage of a burglar at the barrier",
        "a prowler sneaking onto private property",
        "barrier crossed by a burglar in the dark",
    ],
    "custom_product": [
        "opening the carton of a heating gadget",
        "unpacking a round heating dial",
        "new wall dial coming out of the carton",
        "heating gadget lifted from its carton",
        "unpacking a wall gadget for the heating",
        "first look at a round heating dial",
        "carton opening of a smart wall dial",
        "hands unpacking a heating gadget",
        "wall heating dial shown after unpacking",
        "gadget and its carton on a table",
        "opening a new dial for the heating",
        "unpacking the carton of a wall gadget",
    ],
    "welding": [
        "torch joining two pieces of metal",
        "molten metal flaring from a torch",
        "metalwork with a bright torch flame",
        "joining plates with molten flares",
        "flares flying from metalwork",
        "torch fusing metal pieces together",
        "molten joint on a metalwork bench",
        "flares of light while joining metal",
        "fusing metal with a hot torch",
        "metalwork joint cooling after the torch",
        "bright flares from molten metal",
        "joining metal parts in a metalwork shop",
    ],
    "underwater_inspection": [
        "robot checking a tube on the sea floor",
        "deep sea tube checked by a robot",
        "submarine camera along an ocean tube",
        "checking an ocean duct for damage",
        "robot sub following a deep tube",
        "ocean floor duct filmed by a submarine",
        "deep water robot looking at a duct",
        "tube on the ocean floor with growth on it",
        "submarine robot checking the sea tube",
        "damage check of a deep ocean duct",
        "robot camera moving over an ocean tube",
        "submarine following a duct on the sea floor",
    ],
}
RATED = {c: qs[0::2] for c, qs in USER_QUERIES.items()}
HELD_OUT = {c: qs[1::2] for c, qs in USER_QUERIES.items()}

MONTH1, MONTH2, MONTH3 = "2026-10-02", "2026-11-01", "2026-12-01"

#: How many entries of October's review queue the simulated reviewer answers (fixed before any run: half as many as
#: the 42 searches the users rated).
REVIEW_BUDGET = 20

#: Words that say nothing about a category (left out of the vocabulary coverage).
STOP_WORDS = frozenset(
    "a an the of on in with and to at by from its for after before during through into onto over next one two "  # noqa: SIM905
    "someone being".split()
)


def _prepare(config, as_of: str, out: Path) -> tuple[Any, Path]:
    """ingest -> frame_extraction of one month: its config (window ending ``as_of``) and its frames Dataset."""
    from components.frame_extraction.core import run_frame_extraction
    from components.ingest.core import run_ingest

    config = dataclasses.replace(config, window=dataclasses.replace(config.window, as_of=as_of))
    ctx = config.context(track=False)
    out.mkdir(parents=True, exist_ok=True)
    run_ingest(out / "manifest.jsonl", config.ingest, ctx)
    run_frame_extraction(out / "manifest.jsonl", out / "frames", config.frame_extraction, ctx)
    return config, out / "frames"


def _train(config, frames: Path, out: Path, feedback, track: bool, extra_records: tuple[dict, ...] = ()) -> dict:
    """feedback -> finetune_clip of one month (``feedback``: the feedback section to run with; ``extra_records``:
    training records added to the feedback stage's), with seconds."""
    from components.common.names import FEEDBACK_RECORDS_FILE
    from components.feedback.core import run_feedback
    from components.finetune_clip.core import run_finetune_clip

    ctx = config.context(track=track)
    t = time.perf_counter()
    data = run_feedback(out / "feedback", feedback, ctx, serving=config.serving)
    if extra_records:
        with open(out / "feedback" / FEEDBACK_RECORDS_FILE, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in extra_records)
    feedback_s = time.perf_counter() - t
    t = time.perf_counter()
    report = run_finetune_clip(frames, out / "model", config.finetune_clip, ctx, feedback_dir=out / "feedback")
    seconds = {"feedback": feedback_s, "finetune_clip": time.perf_counter() - t}
    return {"report": report, "feedback": data, "seconds": seconds, "model": out / "model"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.casefold()) if w not in STOP_WORDS}


def trained_texts(store) -> dict[str, set[str]]:
    """category -> every label text (own and feedback) of the training videos the last finetune_clip remembered."""
    from components.finetune_clip.history import HISTORY_PREFIX

    out: dict[str, set[str]] = {}
    for key in store.list_keys(f"{HISTORY_PREFIX}/"):
        if key.endswith(".json"):
            meta = json.loads(store.get_bytes(key))
            if meta["split"] == "train":
                out.setdefault(meta["category"], set()).update(meta["labels"])
    return out


def coverage(queries: dict[str, list[str]], texts: dict[str, set[str]]) -> str:
    """Share of the queries' content words that some text of the query's category has, and of any category."""
    any_words = {w for ts in texts.values() for t in ts for w in _words(t)}
    same = seen_any = total = 0
    for category, qs in queries.items():
        cat_words = {w for t in texts.get(category, ()) for w in _words(t)}
        for q in qs:
            words = _words(q)
            total += len(words)
            same += len(words & cat_words)
            seen_any += len(words & any_words)
    return f"{same / total:.2f} in its category's training texts, {seen_any / total:.2f} in any ({total} words)"


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

    def hits_at_1(self, queries: dict[str, list[str]]) -> np.ndarray:
        """Per query (in ``queries``' order): 1 when the top result is a video of the query's category."""
        return np.array([self.categories[self.search(q, 1)[0][0]] == c for c, qs in queries.items() for q in qs])


def simulate_users(
    store,
    library: Library,
    queries: dict[str, list[str]],
    month: str,
    rate: bool,
    model: str = "clip-demo",
    version: str = "1",
    name: str = "sim",
    first: int = 0,
) -> int:
    """Searches of ``model`` version ``version`` (and ratings of the top 5) as the model server would log them,
    dated in ``month``, into ``<month>/<name>.jsonl``; query ids count from ``first``. Returns the number of
    ratings."""
    from serving.feedback import Feedback, feedback_entry

    log, answers = [], []
    for n, (category, texts) in enumerate(((c, q) for c, qs in queries.items() for q in qs), start=first):
        rows, confidence = library.search(texts)
        ts = f"{month}-{1 + n % 27:02d}T10:00:{n % 60:02d}.000+00:00"
        query_id = f"{month}-q{n}"
        results = [library.ids[i] for i in rows]
        log.append(
            {
                "ts": ts,
                "model": model,
                "query_id": query_id,
                "query": texts,
                "top_video": results[0],
                "confidence": round(confidence, 5),
                "low_confidence": confidence < 0.5,
                "k": len(results),
                "protocol": "v1",
                "version": version,
            }
        )
        if rate:
            for i in rows:
                item = Feedback(query_id, library.ids[i], library.categories[i] == category, "")
                entry = feedback_entry(model, version, item, {"query": texts, "results": results}, "v1")
                answers.append(entry | {"ts": ts})
    store.put_bytes(f"querylog/{model}/{month}/{name}.jsonl", "".join(json.dumps(e) + "\n" for e in log).encode())
    if answers:
        body = "".join(json.dumps(e) + "\n" for e in answers).encode()
        store.put_bytes(f"feedback/{model}/{month}/{name}.jsonl", body)
    return len(answers)


def review(
    store,
    library: Library,
    month: str,
    out: Path,
    asked: dict[str, list[str]] = RATED,
    held_out: dict[str, list[str]] = HELD_OUT,
    budget: int = REVIEW_BUDGET,
    model: str = "clip-demo",
) -> tuple[list, list[dict]]:
    """A reviewer works through the month's review queue (``clipsync feedback review``): for each of its first
    ``budget`` entries it names the right video, the first video of the search's category (the users' truth:
    ``asked``, category -> phrasings) in the served model's ranking of the whole library, as a relevant answer on
    the entry's ``query_id``, checked as the model server checks an answer (:func:`serving.feedback.check_feedback`,
    a video of the library). A ``held_out`` phrasing in the queue is an error: nobody may ask it.

    Returns:
        The queue and the feedback entries of the answers (not yet in the store).
    """
    from components.feedback.core import normalize_query, review_for_month
    from serving.feedback import check_feedback, feedback_entry, read_feedback
    from serving.querylog import read_month

    truth = {normalize_query(q): c for c, qs in asked.items() for q in qs}
    queue = review_for_month(store, model, month, out)
    unseen = {normalize_query(q) for qs in held_out.values() for q in qs}
    seen = [e["query"] for e in read_month(store, model, month) + read_feedback(store, model, month)]
    assert not unseen & {normalize_query(q) for q in seen}, "a held-out phrasing was asked or rated"
    assert not unseen & {normalize_query(i.query) for i in queue}, "a held-out phrasing reached the review queue"
    answers = []
    for n, item in enumerate(queue[:budget]):
        category = truth[normalize_query(item.query)]
        rows, _ = library.search(item.query, k=len(library.ids))
        video = next(library.ids[i] for i in rows if library.categories[i] == category)
        answer = check_feedback(item.query_id, video, True, "")
        results = [library.ids[i] for i in rows[:5]]
        entry = feedback_entry(model, "1", answer, {"query": item.query, "results": results}, "v1")
        answers.append(entry | {"ts": f"{month}-28T18:00:{n % 60:02d}.000+00:00"})
    return queue, answers


def _never_trained(name: str, feedback, texts: dict[str, set[str]]) -> None:
    """A held-out phrasing is in no training record of the feedback stage and no training text of the run."""
    from components.feedback.core import normalize_query

    held_out = {normalize_query(q) for qs in HELD_OUT.values() for q in qs}
    trained = {normalize_query(r.text) for r in feedback.records}
    trained |= {normalize_query(t) for ts in texts.values() for t in ts}
    assert not held_out & trained, f"{name}: a held-out phrasing reached training"


def _proportion(hits: np.ndarray) -> str:
    from components.common.stats import wilson

    est = wilson(int(hits.sum()), len(hits))
    return f"{est.value:.3f} [{est.low:.3f}, {est.high:.3f}] n {est.n}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="demo clips per category (7 categories)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--base", type=Path, default=None, help="a base CLIP folder (default: pretrain a small one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per fine-tune (0: the CPUs available)")
    parser.add_argument(
        "--month3",
        action="store_true",
        help="a second feedback round: users rate month 2's answers in November, month 3 retrains (reported apart)",
    )
    parser.add_argument(
        "--review-budget",
        type=int,
        default=REVIEW_BUDGET,
        help=f"review queue entries the simulated reviewer answers (default {REVIEW_BUDGET}, fixed before any run)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write every model's per-query hits (JSON) here")
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        default=None,
        help="only pool the --out files of several seeds: gains per query averaged over seeds, bootstrap over queries",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="also month 2 with the held-out phrasings as labels of their category's training videos (upper bound)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.pool:
        pool(args.pool)
        return 0

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
            "finetune_clip": {
                "base_model": str(base),
                "epochs": args.epochs,
                "early_stopping_patience": 0,
                "num_threads": args.threads,
            },
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

    t0 = time.perf_counter()
    config1, frames1 = _prepare(config, MONTH1, work / "month1")
    month1 = _train(config1, frames1, work / "month1", config.feedback, track=True)
    promote(config.tracking, "clip-demo", month1["report"].registered_version)
    served1 = Library(month1["model"], [frames1], config.cache_dir)
    n_answers = simulate_users(store, served1, RATED, "2026-10", rate=True)
    queue, review_answers = review(store, served1, "2026-10", work / "review", budget=args.review_budget)
    review_key = "feedback/clip-demo/2026-10/review.jsonl"

    # Month 2's arms on the same frames, the same remembered videos (put back before each: an arm rewrites them
    # with its feedback labels), the same warm start and epochs; only what the feedback stage gives differs. The
    # tracked arm (registered: the monitor and the README's "month 2") runs last.
    config2, frames2 = _prepare(config, MONTH2, work / "month2")
    memory = {k: store.get_bytes(k) for k in store.list_keys("history/")}
    oracle = tuple(
        {"kind": "category_label", "video_id": "", "text": q, "source": "oracle", "feedback_id": "", "query_id": ""}
        | {"feedback_ts": "", "category": c}
        for c, qs in HELD_OUT.items()
        for q in qs
    )
    arms = {
        "month 2 without feedback": (dataclasses.replace(config.feedback, enabled=False), ()),
        "month 2, rated videos only": (dataclasses.replace(config.feedback, propagate=False), ()),
        **({"oracle: + held-out as labels": (config.feedback, oracle)} if args.oracle else {}),
        "month 2 with feedback + review": (config.feedback, ()),
        "month 2 with feedback": (config.feedback, ()),
    }
    runs, texts = {}, {}
    for n, (name, (feedback, extra)) in enumerate(arms.items()):
        for key, body in memory.items():
            store.put_bytes(key, body)
        reviewed = name.endswith("+ review")
        if reviewed:  # the reviewer's answers are in October's feedback for this arm only
            store.put_bytes(review_key, "".join(json.dumps(e) + "\n" for e in review_answers).encode())
        out = work / f"month2-arm{n}"
        runs[name] = _train(config2, frames2, out, feedback, track=name == "month 2 with feedback", extra_records=extra)
        if reviewed:
            store.put_bytes(review_key, b"")
        texts[name] = trained_texts(store)
        if not extra:  # the oracle's training texts are the held-out phrasings
            _never_trained(name, runs[name]["feedback"], texts[name])
    frames = [frames1, frames2]
    libraries = {"month 1 champion": Library(month1["model"], frames, config.cache_dir)}
    libraries |= {name: Library(run["model"], frames, config.cache_dir) for name, run in runs.items()}
    served2 = libraries["month 2 with feedback"]
    hits = {name: (lib.hits_at_1(HELD_OUT), lib.hits_at_1(RATED)) for name, lib in libraries.items()}

    # November: the held-out and the rated phrasings asked of month 2's model (with --month3 users rate the rated
    # ones' answers again). The monitor stage as month 2's DAG runs it (October's signals, month 1's uploads become
    # the library), then at the next month's end.
    if args.month3:
        version2 = runs["month 2 with feedback"]["report"].registered_version
        promote(config.tracking, "clip-demo", version2)
        n_november = simulate_users(store, served2, RATED, "2026-11", rate=True, version=version2, name="rated")
        simulate_users(store, served2, HELD_OUT, "2026-11", rate=False, version=version2, name="held", first=100)
    else:
        simulate_users(store, served2, HELD_OUT | RATED, "2026-11", rate=False)
    t = time.perf_counter()
    for as_of, uploads in (("2026-11-01", frames1), ("2026-12-01", frames2)):
        at = dataclasses.replace(config, window=dataclasses.replace(config.window, as_of=as_of))
        ctx = at.context(track=False)
        report = run_monitor(uploads, None, work / f"monitor-{as_of}", config.monitor, ctx, serving=config.serving)
    monitor_s = (time.perf_counter() - t) / 2

    print(f"# learning loop, two months on demo data ({args.clips} clips x 7 categories, {args.epochs} epochs)")
    print(f"month 1: {month1['report'].n_train} train videos; users rated {n_answers} results in October")
    fed = runs["month 2 with feedback"]["feedback"]
    relevant = [r for r in fed.labels if r.source == "query"]
    print(
        f"October's ratings: {len(relevant)} relevant on {len({r.query_id for r in relevant})} of "
        f"{sum(map(len, RATED.values()))} searches, of categories {sorted({r.category for r in fed.category_labels})}"
    )
    rev = [r for r in runs["month 2 with feedback + review"]["feedback"].labels if r.source == "query"]
    print(
        f"October's review queue: {len(queue)} searches ({sum(i.reason == 'no_relevant_result' for i in queue)} "
        f"with no relevant result); the reviewer answered the first {len(review_answers)} "
        f"(budget {args.review_budget}): "
        f"searches with a relevant answer {len({r.query_id for r in relevant})} -> {len({r.query_id for r in rev})}"
        f", categories {len({r.category for r in fed.category_labels})} -> "
        f"{len({r.category for r in runs['month 2 with feedback + review']['feedback'].category_labels})} of 7"
    )
    for name, run in runs.items():
        r, data = run["report"], run["feedback"]
        print(
            f"{name}: {r.n_train} train videos ({r.n_remembered} remembered), feedback {r.feedback_labels} labels "
            f"({len(data.category_labels)} category labels) + {r.feedback_negatives} hard negatives, warm start "
            f"from v{r.warm_start_version or '-'}"
        )
    print("\nheld-out phrasings' content words seen in training:")
    print(f"  {'rated phrasings (any rating)':34} {coverage(HELD_OUT, {c: set(qs) for c, qs in RATED.items()})}")
    for name, by_category in texts.items():
        print(f"  {name:34} {coverage(HELD_OUT, by_category)}")
    print(f"\nR@1 (top-1 category), library of {len(served2.ids)} videos, Wilson 95 % intervals:")
    _figures(hits, [(name, ref) for name in runs for ref in _refs(name) if name != ref])
    seconds = {**runs["month 2 with feedback"]["seconds"], "monitor": monitor_s}
    print("\nstage seconds (month 2 with feedback): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"whole benchmark {time.perf_counter() - t0:.0f} s\n")
    print(report.to_markdown(), flush=True)
    if args.month3:
        hits |= month3(config, store, frames, libraries, n_november, work)
    if args.out:
        as_lists = {name: {"held_out": h.tolist(), "rated": r.tolist()} for name, (h, r) in hits.items()}
        args.out.write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "hits": as_lists}, indent=1))
    return 0


def pool(paths: list[Path]) -> None:
    """Gains over several seeds' runs (``--out`` files): per query the gain averaged over the seeds, its mean with
    a bootstrap interval over the 42 queries (the queries are the same in every seed, so they are the items)."""
    from components.common.stats import bootstrap_mean

    runs = [json.loads(Path(p).read_text())["hits"] for p in paths]
    names = [n for n in runs[0] if n != "month 1 champion" and all(n in r for r in runs)]
    print(f"# pooled over {len(runs)} runs ({', '.join(map(str, paths))}): gains averaged per query over the runs")
    for kind in ("held_out", "rated"):
        for name in names:
            for ref in _refs(name):
                if name == ref or ref not in runs[0]:
                    continue
                per_query = np.mean([np.array(r[name][kind], float) - np.array(r[ref][kind], float) for r in runs], 0)
                gain = bootstrap_mean(per_query, n_resamples=2000)
                print(f"  {kind:8} {name:30} vs {ref:28} {gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]")


def _refs(name: str) -> tuple[str, ...]:
    """What a month-2 arm's gains are measured against (the review arm also against feedback without review)."""
    review = ("month 2 with feedback",) if name.endswith("+ review") else ()
    return ("month 2 without feedback", "month 1 champion", *review)


def month3(config, store, frames: list[Path], libraries: dict, n_november: int, work: Path) -> dict:
    """The second round: month 3 (window up to 1 December: no new uploads) trains on the remembered videos (with
    October's feedback labels), warm-started from month 2's champion, with and without November's ratings."""
    t = time.perf_counter()
    config3, _ = _prepare(config, MONTH3, work / "month3")
    frames3 = work / "month3" / "frames"
    memory = {k: store.get_bytes(k) for k in store.list_keys("history/")}
    arms = {
        "month 3 without new feedback": dataclasses.replace(config.feedback, enabled=False),
        "month 3 with feedback": config.feedback,
    }
    for n, (name, feedback) in enumerate(arms.items()):
        for key, body in memory.items():
            store.put_bytes(key, body)
        run = _train(config3, frames3, work / f"month3-arm{n}", feedback, track=False)
        _never_trained(name, run["feedback"], trained_texts(store))
        r = run["report"]
        print(
            f"{name}: {r.n_train} train videos ({r.n_remembered} remembered), feedback {r.feedback_labels} labels "
            f"({len(run['feedback'].category_labels)} category labels) + {r.feedback_negatives} hard negatives, "
            f"warm start from v{r.warm_start_version or '-'}"
        )
        libraries[name] = Library(run["model"], frames, config.cache_dir)
    rows = ["month 1 champion", "month 2 with feedback", *arms]
    hits = {name: (libraries[name].hits_at_1(HELD_OUT), libraries[name].hits_at_1(RATED)) for name in rows}
    print(f"\n# month 3: users rated {n_november} results of month 2's model in November; R@1, Wilson 95 %:")
    _figures(
        hits,
        [
            ("month 3 with feedback", "month 3 without new feedback"),
            ("month 3 with feedback", "month 2 with feedback"),
            ("month 3 with feedback", "month 1 champion"),
            ("month 3 without new feedback", "month 2 with feedback"),
        ],
    )
    print(f"month 3 took {time.perf_counter() - t:.0f} s")
    return {name: hits[name] for name in arms}


def _figures(hits: dict[str, tuple[np.ndarray, np.ndarray]], pairs: list[tuple[str, str]]) -> None:
    """R@1 per model on the held-out and the rated phrasings, and the gains of ``pairs`` paired over the queries."""
    from components.common.stats import bootstrap_mean

    print(f"  {'':30} {'held-out phrasings':>24} {'rated phrasings':>24}")
    for name, (held, rated) in hits.items():
        print(f"  {name:30} {_proportion(held):>24} {_proportion(rated):>24}")
    print("gains paired over the same queries (bootstrap 95 %):")
    for label, col in (("held-out", 0), ("rated", 1)):
        for name, ref in pairs:
            gain = bootstrap_mean(hits[name][col].astype(float) - hits[ref][col], n_resamples=2000)
            print(f"  {label:8} {name:30} vs {ref:28} {gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]")


if __name__ == "__main__":
    raise SystemExit(main())

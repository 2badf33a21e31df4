"""Model quality on the hard benchmark (``clipsync demo-data --profile benchmark``), stage by stage, outside kfp.

Runs the stages' own core functions on the benchmark client, in the DAG's order: ``run_ingest``,
``run_frame_extraction``, ``run_face_tracking``, ``run_finetune_clip`` (LoRA, the config's defaults),
``run_finetune_lipsync`` (untracked: nothing is logged or registered), ``evaluate_clip`` and ``evaluate_lipsync``
(with its robustness sweep), then prints every figure with its test-set size and the target it is held to:

- search: R@1 of the base CLIP and of the LoRA adapter on the held-out test queries of ``benchmark.json``
  (paraphrases never used as labels; group queries whose answers span three categories), and on the
  evaluate stage's own queries (the test videos' labels);
- lip-sync: ROC AUC on the test videos, per fake type (each fake type against all test reals) and per
  condition (pose, face size, CRF, two-face), and under each perturbation of the evaluate stage;
- face selection: on the two-face interviews, how often ``speaking`` and ``longest`` pick the speaker (against
  the generator's truth), their time, and the lip-sync AUC of the two-face test videos with each one's crops.

Each stage's output is kept under ``--out`` and reused by a later run (``--fresh`` recomputes everything).
The benchmark library is generated first when the client's folder has none.

Run: ``.venv/bin/python benchmarks/quality.py --home .clipsync/bench`` (1.6 h measured on 2 shared CPU cores, of
which lip-sync training 57 min); ``--talking-heads 24 --clips-per-category 3`` makes a smoke run of a few minutes.
``--lipsync-only`` runs the lip-sync half alone (no search clips, no CLIP fine-tune); ``--skip-selection``,
``--lipsync-epochs N`` and ``--perturbations KIND[:LEVEL],...`` bound it further on a busy machine (each is printed
with the figures); ``--faces-only`` stops after face tracking (``benchmarks/lipsync_gpu.py export`` reads the faces
Dataset from there). A model-free oracle on the generator's true mouth opening gives the context of the lip-sync
figures: how separable each fake type is at all for a correlation rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("clipsync.benchmarks.quality")

TARGET_PERTURBATIONS = ("compression", "blur", "gaussian_noise", "pixelation")


def _auc(y: list[int], s: list[float]) -> float | None:
    from components.evaluate.lipsync_eval import binary_metrics

    return binary_metrics(np.array(y), np.array(s))["roc_auc"] if len(set(y)) == 2 else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value >= target else f"MISSED by {target - value:.3f}"


def _stage(path: Path, fresh: bool) -> bool:
    """Whether the stage whose key output is ``path`` must run (removing a partial output first)."""
    if path.exists() and not fresh:
        logger.info("reusing %s", path)
        return False
    folder = path if path.suffix == "" else path.parent
    if folder.exists() and folder.name not in ("", "."):
        shutil.rmtree(folder)
    return True


# --------------------------------------------------------------------------------------------- search


def search_figures(config, frames_dir: Path, model_dir: Path, out: Path, doc: dict) -> dict:
    """Base vs. adapter on the evaluate stage's queries and on the benchmark's held-out queries."""
    from components.evaluate.clip_eval import evaluate_clip, score_model
    from components.finetune_clip.data import load_frame_samples
    from components.finetune_clip.model import load_clip_model, resolve_base_ref

    cfg = config.finetune_clip
    base_ref = resolve_base_ref(cfg.base_model, config.state_dir)
    stage = evaluate_clip(
        model_dir, base_ref, frames_dir, out / "evaluate_clip", "base", cfg.frames_per_video, cfg.pooling,
        config.cache_dir, relevance=cfg.eval_relevance,
    )  # fmt: skip
    categories = {c["name"]: c for c in doc["search"]["categories"]}
    groups = doc["search"]["groups"]
    kind = {q["query"]: q["kind"] for q in doc["search"]["test_queries"]}
    client_paraphrases = {q for c in doc["search"]["categories"] if c["client"] for q in c["held_out"]}
    figures: dict = {
        "n_test_videos": stage.n_test_videos,
        "stage_queries": len(stage.challenger.queries),
        "stage_r1_base": stage.baseline.recall_at_1,
        "stage_r1_lora": stage.challenger.recall_at_1,
        "stage_map_base": stage.baseline.mean_ap,
        "stage_map_lora": stage.challenger.mean_ap,
    }
    for role, ref in (("base", base_ref), ("lora", model_dir)):
        bundle = load_clip_model(ref, config.cache_dir)
        k = int(bundle.card.get("frames_per_video", cfg.frames_per_video))
        test = load_frame_samples(frames_dir, ("test",), bundle.image_spec, k)[0]["test"]
        # Each test video carries, as its "labels", the held-out queries it answers: evaluate's own metric code
        # with label relevance then scores exactly the benchmark's query set.
        relabelled = [
            dataclasses.replace(
                s,
                labels=tuple(categories[s.category]["held_out"] + groups[categories[s.category]["group"]]["held_out"]),
            )
            for s in test
        ]
        result = score_model(bundle, relabelled, str(bundle.card.get("pooling", cfg.pooling)), relevance="label")
        hits = {q: int(r == 1) for q, r in zip(result.queries, result.rank, strict=True)}
        aps = dict(zip(result.queries, result.average_precision, strict=True))
        for name, keep in (
            ("paraphrase", lambda q: kind[q] == "paraphrase"),
            ("paraphrase_client", lambda q: q in client_paraphrases),
            ("paraphrase_distractor", lambda q: kind[q] == "paraphrase" and q not in client_paraphrases),
            ("multi_label", lambda q: kind[q] == "multi_label"),
        ):
            qs = [q for q in hits if keep(q)]
            figures[f"{name}_queries"] = len(qs)
            figures[f"{name}_r1_{role}"] = float(np.mean([hits[q] for q in qs]))
            figures[f"{name}_map_{role}"] = float(np.mean([aps[q] for q in qs]))
    figures["paraphrase_r1_gain"] = figures["paraphrase_r1_lora"] - figures["paraphrase_r1_base"]
    return figures


# ------------------------------------------------------------------------------------------- lip-sync


def _truth_by_id(manifest_path: Path, truth_path: Path) -> dict[str, dict]:
    from components.common.manifest import read_manifest

    truth = {r["video_path"]: r for r in map(json.loads, truth_path.read_text().splitlines())}
    return {rec.video_id: truth[rec.key] for rec in read_manifest(manifest_path) if rec.key in truth}


def lipsync_figures(report, truth: dict[str, dict]) -> dict:
    """Headline, per fake type, per condition and per perturbation AUC of the evaluate stage's report.

    The evaluate stage scores only the test videos that carry evidence for a verdict (a usable face track, audio,
    one window); the others are counted as ``n_test_inconclusive``.
    """
    ch = report.challenger
    figures: dict = {
        "n_test": report.n_test_videos,
        "n_test_inconclusive": report.n_test_inconclusive,
        "auc_tracked": ch.test.get("roc_auc"),
        "n_tracked": ch.test.get("n"),
        "accuracy_tracked": ch.test.get("accuracy"),
        "threshold": ch.threshold,
    }
    rows = report.paired
    reals = [r for r in rows if r["label"] == "real"]
    per_type = {}
    for fake_type in ("offset", "partial", "other_speaker"):
        fakes = [r for r in rows if r["label"] == "fake" and truth[r["video_id"]]["fake_type"] == fake_type]
        y = [0] * len(reals) + [1] * len(fakes)
        s = [r["challenger_score"] for r in reals + fakes]
        per_type[fake_type] = {"auc": _auc(y, s), "n_fake": len(fakes), "n_real": len(reals)}
    offsets = defaultdict(list)
    for r in rows:
        if r["label"] == "fake" and truth[r["video_id"]]["fake_type"] == "offset":
            offsets[abs(truth[r["video_id"]]["offset_frames"])].append(r["challenger_score"])
    for frames, scores in sorted(offsets.items()):
        y = [0] * len(reals) + [1] * len(scores)
        per_type[f"offset_{frames}_frames"] = {
            "auc": _auc(y, [r["challenger_score"] for r in reals] + scores),
            "n_fake": len(scores),
            "n_real": len(reals),
        }
    figures["per_fake_type"] = per_type
    per_condition = {}
    for field in ("scene", "pose", "face_size", "crf", "occluded", "low_res"):
        for value in sorted({truth[r["video_id"]][field] for r in rows}, key=str):
            subset = [r for r in rows if truth[r["video_id"]][field] == value]
            y = [int(r["label"] == "fake") for r in subset]
            per_condition[f"{field}={value}"] = {
                "auc": _auc(y, [r["challenger_score"] for r in subset]),
                "n": len(subset),
                "n_fake": sum(y),
            }
    figures["per_condition"] = per_condition
    figures["perturbations"] = [
        {"perturbation": r["perturbation"], "level": r["level"], "auc": r["roc_auc"], "accuracy": r["accuracy"]}
        for r in report.robustness
        if r["model"] == "challenger" and r["perturbation"] != "none"
    ]
    return figures


def oracle_figures(doc: dict, truth_path: Path) -> dict:
    """How separable the fakes are for an oracle that reads the TRUE mouth opening (the generator's truth) and the
    clip's own speech envelope, over every talking head (no model, no video): the context for the detector's figures.

    Rules (each a score, higher = more likely fake; AUC of each fake type against all reals):
    ``sync``: 1 - the best correlation within +-3 frames (a SyncNet-like confidence: blind to small offsets);
    ``lag0``: minus the correlation at lag 0; ``lag``: distance of the best-correlating lag from the reals' median.
    """
    from sklearn.metrics import roc_auc_score

    from components.demo_data.benchmark import _plan_benchmark
    from components.demo_data.config import BenchmarkConfig
    from components.demo_data.core import _syllables
    from components.demo_data.speech import frame_envelope

    config = BenchmarkConfig(**doc["config"])
    voice = {job.name: job.params["env"] for job in _plan_benchmark(config) if job.kind != "search"}
    rows = [r for r in map(json.loads, truth_path.read_text().splitlines()) if r["video_path"] in voice]

    def correlations(row: dict) -> np.ndarray:  # lags -5..5
        mouth = np.asarray(row["mouth_opening"])
        n = len(mouth)
        own = frame_envelope(_syllables(config, voice[row["video_path"]]), n, config.talking_fps)
        return np.array(
            [np.corrcoef(own[max(0, k) : n + min(0, k)], mouth[max(0, -k) : n - max(0, k)])[0, 1] for k in range(-5, 6)]
        )

    corr = {r["video_path"]: correlations(r) for r in rows}
    reals = [r["video_path"] for r in rows if r["authenticity"] == "real"]
    real_lag = float(np.median([np.argmax(corr[v]) for v in reals]))
    rules = {
        "sync": lambda c: 1 - c[2:9].max(),
        "lag0": lambda c: -c[5],
        "lag": lambda c: abs(np.argmax(c) - real_lag) - 0.01 * c.max(),
    }
    figures: dict = {"n_real": len(reals), "real_corr_lag0_median": float(np.median([corr[v][5] for v in reals]))}
    for fake_type in ("offset", "partial", "other_speaker"):
        fakes = [r["video_path"] for r in rows if r.get("fake_type") == fake_type]
        y = [0] * len(reals) + [1] * len(fakes)
        figures[fake_type] = {"n_fake": len(fakes)} | {
            name: float(roc_auc_score(y, [rule(corr[v]) for v in reals + fakes])) for name, rule in rules.items()
        }
    return figures


def face_selection(config, frames_dir: Path, work: Path, truth: dict[str, dict]) -> dict:
    """``speaking`` vs ``longest`` on the two-face interviews: how often each picks the speaker, and its time.

    Each strategy's faces Dataset of the two-face clips is kept in ``work/two_face_<strategy>`` for
    :func:`face_selection_auc`.
    """
    from components.face_tracking.core import process_video
    from components.face_tracking.dataset import write_face_index
    from components.face_tracking.detect import load_face_models
    from components.frame_extraction.dataset import load_dense_frames, read_frame_index

    two = [r for r in read_frame_index(frames_dir) if r.status == "ok" and truth[r.video_id].get("scene") == "two_face"]
    figures: dict = {"n_two_face": len(two)}
    for strategy in ("longest", "speaking"):
        cfg = dataclasses.replace(config.face_tracking, select_strategy=strategy)
        out = work / f"two_face_{strategy}"
        shutil.rmtree(out, ignore_errors=True)
        (out / "crops").mkdir(parents=True)
        (out / "audio").mkdir()
        started = time.perf_counter()
        with load_face_models(Path(config.cache_dir), cfg) as models:
            records = [process_video(frames_dir, out, rec, cfg, models) for rec in two]
        seconds = time.perf_counter() - started
        write_face_index(out, records)
        right = 0
        for rec, face in zip(two, records, strict=True):
            speaker = next(f for f in truth[rec.video_id]["faces"] if f["speaking"])
            sample = face.selected_sample
            boxes = [b for b in (sample.boxes if sample else ()) if b is not None]
            if boxes:  # the generator puts the two faces left and right of the centre
                dense_width = load_dense_frames(frames_dir, rec).shape[2]  # boxes are in dense-frame pixels
                centre_x = float(np.median([(b[0] + b[2]) / 2 for b in boxes])) / dense_width
                true_x = np.median([(b[0] + b[2]) / 2 for b in speaker["boxes"] if b]) / truth[rec.video_id]["width"]
                right += abs(centre_x - true_x) < 0.15
        figures[strategy] = {"speaker_picked": right / max(len(two), 1), "seconds_per_clip": seconds / max(len(two), 1)}
    figures["time_ratio_speaking_over_longest"] = (
        figures["speaking"]["seconds_per_clip"] / figures["longest"]["seconds_per_clip"]
    )
    return figures


def face_selection_auc(figures: dict, model_dir: Path, work: Path, face_config) -> None:
    """Add the lip-sync AUC of the two-face test videos scored on each strategy's crops to ``figures``."""
    from components.face_tracking.evidence import EvidenceRules
    from components.finetune_lipsync.data import load_lipsync_videos
    from components.finetune_lipsync.model import load_model, predict_video

    model = load_model(model_dir)
    rules = EvidenceRules.of(model.config.window_s, face_config)
    for strategy in ("longest", "speaking"):
        videos, _ = load_lipsync_videos(work / f"two_face_{strategy}", rules, ("test",))
        scores = [predict_video(model, v.crops, v.audio, v.fps).probability for v in videos]
        figures[strategy].update(test_auc=_auc([v.label for v in videos], scores), n_test=len(videos))


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".clipsync") / "bench", help="state folder of the benchmark")
    parser.add_argument("--client", default="bench")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("CLIPSYNC_MODEL_CACHE", REPO / ".clipsync" / "cache")),
        help="the MediaPipe model files (`clipsync fetch-models`); default $CLIPSYNC_MODEL_CACHE or .clipsync/cache",
    )
    parser.add_argument("--as-of", default="2026-11-01", help="the benchmark's run date (its uploads lie before)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated benchmark")
    parser.add_argument("--talking-heads", type=int, default=400, help="benchmark size (a smaller one for a smoke run)")
    parser.add_argument("--clips-per-category", type=int, default=25, help="search clips per category (21 categories)")
    parser.add_argument("--workers", type=int, default=2, help="processes for frame extraction and face tracking")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="ingest.test_fraction (>= 100 test heads)")
    parser.add_argument("--out", type=Path, default=None, help="stage outputs and quality.json (default HOME/quality)")
    parser.add_argument("--fresh", action="store_true", help="recompute every stage")
    parser.add_argument(
        "--skip-selection", action="store_true", help="no face selection comparison (speaking vs longest)"
    )
    parser.add_argument(
        "--perturbations",
        default="",
        help="the robustness sweep: comma-separated KIND (its three levels) or KIND:LEVEL (default: all of evaluate's)",
    )
    parser.add_argument(
        "--lipsync-epochs",
        type=int,
        default=None,
        help="finetune_lipsync.epochs (default: the config's 20); fewer for a bounded run on a busy machine",
    )
    parser.add_argument(
        "--selection-only", action="store_true", help="stop after the face selection comparison on the two-face clips"
    )
    parser.add_argument(
        "--faces-only",
        action="store_true",
        help="stop after face tracking (the inputs of finetune_lipsync; `benchmarks/lipsync_gpu.py export` uses this)",
    )
    parser.add_argument(
        "--face-tracking",
        type=json.loads,
        default={},
        help="face_tracking settings over the defaults as JSON, e.g. '{\"detect_every\": 2}' (use a fresh --out)",
    )
    parser.add_argument(
        "--lipsync-only",
        action="store_true",
        help="the lip-sync half only: no search clips generated, no CLIP fine-tune, no search figures",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from components.config import from_dict
    from components.demo_data.benchmark import BENCHMARK_FILE, BenchmarkConfig, generate_benchmark
    from components.evaluate.lipsync_eval import PERTURBATIONS, evaluate_lipsync
    from components.face_tracking.core import run_face_tracking
    from components.finetune_clip.base_model import build_demo_base_clip
    from components.finetune_clip.core import run_finetune_clip
    from components.finetune_clip.model import resolve_base_ref
    from components.finetune_lipsync.core import run_finetune_lipsync
    from components.frame_extraction.core import run_frame_extraction
    from components.ingest.core import run_ingest

    home = args.home.resolve()
    config = from_dict(
        {
            "state_dir": str(home),
            "cache_dir": str(args.cache.resolve()),
            "client_id": args.client,
            "window": {"as_of": args.as_of, "days": 30},
            "ingest": {"test_fraction": args.test_fraction},
            "frame_extraction": {"workers": args.workers},
            "face_tracking": {"workers": args.workers, **args.face_tracking},
            "finetune_lipsync": {} if args.lipsync_epochs is None else {"epochs": args.lipsync_epochs},
        }
    )
    ctx = config.context(track=False)  # nothing is logged or registered
    out = (args.out or home / "quality").resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        result = fn()
        seconds[name] = round(time.perf_counter() - started, 1)
        logger.info("%s: %.0f s", name, seconds[name])
        return result

    bucket = Path(config.storage.source_uri)
    truth_dir = home / "demo" / args.client
    if not (bucket / "labels" / "records.jsonl").exists() or not (truth_dir / BENCHMARK_FILE).exists():
        bench = BenchmarkConfig(
            seed=args.seed,
            as_of=args.as_of,
            talking_heads=args.talking_heads,
            clips_per_category=0 if args.lipsync_only else args.clips_per_category,
            workers=args.workers,
        )
        timed("generate", lambda: generate_benchmark(bucket, truth_dir, bench))
    base_dir = Path(resolve_base_ref(config.finetune_clip.base_model, config.state_dir))
    if not args.lipsync_only and not (base_dir / "model.safetensors").exists():
        timed("base_clip", lambda: build_demo_base_clip(base_dir, seed=args.seed))
    doc = json.loads((truth_dir / BENCHMARK_FILE).read_text())

    manifest = out / "ingest" / "manifest.jsonl"
    if _stage(manifest, args.fresh):
        timed("ingest", lambda: run_ingest(manifest, config.ingest, ctx))
    frames = out / "frames"
    if _stage(frames / "index.jsonl", args.fresh):
        timed(
            "frame_extraction",
            lambda: run_frame_extraction(manifest, frames, config.frame_extraction, ctx),
        )
    truth = _truth_by_id(manifest, truth_dir / "truth.jsonl")
    selection = None
    if not args.skip_selection:
        selection = timed("face_selection", lambda: face_selection(config, frames, out / "work", truth))
    if args.selection_only:
        print(json.dumps(selection, indent=1))
        return 0
    faces = out / "faces"
    if _stage(faces / "index.jsonl", args.fresh):
        timed("face_tracking", lambda: run_face_tracking(frames, faces, config.face_tracking, ctx))
    if args.faces_only:
        logger.info("faces Dataset ready: %s (stage seconds %s)", faces, seconds)
        return 0

    search = None
    if not args.lipsync_only:
        clip_model = out / "finetune_clip"
        if _stage(clip_model / "card.json", args.fresh):
            timed("finetune_clip", lambda: run_finetune_clip(frames, clip_model, config.finetune_clip, ctx))
        search = timed("evaluate_clip", lambda: search_figures(config, frames, clip_model, out, doc))

    lipsync_model = out / "finetune_lipsync"
    ft_cfg = config.finetune_lipsync
    if _stage(lipsync_model / "model.safetensors", args.fresh):
        timed(
            "finetune_lipsync",
            lambda: run_finetune_lipsync(faces, lipsync_model, ft_cfg, ctx, face_config=config.face_tracking),
        )
    sweep: dict[str, tuple[float, ...]] | None = None
    if args.perturbations:
        sweep = {}
        for item in args.perturbations.split(","):
            kind, _, level = item.partition(":")
            if kind not in PERTURBATIONS:
                parser.error(f"--perturbations: unknown {kind!r}; known: {', '.join(PERTURBATIONS)}")
            sweep[kind] = sweep.get(kind, ()) + ((float(level),) if level else PERTURBATIONS[kind])
    ls_report = timed(
        "evaluate_lipsync",
        lambda: evaluate_lipsync(
            lipsync_model,
            None,
            faces,
            out / "evaluate_lipsync",
            ft_cfg,
            perturbations=sweep,
            face_config=config.face_tracking,
        ),
    )
    lipsync = lipsync_figures(ls_report, truth)
    lipsync["oracle"] = oracle_figures(doc, truth_dir / "truth.jsonl")
    if selection is not None:
        face_selection_auc(selection, lipsync_model, out / "work", config.face_tracking)

    result = {
        "search": search,
        "lipsync": lipsync,
        "face_selection": selection,
        "seconds": seconds,
        "face_tracking_default": config.face_tracking.select_strategy,
        "lipsync_epochs": config.finetune_lipsync.epochs,
        "perturbations": sweep or "all",
    }
    (out / "quality.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(report_text(result, doc))
    print(f"\nall figures: {out / 'quality.json'}")
    return 0


def report_text(result: dict, doc: dict) -> str:
    """The figures as Markdown, each with its test-set size and, where the issue sets one, its target."""
    s, ls, fs = result["search"], result["lipsync"], result["face_selection"]
    lines = [
        f"benchmark version {doc.get('version', 1)}: {doc['lipsync']['videos']} talking heads, "
        f"{doc['search']['videos']} search clips in {len(doc['search']['categories'])} categories",
    ]
    if s is not None:
        lines += _search_lines(s)
    lines += ["", "## Lip-sync (ROC AUC, fake = positive; test videos)", *_lipsync_lines(ls, fs)]
    lines.append(f"lip-sync epochs: {result['lipsync_epochs']}; perturbation sweep: {result['perturbations']}")
    lines.append(f"stage seconds: {result['seconds']}")
    return "\n".join(lines)


def _search_lines(s: dict) -> list[str]:
    lines = [
        "",
        "## Search (R@1; the test videos of the benchmark)",
        "",
        "| queries | n queries | test videos | base | LoRA | gain | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("paraphrase", "held-out paraphrases"),
        ("paraphrase_client", "... of the 7 client categories"),
        ("paraphrase_distractor", "... of the 14 near distractors"),
        ("multi_label", "held-out group queries (3 categories each)"),
    ):
        gain = s[f"{name}_r1_lora"] - s[f"{name}_r1_base"]
        target = f"gain >= +0.20: {_verdict(gain, 0.20)}" if name == "paraphrase" else ""
        lines.append(
            f"| {label} | {s[f'{name}_queries']} | {s['n_test_videos']} | {s[f'{name}_r1_base']:.3f} | "
            f"{s[f'{name}_r1_lora']:.3f} | {gain:+.3f} | {target} |"
        )
    lines.append(
        f"| evaluate stage (test labels, category relevance) | {s['stage_queries']} | {s['n_test_videos']} | "
        f"{s['stage_r1_base']:.3f} | {s['stage_r1_lora']:.3f} | {s['stage_r1_lora'] - s['stage_r1_base']:+.3f} | |"
    )
    return lines


def _lipsync_lines(ls: dict, fs: dict) -> list[str]:
    lines = [
        "",
        "| subset | n | AUC | target |",
        "|---|---|---|---|",
        f"| test videos with evidence for a verdict ({ls['n_test_inconclusive']} more without) | "
        f"{ls['n_tracked']} | {_fmt(ls['auc_tracked'])} | >= 0.95: {_verdict(ls['auc_tracked'], 0.95)} |",
    ]
    for name, v in ls["per_fake_type"].items():
        target = f">= 0.90: {_verdict(v['auc'], 0.90)}" if "_frames" not in name else ""
        lines.append(f"| fake type {name} vs all reals | {v['n_fake']} + {v['n_real']} | {_fmt(v['auc'])} | {target} |")
    for name, v in ls["per_condition"].items():
        lines.append(f"| {name} | {v['n']} ({v['n_fake']} fake) | {_fmt(v['auc'])} | |")
    for row in ls["perturbations"]:
        target = (
            f">= 0.90: {_verdict(row['auc'], 0.90)}" if row["perturbation"] in TARGET_PERTURBATIONS else "(no target)"
        )
        lines.append(f"| {row['perturbation']} {row['level']:g} | {ls['n_tracked']} | {_fmt(row['auc'])} | {target} |")
    oracle = ls.get("oracle")
    if oracle:
        lines += [
            "",
            f"Oracle on the true mouth opening, all {oracle['n_real']} reals (median lag-0 correlation with their own "
            f"voice {oracle['real_corr_lag0_median']:.2f}): AUC of the rules sync / lag0 / lag",
            "",
            "| fake type | n | sync | lag0 | lag |",
            "|---|---|---|---|---|",
        ]
        for fake_type in ("offset", "partial", "other_speaker"):
            v = oracle[fake_type]
            lines.append(f"| {fake_type} | {v['n_fake']} | {v['sync']:.3f} | {v['lag0']:.3f} | {v['lag']:.3f} |")
    if fs is None:
        return lines
    lines += [
        "",
        f"## Face selection on the {fs['n_two_face']} two-face interviews",
        "",
        "| strategy | speaker picked | s per clip | lip-sync AUC on two-face test videos (n) |",
        "|---|---|---|---|",
    ]
    for strategy in ("longest", "speaking"):
        v = fs[strategy]
        lines.append(
            f"| {strategy} | {v['speaker_picked']:.3f} | {v['seconds_per_clip']:.2f} | "
            f"{_fmt(v['test_auc'])} ({v['n_test']}) |"
        )
    lines.append(f"\ntime ratio speaking / longest: {fs['time_ratio_speaking_over_longest']:.2f}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())

"""The learning loop's DAG stages called directly (seconds each): feedback -> records and review queue, the
finetune_clip batch loss with the records' hard negatives, the monitor stage month over month, their config
sections. The DAG itself runs them in tests/test_pipeline_local.py (its existing runs, no extra one)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from components.common.errors import ConfigError
from components.common.storage import LocalStore
from components.config import from_dict


def _config(tmp_path: Path, as_of: str = "2026-11-01"):
    return from_dict({"state_dir": str(tmp_path / "state"), "client_id": "acme", "window": {"as_of": as_of}})


def _put(store: LocalStore, key: str, rows: list[dict]) -> None:
    store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _search(month: str, i: int, query: str, confidence: float) -> dict:
    return {
        "ts": f"{month}-{i + 1:02d}T10:00:00.000+00:00",
        "query_id": f"{month}-q{i}",
        "query": query,
        "confidence": confidence,
        "low_confidence": confidence < 0.5,
        "top_video": "v0",
    }


def test_feedback_and_monitor_sections_are_validated():
    assert _config(Path("/tmp")).feedback.max_review == 200 and _config(Path("/tmp")).monitor.min_samples == 5
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) in \[feedback\]: negative_wieght"):
        from_dict({"feedback": {"negative_wieght": 3}})
    with pytest.raises(ConfigError, match=r"feedback\.enabled must be bool"):
        from_dict({"feedback": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"feedback: max_review must be 1\.\.100000"):
        from_dict({"feedback": {"max_review": 0}})
    assert _config(Path("/tmp")).feedback.propagate is True
    with pytest.raises(ConfigError, match=r"feedback\.propagate must be bool"):
        from_dict({"feedback": {"propagate": 1}})
    with pytest.raises(ConfigError, match="monitor: min_samples must be >= 2"):
        from_dict({"monitor": {"min_samples": 1}})
    with pytest.raises(ConfigError, match=r"finetune_clip: negative_weight must be 1\.\.100"):
        from_dict({"finetune_clip": {"negative_weight": 0.5}})


def test_feedback_stage_reads_last_month_and_writes_records_and_the_review_queue(tmp_path):
    from components.common.names import FEEDBACK_RECORDS_FILE
    from components.feedback.core import run_feedback
    from components.finetune_clip.negatives import read_feedback_records

    config = _config(tmp_path)
    store = LocalStore(config.storage.artifacts_uri, create=True)
    _put(store, "querylog/clip-acme/2026-10/a.jsonl", [_search("2026-10", 0, "gallbladder op", 0.2)])
    _put(store, "querylog/clip-acme/2026-10/b.jsonl", [_search("2026-10", 1, "tower crane", 0.1)])
    answers = [
        {"ts": "2026-10-05T00:00:00+00:00", "feedback_id": "f1", "query_id": "2026-10-q0", "video_id": "vA"}
        | {"relevant": True},
        {"ts": "2026-10-06T00:00:00+00:00", "feedback_id": "f2", "query_id": "2026-10-q0", "video_id": "vB"}
        | {"relevant": False},
    ]
    _put(store, "feedback/clip-acme/2026-10/1.jsonl", answers)
    _put(store, "feedback/clip-acme/2026-11/1.jsonl", [answers[0] | {"feedback_id": "f9", "relevant": False}])

    out = tmp_path / "records"
    data = run_feedback(out, config.feedback, config.context(track=False), serving=config.serving)
    assert data.as_metrics()["feedback_labels"] == 1.0 and data.as_metrics()["feedback_hard_negatives"] == 1.0
    records = read_feedback_records(out)
    assert {(r["kind"], r["video_id"], r["text"]) for r in records} == {
        ("label", "vA", "gallbladder op"),
        ("hard_negative", "vB", "gallbladder op"),
    }  # October's answers: November's is next month's
    assert [i.query for i in data.review] == ["tower crane"]
    assert store.exists("review/clip-acme/2026-10/review_queue.csv")

    off = run_feedback(
        tmp_path / "off", replace(config.feedback, enabled=False), config.context(track=False), serving=config.serving
    )
    assert off.records == [] and (tmp_path / "off" / FEEDBACK_RECORDS_FILE).read_text() == ""
    assert [i.query for i in off.review] == ["tower crane"]  # the client still gets the queue
    assert read_feedback_records(None) == [] and read_feedback_records(tmp_path / "nowhere") == []


def test_training_batch_weighs_the_feedback_hard_negatives(tmp_path):
    torch = pytest.importorskip("torch")
    from serving_assets import make_base

    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.model import load_base_clip
    from components.finetune_clip.negatives import apply_feedback
    from components.finetune_clip.train import _batch_loss, _data_fingerprint

    torch.manual_seed(0)
    bundle = load_base_clip(str(make_base(tmp_path / "base")))
    bundle.model.eval()
    size = bundle.image_spec.size
    rng = np.random.default_rng(0)
    samples = [
        ClipSample(f"v{i}", torch.from_numpy(rng.integers(0, 256, (2, 3, size, size), dtype=np.uint8)), (lab,))
        for i, lab in enumerate(["red square", "blue circle", "green stripes"])
    ]
    records = [
        {"kind": "label", "video_id": "v1", "text": "round thing"},
        {"kind": "hard_negative", "video_id": "v2", "text": "round thing"},
        {"kind": "hard_negative", "video_id": "v1", "text": "round thing"},  # already a label of v1: left out
        {"kind": "label", "video_id": "v7", "text": "not in this window"},
    ]
    fed = apply_feedback(samples, records)
    assert fed[1].labels == ("blue circle", "round thing") and fed[1].negatives == ()
    assert fed[1].feedback_labels == ("round thing",) and fed[0].feedback_labels == ()
    assert apply_feedback(fed, records[:1])[1] == fed[1]  # applied twice: the same sample
    assert fed[2].negatives == ("round thing",) and fed[0] is samples[0] and samples[2].negatives == ()
    assert _data_fingerprint(fed) != _data_fingerprint([*fed[:2], samples[2]])  # a resume sees new negatives

    with torch.no_grad():
        plain = float(_batch_loss(bundle.model, bundle, [*fed[:2], samples[2]], FinetuneClipConfig()))
        one = float(_batch_loss(bundle.model, bundle, fed, FinetuneClipConfig(negative_weight=1.0)))
        four = float(_batch_loss(bundle.model, bundle, fed, FinetuneClipConfig(negative_weight=4.0)))
    assert one == pytest.approx(plain, rel=1e-6) and four > one


def test_a_feedback_text_is_left_out_for_its_videos_category_and_a_negative_only_text_acts_on_its_negatives():
    torch = pytest.importorskip("torch")
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.loss import batch_texts, positive_mask
    from components.finetune_clip.negatives import contrastive_loss_with_negatives, negative_mask, unknown_pairs

    samples = [
        ClipSample("v0", None, ("red square",), "A"),
        ClipSample("v1", None, ("red square", "round thing"), "A", feedback_labels=("round thing",)),
        ClipSample("v2", None, ("blue circle",), "B", negatives=("round thing", "odd query")),
        ClipSample("v3", None, ("blue circle",), "B"),
    ]
    known = {"round thing": {"v2"}, "odd query": {"v2"}}
    texts = batch_texts([*(s.labels for s in samples), list(known)])
    assert texts == ["red square", "round thing", "blue circle", "odd query"]
    pos = positive_mask([s.labels for s in samples], texts)
    neg = negative_mask([s.video_id for s in samples], texts, known)
    unknown = unknown_pairs(samples, texts, pos, neg)
    # "round thing" (rated relevant on v1, category A): not a negative of v0 (also A), an assumed one of v3 (B),
    # a known one of v2; "odd query" (only ever a wrong answer here) counts only with v2.
    assert unknown.nonzero().tolist() == [[0, 1], [0, 3], [1, 3], [3, 3]]

    rng = np.random.default_rng(0)
    v = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32), dim=-1)
    x = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(4, 8)), dtype=torch.float32), dim=-1)
    x.requires_grad_(True)
    contrastive_loss_with_negatives(v, x, pos, neg, 10.0, 2.0, unknown).backward()
    cosine = torch.nn.functional.cosine_similarity(x.grad[3], v[2], dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)  # "odd query" is only pushed away from v2
    with pytest.raises(ValueError, match="left out is also a positive"):
        contrastive_loss_with_negatives(v, x, pos, neg, 10.0, 2.0, pos)


@pytest.mark.slow
def test_monitor_stage_month_over_month_without_a_champion(tmp_path):
    pytest.importorskip("evidently")
    from components.evaluate.lipsync_eval import PAIRED_FILE
    from components.monitor.core import run_monitor

    rng = np.random.default_rng(0)
    reports = {}
    for as_of, month, lo in (("2026-10-01", "2026-09", 0.0), ("2026-11-01", "2026-10", 0.6)):
        config = _config(tmp_path, as_of)
        store = LocalStore(config.storage.artifacts_uri, create=True)
        searches = [_search(month, i, f"query {i}", float(c)) for i, c in enumerate(rng.uniform(lo, lo + 0.4, 20))]
        _put(store, f"querylog/clip-acme/{month}/a.jsonl", searches)
        evaluation = tmp_path / f"eval-{month}"
        evaluation.mkdir()
        scores = rng.uniform(lo, lo + 0.4, 12)
        (evaluation / PAIRED_FILE).write_text(
            "".join(
                json.dumps({"video_id": f"v{i}", "challenger_score": float(s)}) + "\n" for i, s in enumerate(scores)
            )
        )
        out = tmp_path / f"monitor-{month}"
        reports[month] = run_monitor(
            None, evaluation, out, config.monitor, config.context(track=False), serving=config.serving
        )

    first, second = reports["2026-09"], reports["2026-10"]
    assert not first.get("lipsync_score").evaluated  # nothing saved before the first month
    assert second.month == "2026-10" and second.reference_month == "2026-09"
    assert second.get("lipsync_score").evaluated and second.get("lipsync_score").drift is True
    assert second.get("top1_confidence").drift is True and "K-S" in second.get("top1_confidence").method
    assert not second.get("query_embedding").evaluated  # no champion: no text tower to embed with
    assert "| lipsync_score | **yes** |" in second.to_markdown()
    assert store.exists("monitor/clip-acme/2026-10/lipsync_scores.json")
    assert store.exists("monitor/clip-acme/2026-10/summary.json")


def test_clip_remembers_labelled_history_newest_first_within_the_window_and_cap(tmp_path):
    torch = pytest.importorskip("torch")
    from datetime import date

    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.history import recall, remember

    store = LocalStore(tmp_path / "artifacts", create=True)
    shape = (2, 3, 8, 8)

    def sample(i: int, frames_shape=shape) -> ClipSample:
        return ClipSample(f"v{i}", torch.full(frames_shape, i, dtype=torch.uint8), (f"label {i}",), "cat")

    remember(store, [("train", sample(1), "2026-09-01"), ("val", sample(2), "2026-09-01")])
    fed = {"labels": ("label 3", "asked"), "negatives": ("wrong",), "feedback_labels": ("asked",)}
    remember(store, [("train", replace(sample(3), **fed), "2026-10-01")])
    remember(store, [("train", sample(4, (4, 3, 8, 8)), "2026-10-01")])  # another frames_per_video
    remember(store, [("train", sample(5), "2026-12-01")])  # remembered by a later run

    got = recall(store, {"v9"}, date(2026, 11, 1), 0, 0, shape)
    assert [(split, s.video_id, seen) for split, s, seen in got] == [
        ("train", "v1", "2026-09-01"),
        ("val", "v2", "2026-09-01"),
        ("train", "v3", "2026-10-01"),
    ]
    v3 = got[2][1]
    assert v3.labels == ("label 3", "asked") and v3.negatives == ("wrong",) and int(v3.frames[0, 0, 0, 0]) == 3
    assert v3.feedback_labels == ("asked",) and got[0][1].feedback_labels == ()
    assert [s.video_id for _, s, _ in recall(store, {"v3"}, date(2026, 11, 1), 0, 0, shape)] == ["v1", "v2"]
    assert [s.video_id for _, s, _ in recall(store, set(), date(2026, 11, 1), 40, 0, shape)] == ["v3"]
    newest = recall(store, set(), date(2026, 11, 1), 0, 2, shape)  # the cap keeps the newest
    assert [s.video_id for _, s, _ in newest] == ["v2", "v3"]
    assert list(store.list_keys("videos/")) == []


def test_warm_start_only_from_a_fitting_champion_of_an_earlier_window(tmp_path):
    from components.finetune_clip.config import FinetuneClipConfig
    from components.finetune_clip.history import warm_start_adapter

    cfg = FinetuneClipConfig()
    card = {
        "strategy": "lora",
        "base_model": "/m/base",
        "window": "2026-09-01..2026-10-01",
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "target_modules": list(cfg.target_modules)},
    }
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")

    def fits(**changes) -> bool:
        (tmp_path / "card.json").write_text(json.dumps({**card, **changes}))
        window = "2026-10-02..2026-11-01"
        return warm_start_adapter(tmp_path, "/m/base", cfg, window) is not None

    assert fits()
    assert not fits(base_model="/m/other")
    assert not fits(lora={**card["lora"], "r": 4})
    assert not fits(window="2026-10-02..2026-11-01")  # a rerun of the same month
    assert not fits(strategy="hybrid")
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert warm_start_adapter(tmp_path, "/m/base", replace(cfg, strategy="full"), "w") is None


@pytest.mark.slow
def test_too_few_embeddings_for_evidentlys_t_sne_are_not_evaluated_rather_than_a_failed_stage(tmp_path):
    pytest.importorskip("evidently")
    from components.monitor.core import MonitorConfig, MonthSignals, monitor_month

    rng = np.random.default_rng(0)
    current = MonthSignals(
        "2026-10", upload_embeddings=rng.normal(size=(12, 8)), library_embeddings=rng.normal(size=(16, 8))
    )
    report = monitor_month(current, MonthSignals("2026-09"), tmp_path, MonitorConfig())
    assert not report.get("upload_embedding").evaluated and "t-SNE" in report.get("upload_embedding").note

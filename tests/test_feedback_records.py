"""Feedback -> training records with provenance -> a training step that uses them; the review queue; the
contrastive loss with known (hard) negatives."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import date

import numpy as np
import pytest

from components.feedback.core import (
    ReviewItem,
    feedback_for_month,
    feedback_month,
    read_records,
    review_queue,
    training_records,
)

torch = pytest.importorskip("torch")


def fb(n: int, qid: str, video: str, relevant: bool, query: str = "", label: str = "", version: str = "3") -> dict:
    return {
        "ts": f"2026-10-{n:02d}T10:00:00.000+00:00",
        "feedback_id": f"f{n}",
        "query_id": qid,
        "video_id": video,
        "relevant": relevant,
        "label": label,
        "query": query,
        "query_known": bool(query),
        "version": version,
    }


def q(n: int, qid: str, text: str, confidence: float, month: str = "2026-10") -> dict:
    return {
        "ts": f"{month}-{n:02d}T09:00:00.000+00:00",
        "query_id": qid,
        "query": text,
        "confidence": confidence,
        "low_confidence": confidence < 0.5,
        "top_video": f"top-{qid}",
    }


def test_relevant_becomes_a_label_not_relevant_a_hard_negative_with_provenance():
    feedback = [
        fb(1, "q1", "vA", True, "gallbladder op", label="keyhole cholecystectomy"),
        fb(2, "q1", "vB", False, "gallbladder op"),
        fb(3, "q2", "vC", True),  # unknown to the server when given; the query log knows it
        fb(4, "q9", "vC", True),  # known to nobody
        fb(5, "q3", "vA", True, "Welding  Sparks", label="welding sparks"),  # the label repeats the query
        fb(6, "q4", "vB", True, "GALLBLADDER op"),  # the same text as q1, later: it overrides q1's answer on vB
    ]
    data = training_records(feedback, [q(1, "q2", "forklift in aisle", 0.3)])
    got = {(r.kind, r.video_id, r.text, r.source) for r in data.records}
    assert got == {
        ("label", "vA", "gallbladder op", "query"),
        ("label", "vA", "keyhole cholecystectomy", "client_label"),
        ("label", "vC", "forklift in aisle", "query"),
        ("label", "vA", "Welding  Sparks", "query"),
        ("label", "vB", "GALLBLADDER op", "query"),
    }
    assert data.hard_negatives == []  # overridden by the later answer on the same text and video
    assert data.skipped == [{"feedback_id": "f4", "query_id": "q9", "reason": "unknown_query"}]
    record = next(r for r in data.records if r.source == "client_label")
    assert (record.feedback_id, record.query_id, record.feedback_ts, record.model_version) == (
        "f1",
        "q1",
        "2026-10-01T10:00:00.000+00:00",
        "3",
    )
    data = training_records([fb(1, "q1", "vB", True, "x"), fb(2, "q1", "vB", False, "x")], [])
    assert [(r.kind, r.video_id, r.text) for r in data.records] == [("hard_negative", "vB", "x")]
    assert data.as_metrics()["feedback_hard_negatives"] == 1.0


def test_a_relevant_rating_labels_the_training_videos_of_its_category_unless_the_client_said_otherwise():
    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.negatives import apply_feedback

    feedback = [
        fb(1, "q1", "vA", True, "belly op"),
        fb(2, "q2", "vA2", True, "belly op"),  # the same text on another video of the category: one record
        fb(3, "q3", "vB", False, "belly op"),
        fb(4, "q4", "vZ", True, "rink game"),  # a video of no known category: a label, nothing propagated
    ]
    categories = {"vA": "medical", "vA2": "medical", "vB": "welding"}
    data = training_records(feedback, [], categories)
    assert [(r.kind, r.video_id, r.text, r.category, r.feedback_id, r.query_id) for r in data.category_labels] == [
        ("category_label", "vA", "belly op", "medical", "f1", "q1")
    ]
    assert len(data.labels) == 3 and len(data.hard_negatives) == 1
    assert data.as_metrics()["feedback_category_labels"] == 1.0
    assert training_records(feedback, []).category_labels == []  # propagation off: no categories given

    samples = [
        ClipSample("t0", None, ("keyhole surgery",), "medical"),
        ClipSample("t1", None, ("gallbladder removal",), "medical"),
        ClipSample("t2", None, ("welding sparks",), "welding"),
        ClipSample("t3", None, ("no category",), ""),
    ]
    wrong = {"kind": "hard_negative", "video_id": "t1", "text": "belly op"}  # the client's word on t1
    fed = apply_feedback(samples, [*(asdict(r) for r in data.records), wrong])
    assert fed[0].labels == ("keyhole surgery", "belly op") and fed[0].feedback_labels == ("belly op",)
    assert fed[1].labels == ("gallbladder removal",) and fed[1].negatives == ("belly op",)
    assert fed[2] is samples[2] and fed[3] is samples[3]
    assert apply_feedback(fed, [asdict(r) for r in data.records]) == fed  # applied twice: the same samples


def test_review_queue_ranks_searches_without_a_right_answer_by_unsureness_times_frequency():
    log = [
        q(1, "a1", "drone footage", 0.4),
        q(2, "a2", "Drone  footage", 0.2),  # same text: 2 searches, mean 0.3 -> 2 x 0.7 = 1.4
        q(3, "b1", "crane lift", 0.05),  # 1 x 0.95
        q(4, "c1", "paint booth", 0.9),  # confident, but every rated result was wrong: 1 x 1.0
        q(5, "d1", "conveyor", 0.9),  # confident: out
        q(6, "e1", "tower crane", 0.1),  # unsure, but a result was rated relevant: out
    ]
    answers = [fb(7, "c1", "v", False, "paint booth"), fb(8, "e1", "v", False), fb(9, "e1", "w", True)]
    items = review_queue(log, answers)
    assert [(i.rank, i.query, i.count, i.reason) for i in items] == [
        (1, "Drone  footage", 2, "low_confidence"),
        (2, "paint booth", 1, "no_relevant_result"),
        (3, "crane lift", 1, "low_confidence"),
    ]
    assert items[0].unsureness == pytest.approx(0.7) and items[0].priority == pytest.approx(1.4)
    assert items[0].query_id == "a2" and items[0].top_video == "top-a2"
    assert items[1].unsureness == 1.0 and items[1].mean_confidence == pytest.approx(0.9)
    assert review_queue(log, [], max_items=1)[0].query == "Drone  footage"


def test_a_review_answer_names_a_video_the_search_did_not_return_and_trains_like_any_relevant_rating():
    # The client answers "paint booth" (every result it was shown was wrong) with the video it found in its library.
    named = fb(9, "c1", "vZ", True, "paint booth") | {"rank": None}
    data = training_records([fb(7, "c1", "v", False, "paint booth") | {"rank": 1}, named], [], {"vZ": "painting"})
    assert [(r.kind, r.video_id, r.text, r.rank, r.feedback_id, r.query_id) for r in data.records] == [
        ("hard_negative", "v", "paint booth", 1, "f7", "c1"),
        ("label", "vZ", "paint booth", None, "f9", "c1"),
        ("category_label", "vZ", "paint booth", None, "f9", "c1"),
    ]
    assert (
        data.category_labels[0].category == "painting" and review_queue([q(4, "c1", "paint booth", 0.9)], [named]) == []
    )


def test_run_feedback_reads_the_store_and_writes_records_and_the_review_queue(tmp_path):
    from components.common.storage import LocalStore
    from serving.feedback import PREFIX as FEEDBACK
    from serving.querylog import PREFIX as QUERYLOG

    store = LocalStore(tmp_path / "artifacts", create=True)
    uploads = LocalStore(tmp_path / "uploads", create=True)
    uploads.put_bytes("labels/records.jsonl", b'{"video_path": "videos/a.mp4", "labels": ["a"]}\n')
    before = {k: uploads.get_bytes(k) for k in uploads.list_keys()}

    def put(key: str, rows: list[dict]) -> None:
        store.put_bytes(key, "".join(json.dumps(r) + "\n" for r in rows).encode())

    put(f"{QUERYLOG}/clip-acme/2026-09/x.jsonl", [q(30, "late", "night shift", 0.3, "2026-09")])
    put(f"{QUERYLOG}/clip-acme/2026-10/x.jsonl", [q(1, "q1", "gallbladder op", 0.2), q(2, "q2", "crane", 0.1)])
    put(f"{FEEDBACK}/clip-acme/2026-10/1.jsonl", [fb(1, "q1", "vA", True), fb(2, "late", "vB", False)])
    put(f"{FEEDBACK}/clip-acme/2026-11/1.jsonl", [fb(1, "q1", "vA", False, "gallbladder op")])  # another month

    assert feedback_month(date(2026, 11, 1)) == "2026-10" and feedback_month(date(2026, 1, 31)) == "2025-12"
    data = feedback_for_month(store, "clip-acme", "2026-10", tmp_path / "out")
    assert {(r.kind, r.video_id, r.text) for r in read_records(tmp_path / "out" / "feedback_records.jsonl")} == {
        ("label", "vA", "gallbladder op"),
        ("hard_negative", "vB", "night shift"),  # a September search rated in October
    }
    assert [i.query for i in data.review] == ["crane"]
    rows = list(csv.DictReader((tmp_path / "out" / "review_queue.csv").read_text().splitlines()))
    assert rows[0]["query"] == "crane" and set(rows[0]) == set(ReviewItem.__dataclass_fields__)
    assert rows[0]["reason"] == "low_confidence"
    assert "crane" in (tmp_path / "out" / "review_queue.html").read_text()
    assert sorted(k for k in store.list_keys("review/")) == [
        "review/clip-acme/2026-10/review_queue.csv",
        "review/clip-acme/2026-10/review_queue.html",
    ]
    assert {k: uploads.get_bytes(k) for k in uploads.list_keys()} == before  # uploads untouched


# ------------------------------------------------------------------------------------------------ the loss


def _embeddings(seed: int, b: int = 4, t: int = 5, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=-1)
    x = torch.nn.functional.normalize(torch.randn(t, d, generator=gen), dim=-1)
    pos = torch.zeros(b, t, dtype=torch.bool)
    pos[torch.arange(b), torch.arange(b)] = True
    return v, x, pos


def test_hard_negative_loss_is_the_plain_loss_without_known_negatives_and_weighs_them_up():
    from components.finetune_clip.loss import contrastive_loss
    from components.finetune_clip.negatives import contrastive_loss_with_negatives, negative_mask

    v, x, pos = _embeddings(0)
    none = torch.zeros_like(pos)
    plain = contrastive_loss(v, x, pos, 10.0)
    assert torch.allclose(contrastive_loss_with_negatives(v, x, pos, none, 10.0, 4.0), plain)
    neg = negative_mask(["v0", "v1", "v2", "v3"], ["t0", "t1", "t2", "t3", "t4"], {"t4": {"v1"}, "t0": {"v2"}})
    assert neg.nonzero().tolist() == [[1, 4], [2, 0]]
    assert torch.allclose(contrastive_loss_with_negatives(v, x, pos, neg, 10.0, 1.0), plain)
    weighted = [float(contrastive_loss_with_negatives(v, x, pos, neg, 10.0, w)) for w in (1.0, 2.0, 8.0)]
    assert weighted[0] < weighted[1] < weighted[2]
    # The gradient pushes a known negative pair apart harder than an ordinary one.
    v1 = v.clone().requires_grad_(True)
    contrastive_loss_with_negatives(v1, x, pos, neg, 10.0, 8.0).backward()
    g_weighted = float((v1.grad[1] @ x[4]).neg())
    v2 = v.clone().requires_grad_(True)
    contrastive_loss(v2, x, pos, 10.0).backward()
    assert g_weighted < float((v2.grad[1] @ x[4]).neg())  # descent lowers v1.x4 more with the known negative
    with pytest.raises(ValueError, match="both a positive and a known negative"):
        contrastive_loss_with_negatives(v, x, pos, pos, 10.0)
    with pytest.raises(ValueError, match="negative_weight"):
        contrastive_loss_with_negatives(v, x, pos, neg, 10.0, 0.5)
    with pytest.raises(ValueError, match="do not match"):
        contrastive_loss_with_negatives(v, x, pos, neg[:, :3], 10.0)


def test_hard_negative_loss_in_half_precision_and_on_the_meta_device():
    from components.finetune_clip.negatives import contrastive_loss_with_negatives

    v, x, pos = _embeddings(1)
    neg = torch.zeros_like(pos)
    neg[0, 3] = True
    with torch.autocast("cpu", dtype=torch.float16):
        loss = contrastive_loss_with_negatives(v.half(), x.half(), pos, neg, 100.0, 4.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    meta = contrastive_loss_with_negatives(v.to("meta"), x.to("meta"), pos, neg, 100.0, 4.0)
    assert meta.device.type == "meta"


def test_feedback_records_drive_a_training_step(tmp_path):
    """Feedback -> records -> samples and a negatives mask -> optimizer steps: the rated query moves towards the
    video marked relevant and away from the one marked not relevant."""
    from serving_assets import make_base

    from components.finetune_clip.data import ClipSample
    from components.finetune_clip.loss import batch_texts, positive_mask
    from components.finetune_clip.model import encode_texts, encode_videos, load_base_clip
    from components.finetune_clip.negatives import apply_feedback, contrastive_loss_with_negatives, negative_mask

    torch.manual_seed(0)
    bundle = load_base_clip(str(make_base(tmp_path / "base")))
    model = bundle.model
    rng = np.random.default_rng(0)
    size = bundle.image_spec.size
    samples = [
        ClipSample(f"v{i}", torch.from_numpy(rng.integers(0, 256, (2, 3, size, size), dtype=np.uint8)), (lab,))
        for i, lab in enumerate(["red square", "blue circle", "green stripes", "yellow star"])
    ]
    query = "the one with the bright disc"
    feedback = [fb(1, "q1", "v1", True, query), fb(2, "q1", "v2", False, query), fb(3, "q1", "v9", True, query)]
    samples = apply_feedback(samples, [asdict(r) for r in training_records(feedback, []).records])
    assert samples[1].labels == ("blue circle", query) and samples[2].negatives == (query,)  # v9 is not in the batch
    negatives = {query: {"v2"}}

    def similarities():
        with torch.no_grad():
            frames = torch.stack([s.frames for s in samples])
            video = encode_videos(model, frames, bundle.image_spec)
            return (encode_texts(model, bundle.tokenizer, [query]) @ video.T)[0]

    model.eval()
    before = similarities()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    texts = batch_texts([s.labels for s in samples])
    pos = positive_mask([s.labels for s in samples], texts)
    neg = negative_mask([s.video_id for s in samples], texts, negatives)
    for _ in range(5):
        video = encode_videos(model, torch.stack([s.frames for s in samples]), bundle.image_spec)
        text = encode_texts(model, bundle.tokenizer, texts)
        loss = contrastive_loss_with_negatives(video, text, pos, neg, model.logit_scale.exp(), 4.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = similarities()
    assert after[1] - after[2] > before[1] - before[2]  # relevant over not relevant, more than before
    assert after[1] > before[1]

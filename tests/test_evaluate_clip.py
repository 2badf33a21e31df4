"""evaluate (CLIP part): retrieval metrics on constructed similarity matrices and the report files."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from components.evaluate.clip_eval import ClipEvalReport, clip_estimates, write_clip_report
from components.evaluate.config import EvaluateConfig
from components.finetune_clip.metrics import retrieval_metrics, retrieval_problem


def _constructed():
    # 3 queries x 5 videos. Sorted orders (descending similarity):
    #   q0: v0 v1 v2 v3 v4, relevant {0, 2}  -> first rank 1, AP = (1/1 + 2/3) / 2
    #   q1: v4 v3 v2 v1 v0, relevant {1}     -> first rank 4, AP = 1/4
    #   q2: v2 v0 v4 v1 v3, relevant {4, 3}  -> first rank 3, AP = (1/3 + 2/5) / 2
    sim = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],
            [0.1, 0.2, 0.3, 0.4, 0.5],
            [0.8, 0.2, 0.9, 0.1, 0.5],
        ]
    )
    relevant = [{0, 2}, {1}, {3, 4}]
    return sim, relevant


def test_retrieval_metrics_on_constructed_matrix():
    sim, relevant = _constructed()
    res = retrieval_metrics(sim, relevant, ["med", "med", "ind"], ["med", "med", "med", "ind", "ind"], ["a", "b", "c"])
    assert res.rank.tolist() == [1, 4, 3]
    assert res.average_precision == pytest.approx([(1 + 2 / 3) / 2, 1 / 4, (1 / 3 + 2 / 5) / 2])
    assert res.recall_at_1 == pytest.approx(1 / 3)
    assert res.recall_at_5 == 1.0 and res.recall_at_10 == 1.0
    assert res.median_rank == 3.0
    assert res.mean_ap == pytest.approx(np.mean([(1 + 2 / 3) / 2, 1 / 4, (1 / 3 + 2 / 5) / 2]))
    assert res.query_top1_by_category == {"ind": 0.0, "med": 0.5}
    # video -> query: argmax per column is q0, q0, q2, q0, q0 (v4: three-way tie -> first query);
    # v0 right (q0); v1 (wants q1), v2 (wants q0), v3 and v4 (want q2) wrong
    assert res.video_top1_by_category == {"med": pytest.approx(1 / 3), "ind": 0.0}
    paired = res.per_query()
    assert paired["hit_at_1"] == [1, 0, 0] and paired["rank"] == [1, 4, 3]
    assert res.summary()["n_queries"] == 3 and res.n_videos == 5


def test_perfect_and_reversed_similarities():
    n = 6
    relevant = [{i} for i in range(n)]
    cats = ["x"] * n
    perfect = retrieval_metrics(np.eye(n), relevant, cats, cats)
    assert perfect.recall_at_1 == 1.0 and perfect.mean_ap == 1.0 and perfect.median_rank == 1.0
    reversed_ = retrieval_metrics(-np.eye(n), relevant, cats, cats)
    assert reversed_.rank.tolist() == [n] * n and reversed_.recall_at_5 == 0.0
    assert reversed_.mean_ap == pytest.approx(1 / n)


def test_retrieval_metrics_rejects_bad_input():
    sim, relevant = _constructed()
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(sim, [{0}, set(), {1}], ["a"] * 3, ["a"] * 5)
    with pytest.raises(ValueError, match="video categories"):
        retrieval_metrics(sim, relevant, ["a"] * 3, ["a"] * 4)
    with pytest.raises(ValueError, match="relevant"):
        retrieval_metrics(sim, [{0}, {7}, {1}], ["a"] * 3, ["a"] * 5)


def test_retrieval_problem_from_samples():
    from components.finetune_clip.data import ClipSample

    samples = [
        ClipSample("a", None, ("forklift loading", "warehouse"), "industrial"),
        ClipSample("b", None, ("warehouse",), "industrial"),
        ClipSample("c", None, ("warehouse", "curling stone"), "sports"),
    ]
    queries, relevant, cats = retrieval_problem(samples)
    assert queries == ["curling stone", "forklift loading", "warehouse"]
    assert relevant == [{2}, {0}, {0, 1, 2}]
    assert cats == ["sports", "industrial", "industrial"]
    _, relevant_cat, _ = retrieval_problem(samples, relevance="category")
    assert relevant_cat == [{2}, {0, 1}, {0, 1, 2}]
    with pytest.raises(ValueError, match="relevance"):
        retrieval_problem(samples, relevance="fuzzy")


def test_report_files(tmp_path):
    sim, relevant = _constructed()
    qc, vc = ["med", "med", "ind"], ["med", "med", "med", "ind", "ind"]
    challenger = retrieval_metrics(sim, relevant, qc, vc, ["a", "b", "c"])
    baseline = retrieval_metrics(-sim, relevant, qc, vc, ["a", "b", "c"])
    report = ClipEvalReport(challenger, baseline, "base", 5, [], {})
    files = write_clip_report(report, tmp_path)
    summary = json.loads((tmp_path / "clip_eval.json").read_text())
    assert summary["challenger"]["recall_at_1"] == pytest.approx(1 / 3)
    assert summary["baseline"]["median_rank"] == float(np.median(baseline.rank))
    paired = json.loads((tmp_path / "clip_per_query.json").read_text())
    assert paired["queries"] == ["a", "b", "c"]
    assert paired["challenger"]["rank"] == [1, 4, 3] and paired["baseline"]["rank"] == baseline.rank.tolist()
    md = (tmp_path / "clip_report.md").read_text()
    assert "| Recall@1 | " in md and "| med | 2 |" in md
    png = (tmp_path / "clip_per_category.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "clip_report.html").read_text()
    assert base64.b64encode(png).decode()[:200] in html and "<table>" in html
    assert set(files) == {
        "clip_eval.json",
        "clip_per_query.json",
        "clip_report.md",
        "clip_report.html",
        "clip_per_category.png",
    }
    m = report.as_metrics()
    assert m["clip_delta_recall_at_1"] == pytest.approx(challenger.recall_at_1 - baseline.recall_at_1)
    assert "clip_challenger_recall_at_1_ci_low" not in m  # no estimates given: no intervals invented

    # With the estimates evaluate_clip attaches, each figure and each category's R@1 carries its interval.
    settings = EvaluateConfig(n_bootstrap=200)
    report.estimates = {
        "challenger": clip_estimates(challenger, settings),
        "baseline": clip_estimates(baseline, settings),
    }
    write_clip_report(report, tmp_path)
    md = (tmp_path / "clip_report.md").read_text()
    low, high = (
        report.estimates["challenger"]["recall_at_1"]["low"],
        report.estimates["challenger"]["recall_at_1"]["high"],
    )
    assert f"| Recall@1 | 0.333 [{low:.3f}, {high:.3f}] | 0.333 [0.061, 0.792] |" in md  # Wilson of 1/3
    assert "| Recall@5 | 1.000 [0.439, 1.000] |" in md
    assert "| med | 2 | 0% | 50% | [9%, 91%] |" in md and "Intervals: 95% Wilson for R@k (over the 3 queries)" in md
    saved = json.loads((tmp_path / "clip_eval.json").read_text())["estimates"]
    assert saved["challenger"]["recall_at_1_by_category"]["ind"]["n"] == 1
    assert report.as_metrics()["clip_challenger_mean_ap_ci_high"] <= 1.0

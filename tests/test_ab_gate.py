"""ab_gate: decide() through every branch, both paired tests, both models, and the serialized forms."""

from __future__ import annotations

import numpy as np
import pytest

from components.ab_gate.config import GatePolicy
from components.ab_gate.decision import Decision, ModelEvaluation, decide, mcnemar_p_value
from components.common.config import ConfigError

CATEGORIES = ("surgery", "safety", "sports")


def clip_pair(
    n: int,
    base_correct: int,
    challenger_only: int,
    champion_only: int,
    groups_base: dict | None = None,
    groups_chal: dict | None = None,
    version: str = "1",
) -> tuple[ModelEvaluation, ModelEvaluation]:
    """A champion and a challenger with exact hit@1 counts: the challenger wins ``challenger_only``
    items the champion misses and loses ``champion_only`` items the champion gets."""
    ids = [f"q{i:05d}" for i in range(n)]
    base = np.zeros(n, dtype=int)
    base[:base_correct] = 1
    chal = base.copy()
    chal[:champion_only] = 0
    chal[base_correct : base_correct + challenger_only] = 1
    groups_base = groups_base or dict.fromkeys(CATEGORIES, 0.3)
    groups_chal = groups_chal or dict.fromkeys(CATEGORIES, 0.3)
    champion = ModelEvaluation("clip", version, "recall_at_1", base.mean(), ids, base.tolist(), groups=groups_base)
    challenger = ModelEvaluation("clip", "2", "recall_at_1", chal.mean(), ids, chal.tolist(), groups=groups_chal)
    return champion, challenger


def test_promote_when_gain_large_significant_and_no_regression():
    champion, challenger = clip_pair(400, 120, challenger_only=50, champion_only=10)
    d = decide(champion, challenger, GatePolicy())
    assert d.promote and d.verdict == "promote"
    assert d.baseline == "champion" and d.baseline_version == "1" and d.challenger_version == "2"
    assert d.champion_primary == pytest.approx(0.30) and d.challenger_primary == pytest.approx(0.40)
    assert d.gain == pytest.approx(0.10)
    assert d.significant and 0 < d.ci_low < 0.10 < d.ci_high
    assert d.discordant == {"challenger_only": 50, "champion_only": 10}
    assert d.regressions == {} and d.n_items == 400
    assert d.reasons[0].startswith("recall_at_1 gain +0.1000 >= min_gain")


def test_keep_weak_candidate_gain_real_but_below_min_gain():
    # The seed's "Generic training" weak candidate: 28% -> 32% (+4 points, "not worth it"). On 2000 queries
    # with no item lost the gain is certainly real, but a policy asking for 5 points keeps the champion.
    champion, challenger = clip_pair(2000, 560, challenger_only=80, champion_only=0)
    policy = GatePolicy(min_gain=0.05)
    for test in ("bootstrap", "mcnemar"):
        d = decide(champion, challenger, GatePolicy(min_gain=0.05, test=test))
        assert not d.promote
        assert d.significant, test
        assert d.gain == pytest.approx(0.04)
        assert d.reasons[0] == "recall_at_1 gain +0.0400 < min_gain 0.0500: not worth a new model"
        assert sum("not worth" in r for r in d.reasons) == 1
    # With the default min_gain (2 points) the same challenger is promoted.
    assert decide(champion, challenger, GatePolicy()).promote
    assert policy.min_gain == 0.05


def test_keep_when_gain_not_significant():
    # +3 points on 100 queries, 5 won and 2 lost: above min_gain, but noise.
    champion, challenger = clip_pair(100, 30, challenger_only=5, champion_only=2)
    d = decide(champion, challenger, GatePolicy())
    assert not d.promote and not d.significant
    assert d.gain == pytest.approx(0.03)
    assert d.ci_low <= 0 < d.ci_high
    assert any("not significant" in r for r in d.reasons)
    assert not any("min_gain" in r and "<" in r for r in d.reasons)


def test_keep_when_a_category_regresses():
    groups_base = {"surgery": 0.50, "safety": 0.40, "sports": 0.30}
    groups_chal = {"surgery": 0.70, "safety": 0.32, "sports": 0.34}  # safety -0.08
    champion, challenger = clip_pair(400, 120, 50, 10, groups_base, groups_chal)
    d = decide(champion, challenger, GatePolicy())
    assert not d.promote and d.significant and d.gain >= 0.02
    assert d.regressions == {"safety": pytest.approx(0.08)}
    assert d.group_deltas["surgery"] == pytest.approx(0.20)
    assert d.reasons[0].startswith("category 'safety' regresses by 0.0800 > max_regression 0.0500")
    # A looser policy tolerates the drop.
    assert decide(champion, challenger, GatePolicy(max_regression=0.10)).promote


def test_first_month_compares_against_base():
    base, challenger = clip_pair(400, 120, 50, 10, version="base")
    d = decide(None, challenger, GatePolicy(), base=base)
    assert d.promote and d.baseline == "base" and d.baseline_version == "base"
    assert any("first month" in r for r in d.reasons)
    assert "vs base model" in d.to_markdown()
    # A champion, when present, wins over the base as the baseline.
    champion, _ = clip_pair(400, 160, 0, 0)
    assert decide(champion, challenger, GatePolicy(), base=base).baseline == "champion"


def test_refuses_without_baseline_or_on_different_items_or_metrics():
    champion, challenger = clip_pair(50, 10, 5, 0)
    with pytest.raises(ValueError, match="no champion and no base"):
        decide(None, challenger, GatePolicy())
    other = ModelEvaluation(
        "clip", "1", "recall_at_1", 0.2, [f"x{i}" for i in range(50)], champion.item_correct, groups={}
    )
    with pytest.raises(ValueError, match="not evaluated on the same test items"):
        decide(other, challenger, GatePolicy())
    lip = lipsync_eval("1", np.linspace(0, 1, 50), np.arange(50) % 2, [f"q{i:05d}" for i in range(50)])
    with pytest.raises(ValueError, match="cannot compare a lipsync model with a clip model"):
        decide(lip, challenger, GatePolicy())
    with pytest.raises(ValueError, match="primary_metric must be 'recall_at_1'"):
        ModelEvaluation("clip", "1", "roc_auc", 0.5, ["a"], [1])


def test_items_are_aligned_by_id_not_position():
    champion, challenger = clip_pair(400, 120, 50, 10)
    perm = np.random.default_rng(1).permutation(400)
    shuffled = ModelEvaluation(
        "clip",
        "1",
        "recall_at_1",
        champion.primary,
        [champion.item_ids[i] for i in perm],
        [champion.item_correct[i] for i in perm],
        groups=champion.groups,
    )
    a = decide(champion, challenger, GatePolicy())
    b = decide(shuffled, challenger, GatePolicy())
    assert a.discordant == b.discordant and a.ci_low == b.ci_low and a.promote == b.promote


def test_mcnemar_branches_and_exact_p_value():
    from scipy.stats import binomtest

    for c, b in ((50, 10), (7, 3), (0, 0), (3, 30), (200, 150)):
        expected = 1.0 if c + b == 0 else binomtest(c, c + b, 0.5).pvalue
        assert mcnemar_p_value(c, b) == pytest.approx(expected, rel=1e-9)
    champion, challenger = clip_pair(400, 120, 50, 10)
    d = decide(champion, challenger, GatePolicy(test="mcnemar"))
    assert d.promote and d.test == "mcnemar" and d.ci_low is None and d.ci_high is None
    assert d.p_value == pytest.approx(binomtest(50, 60, 0.5).pvalue)
    champion, challenger = clip_pair(100, 30, 5, 2)
    d = decide(champion, challenger, GatePolicy(test="mcnemar"))
    assert not d.promote and not d.significant and d.p_value > 0.05
    # Significantly different, but in the champion's favour: never a promotion.
    champion, challenger = clip_pair(400, 200, 5, 40)
    d = decide(champion, challenger, GatePolicy(test="mcnemar", min_gain=0.0))
    assert d.p_value < 0.05 and not d.significant and not d.promote


def lipsync_eval(version, scores, labels, ids=None, groups=None, threshold=0.5):
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=int)
    ids = ids or [f"v{i:04d}" for i in range(len(scores))]
    correct = ((scores >= threshold).astype(int) == labels).astype(int)
    return ModelEvaluation(
        "lipsync",
        version,
        "roc_auc",
        float(roc_auc_score(labels, scores)),
        ids,
        correct.tolist(),
        labels.tolist(),
        scores.tolist(),
        groups or {"jpeg": 0.8, "blur": 0.8, "noise": 0.8},
    )


def test_lipsync_bootstrap_recomputes_auc_on_paired_resamples():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 2
    champ_scores = np.clip(0.5 + (labels - 0.5) * 0.3 + rng.normal(0, 0.35, 300), 0, 1)
    chal_scores = np.clip(0.5 + (labels - 0.5) * 0.6 + rng.normal(0, 0.25, 300), 0, 1)
    champion = lipsync_eval("3", champ_scores, labels)
    challenger = lipsync_eval("4", chal_scores, labels, groups={"jpeg": 0.9, "blur": 0.85, "noise": 0.82})
    d = decide(champion, challenger, GatePolicy())
    assert d.primary_metric == "roc_auc" and d.gain > 0.1
    assert d.promote and d.ci_low > 0 and d.ci_low < d.gain < d.ci_high
    assert "ROC AUC" in d.to_markdown() and "perturbation" in d.to_markdown()
    # Same model twice: a zero-width gain, never promoted.
    same = decide(champion, lipsync_eval("4", champ_scores, labels), GatePolicy(min_gain=0.0))
    assert same.gain == 0 and same.ci_low == 0 and not same.promote
    # A perturbation that collapses blocks the promotion; mcnemar variant on the same data promotes.
    fragile = lipsync_eval("4", chal_scores, labels, groups={"jpeg": 0.9, "blur": 0.6, "noise": 0.82})
    d = decide(champion, fragile, GatePolicy())
    assert not d.promote and set(d.regressions) == {"blur"}
    assert any(r.startswith("perturbation 'blur' regresses") for r in d.reasons)
    assert decide(champion, challenger, GatePolicy(test="mcnemar")).promote


def test_lipsync_refuses_different_labels():
    labels = np.arange(40) % 2
    a = lipsync_eval("1", np.linspace(0, 1, 40), labels)
    b = lipsync_eval("2", np.linspace(0, 1, 40), 1 - labels)
    with pytest.raises(ValueError, match="disagree on the labels"):
        decide(a, b, GatePolicy())


def test_bootstrap_is_deterministic_for_a_seed():
    champion, challenger = clip_pair(200, 60, 15, 5)
    a = decide(champion, challenger, GatePolicy(seed=7))
    b = decide(champion, challenger, GatePolicy(seed=7))
    c = decide(champion, challenger, GatePolicy(seed=8))
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_serialization_round_trips_and_metrics():
    champion, challenger = clip_pair(400, 120, 50, 10)
    assert ModelEvaluation.from_json(challenger.to_json()) == challenger
    d = decide(champion, challenger, GatePolicy())
    assert Decision.from_json(d.to_json()) == d
    m = d.as_metrics()
    assert m["gate_clip_promote"] == 1.0 and m["gate_clip_gain"] == pytest.approx(0.1)
    assert m["gate_clip_champion_recall_at_1"] == pytest.approx(0.3)
    assert m["gate_clip_ci_low"] == d.ci_low and m["gate_clip_regressions"] == 0.0
    md = d.to_markdown()
    assert "**PROMOTE** challenger v2 vs champion v1" in md and "| surgery | +0.0000 |" in md


def test_policy_and_evaluation_validation():
    for bad in (
        {"min_gain": -0.1},
        {"test": "ttest"},
        {"confidence": 1.0},
        {"n_bootstrap": 10},
        {"max_regression": 2.0},
        {"seed": -1},
    ):
        with pytest.raises(ConfigError):
            GatePolicy(**bad)
    with pytest.raises(ValueError, match="not unique"):
        ModelEvaluation("clip", "1", "recall_at_1", 0.5, ["a", "a"], [1, 0])
    with pytest.raises(ValueError, match="one 0/1 per item"):
        ModelEvaluation("clip", "1", "recall_at_1", 0.5, ["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="item_labels and item_scores"):
        ModelEvaluation("lipsync", "1", "roc_auc", 0.5, ["a", "b"], [1, 0])


def write_clip_report(folder, kind: str, base_hits, chal_hits, cats_base, cats_chal):
    """evaluate_clip's two gate files, in the format write_clip_report writes."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    queries = [f"query {i}" for i in range(len(base_hits))]
    summary = {
        "baseline_kind": kind,
        "challenger": {"recall_at_1": float(np.mean(chal_hits)), "query_top1_by_category": cats_chal},
        "baseline": {"recall_at_1": float(np.mean(base_hits)), "query_top1_by_category": cats_base},
    }
    paired = {
        "queries": queries,
        "query_categories": ["c"] * len(queries),
        "challenger": {"hit_at_1": list(map(int, chal_hits))},
        "baseline": {"hit_at_1": list(map(int, base_hits))},
    }
    (folder / "clip_eval.json").write_text(json.dumps(summary))
    (folder / "clip_per_query.json").write_text(json.dumps(paired))


def test_clip_inputs_from_evaluate_files(tmp_path):
    from components.ab_gate.inputs import clip_evaluations

    champion, challenger = clip_pair(200, 60, 30, 4)
    cats = {"surgery": 0.5, "safety": 0.4}
    write_clip_report(tmp_path / "a", "champion v7", champion.item_correct, challenger.item_correct, cats, cats)
    champ, chal, base = clip_evaluations(tmp_path / "a", "8")
    assert base is None and champ.version == "7" and chal.version == "8"
    assert chal.primary == pytest.approx(challenger.primary) and champ.groups == cats
    assert decide(champ, chal, GatePolicy()).promote
    write_clip_report(tmp_path / "b", "base", champion.item_correct, challenger.item_correct, cats, cats)
    champ, chal, base = clip_evaluations(tmp_path / "b", "1")
    assert champ is None and base.version == "base"
    assert decide(champ, chal, GatePolicy(), base=base).baseline == "base"


def test_lipsync_inputs_and_stage_logging(tmp_path, monkeypatch):
    import json

    import mlflow

    from components.ab_gate.core import run_ab_gate
    from components.ab_gate.inputs import lipsync_evaluations
    from components.common import tracking
    from components.config import from_dict

    rng = np.random.default_rng(3)
    labels = np.arange(120) % 2
    chal = np.clip(0.5 + (labels - 0.5) * 0.7 + rng.normal(0, 0.2, 120), 0, 1)
    rows = [
        {
            "video_id": f"v{i}",
            "label": "fake" if y else "real",
            "fallback_used": False,
            "challenger_score": float(s),
            "challenger_pred_fake": bool(s >= 0.5),
            "challenger_correct": bool(s >= 0.5) == bool(y),
        }
        for i, (y, s) in enumerate(zip(labels, chal, strict=True))
    ]
    report = tmp_path / "lipsync"
    report.mkdir()
    (report / "lipsync_paired.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    robustness = [
        {"model": "challenger", "perturbation": "none", "level": 0.0, "roc_auc": 0.9},
        {"model": "challenger", "perturbation": "blur", "level": 2.0, "roc_auc": 0.8},
    ]
    (report / "lipsync_eval.json").write_text(json.dumps({"robustness": robustness}))
    champ, chal_eval, base = lipsync_evaluations(report, "1", None)
    assert champ is None and base.primary == 0.5 and chal_eval.groups == {"blur@2": 0.8}
    assert chal_eval.primary > 0.9

    # The stage: first month (no champion in the registry), chance-level baseline, logged to MLflow.
    config = from_dict({"client_id": "acme", "state_dir": str(tmp_path / "state")})
    parent = tracking.start_parent_run(config.tracking, "gate-test", {})
    decision = run_ab_gate("lipsync", report, "1", tmp_path / "gate.md", config.ab_gate, config.context(parent))
    assert decision.promote and decision.baseline == "base"
    assert (tmp_path / "gate.md").read_text() == decision.to_markdown()
    client = mlflow.MlflowClient(config.tracking.tracking_uri)
    [run] = client.search_runs([client.get_run(parent).info.experiment_id], "tags.`clipsync.stage` = 'ab_gate_lipsync'")
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["challenger_version"] == "1"
    assert run.data.metrics["gate_lipsync_promote"] == 1.0
    assert run.data.tags["clipsync.gate.lipsync"] == "promote"


def test_a_test_split_that_cannot_measure_the_metric_keeps_the_champion():
    from components.ab_gate.config import GatePolicy
    from components.ab_gate.decision import Decision

    decision = Decision.not_evaluable(
        "lipsync", "3", "lipsync: the test videos need both real and fake ones", GatePolicy()
    )
    assert not decision.promote and decision.verdict == "keep"
    assert "not evaluable" in decision.reasons[0]
    assert "KEEP" in decision.to_markdown()
    assert Decision.from_json(decision.to_json()).reasons == decision.reasons
    assert {k for k, v in decision.as_metrics().items() if v == v} >= {"gate_lipsync_promote", "gate_lipsync_n_items"}


def test_refuses_to_decide_on_too_few_test_items_and_says_so():
    # Six lip-sync test videos, perfectly separated: a large "gain" over chance that decides nothing.
    labels = np.array([0, 1, 0, 1, 0, 1])
    strong = lipsync_eval("2", labels * 0.8 + 0.1, labels)
    chance = ModelEvaluation(
        "lipsync", "base", "roc_auc", 0.5, strong.item_ids, (1 - labels).tolist(), labels.tolist(), [0.5] * 6
    )
    d = decide(None, strong, GatePolicy(), base=chance)
    assert not d.promote and d.gain == pytest.approx(0.5)
    assert d.reasons[0] == "6 test videos < min_test_videos 30: too few to decide on, the champion is kept"
    assert "this decision rests on 6 test videos" in d.reasons
    assert "- 6 test videos < min_test_videos 30" in d.to_markdown()
    # A client (or the demo) may lower the minimum; the decision then says plainly what it rests on.
    lowered = decide(None, strong, GatePolicy(min_test_videos=6, n_bootstrap=200), base=chance)
    assert not any("too few to decide on" in r for r in lowered.reasons)
    assert (
        "this decision rests on 6 test videos (min_test_videos 6 is below the default 30: a small sample, read the CIs)"
        in lowered.reasons
    )
    # Search: queries against min_test_queries; at the default size the note carries no warning.
    champion, challenger = clip_pair(49, 10, challenger_only=20, champion_only=0)
    few = decide(champion, challenger, GatePolicy())
    assert not few.promote and few.reasons[0].startswith("49 test queries < min_test_queries 50")
    champion, challenger = clip_pair(400, 120, challenger_only=50, champion_only=10)
    enough = decide(champion, challenger, GatePolicy())
    assert enough.promote and "this decision rests on 400 test queries" in enough.reasons
    for bad in ({"min_test_videos": 0}, {"min_test_queries": -1}):
        with pytest.raises(ConfigError, match=f"ab_gate.{next(iter(bad))} must be"):
            GatePolicy(**bad)

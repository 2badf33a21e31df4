"""ab_gate, the decision: a pure function of two evaluations whether a challenger replaces the champion.

:func:`decide` compares two :class:`ModelEvaluation` of the same model on the SAME test items and promotes
only when three things hold:

0. the test set is large enough to decide on: at least ``policy.min_test_videos`` lip-sync test videos or
   ``policy.min_test_queries`` search queries (below it the champion is kept, whatever the numbers say);
1. the primary metric (R@1 for CLIP, ROC AUC for lip-sync) improves by at least ``policy.min_gain``;
2. a paired test on the shared items says the gain is real at ``policy.confidence`` (a paired bootstrap
   CI of the difference whose lower bound is above 0, or an exact McNemar test on per-item correctness);
3. no group (CLIP category, lip-sync perturbation) drops by more than ``policy.max_regression``.

Keeping the champion is a normal, successful outcome. On the first month (no champion) the challenger is
compared with the base model. The function does no I/O; the stage (:mod:`components.ab_gate.core`) logs the
:class:`Decision`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.ab_gate.config import GatePolicy, default_minimum
from components.common.stats import auc_rows

PRIMARY_METRIC = {"clip": "recall_at_1", "lipsync": "roc_auc"}
GROUP_KIND = {"clip": "category", "lipsync": "perturbation"}
#: model -> (what a test item is, the policy's minimum count of them)
TEST_ITEMS = {"clip": ("test queries", "min_test_queries"), "lipsync": ("test videos", "min_test_videos")}
_BOOTSTRAP_CHUNK = 250


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's results on the test items, as the evaluate stage measured them.

    Attributes:
        model: ``"clip"`` or ``"lipsync"``.
        version: Registry version (``"3"``) or ``"base"`` for the base model.
        primary_metric: ``"recall_at_1"`` (CLIP) or ``"roc_auc"`` (lip-sync).
        primary: The primary metric on all items.
        item_ids: The test items: query ids for CLIP, video ids for lip-sync. Unique.
        item_correct: Per item 1/0: hit@1 for CLIP, correct at the decision threshold for lip-sync.
        item_labels: Lip-sync only: 1 = fake, 0 = real, per item (the bootstrap recomputes AUC from them).
        item_scores: Lip-sync only: the manipulation score per item.
        groups: Per-group metric: top-1 per category (CLIP) or AUC per perturbation (lip-sync).
    """

    model: str
    version: str
    primary_metric: str
    primary: float
    item_ids: list[str]
    item_correct: list[int]
    item_labels: list[int] = field(default_factory=list)
    item_scores: list[float] = field(default_factory=list)
    groups: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in PRIMARY_METRIC:
            raise ValueError(f"model must be one of {', '.join(PRIMARY_METRIC)}, got {self.model!r}")
        if self.primary_metric != PRIMARY_METRIC[self.model]:
            raise ValueError(
                f"{self.model}: primary_metric must be {PRIMARY_METRIC[self.model]!r}, got {self.primary_metric!r}"
            )
        if not self.version:
            raise ValueError("version must be a registry version or 'base'")
        if not math.isfinite(self.primary):
            raise ValueError(f"{self.model} v{self.version}: primary metric is {self.primary}")
        n = len(self.item_ids)
        if n == 0:
            raise ValueError(f"{self.model} v{self.version}: no test items")
        if len(set(self.item_ids)) != n:
            raise ValueError(f"{self.model} v{self.version}: item_ids are not unique")
        if len(self.item_correct) != n or any(c not in (0, 1) for c in self.item_correct):
            raise ValueError(f"{self.model} v{self.version}: item_correct must hold one 0/1 per item ({n})")
        if self.model == "lipsync":
            if len(self.item_labels) != n or len(self.item_scores) != n:
                raise ValueError(f"lipsync v{self.version}: item_labels and item_scores need one value per item ({n})")
            if any(y not in (0, 1) for y in self.item_labels):
                raise ValueError(f"lipsync v{self.version}: item_labels must be 0 (real) or 1 (fake)")
            if not all(math.isfinite(s) for s in self.item_scores):
                raise ValueError(f"lipsync v{self.version}: item_scores hold NaN or infinite values")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Serialize (the inverse of :meth:`from_json`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEvaluation:
        """Rebuild from :meth:`to_dict` output (validated again)."""
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            primary_metric=str(data["primary_metric"]),
            primary=float(data["primary"]),
            item_ids=[str(i) for i in data["item_ids"]],
            item_correct=[int(c) for c in data["item_correct"]],
            item_labels=[int(y) for y in data.get("item_labels", [])],
            item_scores=[float(s) for s in data.get("item_scores", [])],
            groups={str(k): float(v) for k, v in (data.get("groups") or {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> ModelEvaluation:
        """Rebuild from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Decision:
    """The gate's verdict for one model, with every number it used.

    Attributes:
        model: ``"clip"`` or ``"lipsync"``.
        promote: True when the challenger should become the champion.
        reasons: Why, one line per condition (the failed ones first when kept).
        baseline: ``"champion"`` or ``"base"`` (first month).
        baseline_version: Registry version of the champion, or ``"base"``.
        challenger_version: Registry version of the challenger.
        primary_metric: ``recall_at_1`` or ``roc_auc``.
        champion_primary: The baseline's primary metric.
        challenger_primary: The challenger's primary metric.
        gain: ``challenger_primary - champion_primary``.
        test: ``"bootstrap"`` or ``"mcnemar"``.
        ci_low: Lower bound of the bootstrap CI of the gain (``None`` for McNemar).
        ci_high: Upper bound of the bootstrap CI of the gain (``None`` for McNemar).
        p_value: McNemar's two-sided exact p-value; for the bootstrap the share of resamples where the
            challenger is not better (a one-sided bootstrap p-value).
        significant: The paired test's verdict (challenger better at the configured confidence).
        n_items: Shared test items.
        discordant: McNemar counts ``{"challenger_only": c, "champion_only": b}`` (both tests report them).
        group_deltas: Challenger minus baseline per group present in both.
        regressions: The groups whose drop exceeds ``max_regression`` (group -> drop, positive).
        policy: The policy applied.
    """

    model: str
    promote: bool
    reasons: list[str]
    baseline: str
    baseline_version: str
    challenger_version: str
    primary_metric: str
    champion_primary: float
    challenger_primary: float
    gain: float
    test: str
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    significant: bool
    n_items: int
    discordant: dict[str, int]
    group_deltas: dict[str, float]
    regressions: dict[str, float]
    policy: dict[str, Any]

    @classmethod
    def not_evaluable(cls, model: str, challenger_version: str, reason: str, policy: GatePolicy) -> Decision:
        """Keep the champion because this month's test items cannot measure the challenger."""
        metric = PRIMARY_METRIC[model]
        nan = float("nan")
        return cls(
            model=model,
            promote=False,
            reasons=[f"not evaluable, champion kept: {reason}"],
            baseline="champion",
            baseline_version="",
            challenger_version=str(challenger_version),
            primary_metric=metric,
            champion_primary=nan,
            challenger_primary=nan,
            gain=nan,
            test=policy.test,
            ci_low=None,
            ci_high=None,
            p_value=None,
            significant=False,
            n_items=0,
            discordant={"challenger_only": 0, "champion_only": 0},
            group_deltas={},
            regressions={},
            policy=dataclasses.asdict(policy),
        )

    @property
    def verdict(self) -> str:
        """``"promote"`` or ``"keep"``."""
        return "promote" if self.promote else "keep"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Serialize (the inverse of :meth:`from_json`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """Rebuild from :meth:`to_json` output."""
        return cls(**json.loads(text))

    def as_metrics(self) -> dict[str, float]:
        """Numbers for MLflow / a kfp Metrics artifact, prefixed ``gate_<model>_``."""
        p = f"gate_{self.model}_"
        metrics = {
            f"{p}promote": 1.0 if self.promote else 0.0,
            f"{p}champion_{self.primary_metric}": self.champion_primary,
            f"{p}challenger_{self.primary_metric}": self.challenger_primary,
            f"{p}gain": self.gain,
            f"{p}significant": 1.0 if self.significant else 0.0,
            f"{p}n_items": float(self.n_items),
            f"{p}regressions": float(len(self.regressions)),
        }
        for key in ("ci_low", "ci_high", "p_value"):
            value = getattr(self, key)
            if value is not None:
                metrics[f"{p}{key}"] = value
        return metrics

    @property
    def challenger_label(self) -> str:
        """``challenger vN``, or ``no challenger`` when this month trained none."""
        return f"challenger v{self.challenger_version}" if self.challenger_version else "no challenger"

    def to_markdown(self) -> str:
        """The decision as a person reads it in the run summary."""
        if self.n_items == 0:
            return f"### ab_gate {self.model}: **KEEP** {self.challenger_label}\n\n" + "".join(
                f"- {r}\n" for r in self.reasons
            )
        metric = {"recall_at_1": "R@1", "roc_auc": "ROC AUC"}[self.primary_metric]
        base = f"champion v{self.baseline_version}" if self.baseline == "champion" else "base model"
        lines = [
            f"### ab_gate {self.model}: **{self.verdict.upper()}** {self.challenger_label} vs {base}",
            "",
            "| | value |",
            "|---|---:|",
            f"| {metric} {base} | {self.champion_primary:.4f} |",
            f"| {metric} challenger | {self.challenger_primary:.4f} |",
            f"| gain (min {self.policy['min_gain']:.4f}) | {self.gain:+.4f} |",
        ]
        if self.ci_low is not None and self.ci_high is not None:
            lines.append(
                f"| {self.policy['confidence']:.0%} paired bootstrap CI of the gain | "
                f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}] |"
            )
        if self.p_value is not None:
            lines.append(f"| p-value ({self.test}) | {self.p_value:.4g} |")
        lines.append(
            f"| discordant items (challenger only / {self.baseline} only) | "
            f"{self.discordant['challenger_only']} / {self.discordant['champion_only']} |"
        )
        lines.append(f"| shared test items | {self.n_items} |")
        lines += ["", "Reasons:", *[f"- {r}" for r in self.reasons]]
        if self.group_deltas:
            kind = GROUP_KIND[self.model]
            lines += ["", f"| {kind} | delta |", "|---|---:|"]
            for name, delta in sorted(self.group_deltas.items()):
                flag = " (regression)" if name in self.regressions else ""
                lines.append(f"| {name} | {delta:+.4f}{flag} |")
        return "\n".join(lines) + "\n"


def _aligned(baseline: ModelEvaluation, challenger: ModelEvaluation) -> np.ndarray:
    """Indices into ``baseline``'s items in ``challenger``'s item order; refuse non-comparable pairs."""
    if baseline.model != challenger.model:
        raise ValueError(f"cannot compare a {baseline.model} model with a {challenger.model} model")
    if baseline.primary_metric != challenger.primary_metric:
        raise ValueError(
            f"{challenger.model}: primary metrics differ ({baseline.primary_metric} vs {challenger.primary_metric})"
        )
    base_ids, chal_ids = set(baseline.item_ids), set(challenger.item_ids)
    if base_ids != chal_ids:
        only_b, only_c = sorted(base_ids - chal_ids), sorted(chal_ids - base_ids)
        raise ValueError(
            f"{challenger.model}: the models were not evaluated on the same test items "
            f"({len(only_b)} only in v{baseline.version}, e.g. {only_b[:3]}; "
            f"{len(only_c)} only in v{challenger.version}, e.g. {only_c[:3]})"
        )
    position = {item: i for i, item in enumerate(baseline.item_ids)}
    order = np.array([position[item] for item in challenger.item_ids], dtype=np.int64)
    if challenger.model == "lipsync":
        base_labels = np.asarray(baseline.item_labels)[order]
        if not np.array_equal(base_labels, np.asarray(challenger.item_labels)):
            raise ValueError("lipsync: the two evaluations disagree on the labels of the shared items")
    return order


def _bootstrap_diffs(
    model: str,
    base_correct: np.ndarray,
    chal_correct: np.ndarray,
    labels: np.ndarray,
    base_scores: np.ndarray,
    chal_scores: np.ndarray,
    policy: GatePolicy,
) -> np.ndarray:
    """Challenger-minus-baseline primary metric on ``n_bootstrap`` joint resamples of the items."""
    rng = np.random.default_rng(policy.seed)
    n = len(chal_correct)
    diffs: list[np.ndarray] = []
    done = 0
    while done < policy.n_bootstrap:
        size = min(_BOOTSTRAP_CHUNK, policy.n_bootstrap - done)
        idx = rng.integers(0, n, size=(size, n))
        if model == "clip":
            diffs.append(chal_correct[idx].mean(axis=1) - base_correct[idx].mean(axis=1))
        else:
            lab = labels[idx]
            diffs.append(auc_rows(lab, chal_scores[idx]) - auc_rows(lab, base_scores[idx]))
        done += size
    out = np.concatenate(diffs)
    return out[np.isfinite(out)]  # resamples with a single class have no AUC


def mcnemar_p_value(challenger_only: int, champion_only: int) -> float:
    """Two-sided exact McNemar p-value (binomial test of the discordant pairs against 1/2).

    Args:
        challenger_only: Items only the challenger gets right.
        champion_only: Items only the champion gets right.

    Returns:
        The p-value (1.0 when there is no discordant pair).
    """
    n = challenger_only + champion_only
    if n == 0:
        return 1.0
    k = min(challenger_only, champion_only)
    # Exact integer arithmetic: int / int stays accurate for huge n.
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def _size_check(model: str, n: int, policy: GatePolicy) -> tuple[list[str], str]:
    """The test-set size condition: ``([failure] or [], a line saying what the decision rests on)``."""
    items, name = TEST_ITEMS[model]
    minimum, default = getattr(policy, name), default_minimum(name)
    rests = f"this decision rests on {n} {items}"
    if minimum < default:
        rests += f" ({name} {minimum} is below the default {default}: a small sample, read the CIs)"
    if n < minimum:
        return [f"{n} {items} < {name} {minimum}: too few to decide on, the champion is kept"], rests
    return [], rests


def decide(
    champion: ModelEvaluation | None,
    challenger: ModelEvaluation,
    policy: GatePolicy,
    base: ModelEvaluation | None = None,
) -> Decision:
    """Decide whether ``challenger`` replaces ``champion`` (pure: no I/O, deterministic for a seed).

    Args:
        champion: The current champion on the test items; ``None`` on the first month.
        challenger: This month's model on the same items.
        policy: Thresholds and the paired test.
        base: The base model on the same items; the baseline when there is no champion.

    Returns:
        The decision with its reasons and numbers.

    Raises:
        ValueError: If there is neither champion nor base, or the two evaluations are of different models
            or metrics, or were not made on the same items (or, for lip-sync, disagree on their labels).
    """
    if champion is not None:
        baseline, baseline_kind = champion, "champion"
    elif base is not None:
        baseline, baseline_kind = base, "base"
    else:
        raise ValueError(f"{challenger.model}: no champion and no base model evaluation to compare against")
    order = _aligned(baseline, challenger)
    model = challenger.model
    base_correct = np.asarray(baseline.item_correct, dtype=np.float64)[order]
    chal_correct = np.asarray(challenger.item_correct, dtype=np.float64)
    challenger_only = int(((chal_correct == 1) & (base_correct == 0)).sum())
    champion_only = int(((chal_correct == 0) & (base_correct == 1)).sum())
    gain = float(challenger.primary - baseline.primary)
    alpha = 1.0 - policy.confidence
    reasons_fail: list[str] = []
    reasons_ok: list[str] = []

    ci_low = ci_high = None
    if policy.test == "bootstrap":
        lipsync = model == "lipsync"
        diffs = _bootstrap_diffs(
            model,
            base_correct,
            chal_correct,
            np.asarray(challenger.item_labels, dtype=np.float64),
            np.asarray(baseline.item_scores, dtype=np.float64)[order] if lipsync else np.empty(0),
            np.asarray(challenger.item_scores, dtype=np.float64),
            policy,
        )
        if len(diffs) < policy.n_bootstrap // 2:
            raise ValueError(f"{model}: too few test items of each class for a bootstrap of the AUC")
        ci_low = float(np.quantile(diffs, alpha / 2))
        ci_high = float(np.quantile(diffs, 1 - alpha / 2))
        p_value = float(np.mean(diffs <= 0))
        significant = ci_low > 0
        detail = f"{policy.confidence:.0%} paired bootstrap CI of the gain [{ci_low:+.4f}, {ci_high:+.4f}]"
        (reasons_ok if significant else reasons_fail).append(
            f"{detail} {'excludes' if significant else 'includes'} 0"
            + ("" if significant else ": the gain is not significant")
        )
    else:
        p_value = mcnemar_p_value(challenger_only, champion_only)
        significant = p_value < alpha and challenger_only > champion_only
        detail = (
            f"McNemar exact p = {p_value:.4g} on {challenger_only + champion_only} discordant items "
            f"({challenger_only} challenger only, {champion_only} {baseline_kind} only)"
        )
        (reasons_ok if significant else reasons_fail).append(
            f"{detail} {'<' if significant else 'not <'} {alpha:.4g}"
            + ("" if significant else ": the gain is not significant")
        )

    metric = challenger.primary_metric
    if gain >= policy.min_gain:
        reasons_ok.insert(0, f"{metric} gain {gain:+.4f} >= min_gain {policy.min_gain:.4f}")
    else:
        reasons_fail.insert(0, f"{metric} gain {gain:+.4f} < min_gain {policy.min_gain:.4f}: not worth a new model")

    kind = GROUP_KIND[model]
    shared = sorted(set(baseline.groups) & set(challenger.groups))
    group_deltas = {g: float(challenger.groups[g] - baseline.groups[g]) for g in shared}
    regressions = {g: -d for g, d in group_deltas.items() if -d > policy.max_regression}
    for g, drop in sorted(regressions.items()):
        reasons_fail.append(
            f"{kind} {g!r} regresses by {drop:.4f} > max_regression {policy.max_regression:.4f} "
            f"({baseline.groups[g]:.4f} -> {challenger.groups[g]:.4f})"
        )
    if not regressions:
        reasons_ok.append(
            f"no {kind} regresses by more than {policy.max_regression:.4f}"
            + ("" if shared else f" (no {kind} measured on both)")
        )
    missing = sorted(set(baseline.groups) - set(challenger.groups))
    if missing:
        reasons_ok.append(f"{kind}(s) not measured for the challenger: {', '.join(missing)}")

    too_few, rests_on = _size_check(model, len(challenger.item_ids), policy)
    reasons_fail = too_few + reasons_fail
    reasons_ok.append(rests_on)
    promote = not reasons_fail
    if baseline_kind == "base":
        reasons_ok.append("first month: no champion, compared with the base model")
    return Decision(
        model=model,
        promote=promote,
        reasons=reasons_fail + reasons_ok,
        baseline=baseline_kind,
        baseline_version=baseline.version,
        challenger_version=challenger.version,
        primary_metric=metric,
        champion_primary=float(baseline.primary),
        challenger_primary=float(challenger.primary),
        gain=gain,
        test=policy.test,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        significant=bool(significant),
        n_items=len(challenger.item_ids),
        discordant={"challenger_only": challenger_only, "champion_only": champion_only},
        group_deltas=group_deltas,
        regressions=regressions,
        policy=dataclasses.asdict(policy),
    )

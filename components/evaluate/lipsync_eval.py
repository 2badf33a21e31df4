"""evaluate, lip-sync part: challenger vs. champion on the same test videos, plus robustness.

The metrics and their conventions (fake is the positive class, a threshold chosen on the validation videos of
the same split by video that training used) are :mod:`components.finetune_lipsync.metrics`.

Videos that carry no evidence for a verdict (no audio track, no usable face track, shorter than one window:
``components/face_tracking/evidence.py``) are not scored, as serving would not judge them either; the test
videos left out are counted (``n_test_inconclusive``). Robustness repeats the metrics under the
perturbations AVLips evaluates (compression, Gaussian noise, blur, pixelation, saturation, contrast),
applied to the mouth crops, and writes a Markdown table and a PNG plot.

Every test figure carries its confidence interval and the number of videos it rests on (Wilson for FPR, FNR and
accuracy, a bootstrap over videos for ROC AUC and average precision; :mod:`~components.evaluate.lipsync_figures`,
:mod:`components.common.stats`); so does the AUC of each robustness row. Where the label records give the fakes'
types (``fake_type``, carried by the manifest), each type gets the same figures against all test reals, or
``not evaluated`` with its count when it has fewer test fakes than ``evaluate.min_fake_type_videos``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components.common.jsonl import json_safe
from components.common.stats import bootstrap_two_class
from components.evaluate.config import EvaluateConfig
from components.evaluate.lipsync_figures import FAKE_TYPES_FILE, fake_type_estimates, fake_type_table, lipsync_estimates
from components.finetune_lipsync.metrics import binary_metrics, choose_threshold

logger = logging.getLogger("clipsync.evaluate")

#: perturbation -> levels, mildest first (after DeeperForensics-1.0 / AVLips; 3 of their 5 intensities).
PERTURBATIONS: dict[str, tuple[float, ...]] = {
    "compression": (75, 40, 15),  # JPEG quality of every crop
    "gaussian_noise": (0.02, 0.05, 0.1),  # std, pixel values in [0, 1]
    "blur": (1.0, 2.0, 3.0),  # Gaussian sigma in pixels (96 px crops)
    "pixelation": (2, 4, 8),  # downscale factor
    "saturation": (0.6, 0.3, 0.0),  # colour saturation factor
    "contrast": (0.8, 0.6, 0.4),  # contrast factor
}

REPORT_FILE = "lipsync_eval.json"
PAIRED_FILE = "lipsync_paired.jsonl"
TABLE_FILE = "lipsync_robustness.md"
PLOT_FILE = "lipsync_robustness.png"


# ---------------------------------------------------------------------------------- perturbations


def perturb_crops(crops: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """Degrade mouth crops like AVLips' robustness tests.

    Args:
        crops: uint8 ``[T, H, W, 3]`` RGB.
        kind: A key of :data:`PERTURBATIONS`.
        level: Its intensity (JPEG quality, noise std, blur sigma, pixelation factor, saturation or
            contrast factor).
        seed: Seed of the noise.

    Returns:
        uint8 crops of the same shape.

    Raises:
        ValueError: On an unknown kind.
    """
    import cv2

    x = np.asarray(crops)
    if kind == "compression":
        out = np.empty_like(x)
        for i, frame in enumerate(x):
            ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(level)])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        return out
    if kind == "gaussian_noise":
        rng = np.random.default_rng(seed)
        return np.clip(x + rng.normal(0, 255 * level, x.shape), 0, 255).astype(np.uint8)
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(f, (0, 0), float(level)) for f in x])
    if kind == "pixelation":
        h, w = x.shape[1:3]
        small = (max(1, round(w / level)), max(1, round(h / level)))
        return np.stack(
            [
                cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_NEAREST)
                for f in x
            ]
        )
    xf = x.astype(np.float32)
    if kind == "saturation":
        gray = (0.299 * xf[..., 0] + 0.587 * xf[..., 1] + 0.114 * xf[..., 2])[..., None]
        return np.clip(gray + (xf - gray) * level, 0, 255).astype(np.uint8)
    if kind == "contrast":
        mean = xf.mean(axis=(1, 2, 3), keepdims=True)
        return np.clip(mean + (xf - mean) * level, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {sorted(PERTURBATIONS)}")


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class ModelEval:
    """One model's evaluation.

    Attributes:
        model_dir: Where it was loaded from.
        threshold: Chosen on validation (or the model's own when validation lacks a class).
        threshold_source: ``validation`` or ``model``.
        val: Validation metrics at that threshold.
        test: Test metrics.
        test_ci: Test metric -> its :class:`~components.common.stats.Estimate` as a mapping (value, interval, n).
        test_by_fake_type: Fake type -> ``n_fake``, ``n_real`` and either the figures of :func:`lipsync_estimates`
            but accuracy (that type's fakes against all test reals) or ``not_evaluated`` (why); empty when no test
            fake has a type.
    """

    model_dir: str
    threshold: float
    threshold_source: str
    val: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    test_ci: dict = field(default_factory=dict)
    test_by_fake_type: dict = field(default_factory=dict)


@dataclass
class LipsyncEvalReport:
    """Challenger (and champion) on the same test videos; paired outcomes for the gate; robustness.

    ``paired`` rows: video_id, label (``real``/``fake``), and per model ``<role>_score``,
    ``<role>_pred_fake``, ``<role>_correct``. ``champion_version`` is set by
    :func:`components.evaluate.core.run_evaluate_lipsync`, and so is ``cross_validation``, the k-fold estimate
    (:mod:`components.evaluate.crossval`) when ``evaluate.cv_folds`` asks for one (else empty).
    """

    challenger: ModelEval
    champion: ModelEval | None
    n_val_videos: int
    n_test_videos: int
    n_test_inconclusive: int
    paired: list[dict] = field(default_factory=list)
    robustness: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    champion_version: str = ""
    cross_validation: dict = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: ``lipsync_<model>_<subset>_<metric>``; undefined values are left out."""
        out: dict[str, float] = {
            "lipsync_n_val_videos": float(self.n_val_videos),
            "lipsync_n_test_videos": float(self.n_test_videos),
            "lipsync_n_test_inconclusive": float(self.n_test_inconclusive),
        }
        for role, ev in (("challenger", self.challenger), ("champion", self.champion)):
            if ev is None:
                continue
            out[f"lipsync_{role}_threshold"] = ev.threshold
            for subset in ("val", "test"):
                for key in ("accuracy", "roc_auc", "average_precision", "fpr", "fnr", "balanced_accuracy"):
                    value = getattr(ev, subset).get(key)
                    if value is not None:
                        out[f"lipsync_{role}_{subset}_{key}"] = float(value)
            for key, est in ev.test_ci.items():
                if est.get("low") is not None:
                    out[f"lipsync_{role}_test_{key}_ci_low"] = float(est["low"])
                    out[f"lipsync_{role}_test_{key}_ci_high"] = float(est["high"])
            for fake_type, figures in ev.test_by_fake_type.items():
                stem = f"lipsync_{role}_test_fake_type_{fake_type}"
                out[f"{stem}_n_fake"] = float(figures["n_fake"])
                for key in ("roc_auc", "average_precision", "fnr"):
                    est = figures.get(key, {})
                    if est.get("value") is not None:
                        out[f"{stem}_{key}"] = float(est["value"])
                    if est.get("low") is not None:
                        out[f"{stem}_{key}_ci_low"] = float(est["low"])
                        out[f"{stem}_{key}_ci_high"] = float(est["high"])
        for key, value in self.cross_validation.get("metrics", {}).items():
            if "mean" in value:
                out[f"lipsync_cv_{key}_mean"] = value["mean"]
                out[f"lipsync_cv_{key}_std"] = value["std"]
        for row in self.robustness:
            for key in ("roc_auc", "accuracy"):
                if row.get(key) is not None:
                    out[f"lipsync_{row['model']}_robust_{row['perturbation']}_{row['level']:g}_{key}"] = float(row[key])
        return out


def _score(model, videos, perturbation: tuple[str, float] | None = None) -> np.ndarray:
    from components.finetune_lipsync.model import predict_video

    scores = []
    for i, v in enumerate(videos):
        crops = v.crops if perturbation is None else perturb_crops(v.crops, *perturbation, seed=i)
        scores.append(predict_video(model, crops, v.audio, v.fps).probability)
    return np.asarray(scores, dtype=np.float64)


def evaluate_model(
    model_dir: Path, val, test, device: str, evaluation: EvaluateConfig | None
) -> tuple[ModelEval, np.ndarray, object]:
    """Load a detector, choose its threshold on ``val`` (its own when ``val`` lacks a class), score ``test``.

    Returns:
        The evaluation (test figures with their intervals), the test scores and the loaded model.
    """
    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_device
    from components.finetune_lipsync.model import load_model

    set_torch_threads()
    model = load_model(model_dir, resolve_device(device))
    y_val = np.array([v.label for v in val], dtype=int)
    y_test = np.array([v.label for v in test], dtype=int)
    fake_types = [v.fake_type for v in test]
    val_scores = _score(model, val) if val else np.zeros(0)
    if len(y_val) and y_val.min() != y_val.max():
        threshold, source = choose_threshold(y_val, val_scores, default=model.config.threshold), "validation"
    else:
        threshold, source = float(model.config.threshold), "model"
    test_scores = _score(model, test)
    ev = ModelEval(
        model_dir=str(model_dir),
        threshold=threshold,
        threshold_source=source,
        val=binary_metrics(y_val, val_scores, threshold) if len(y_val) else {},
        test=binary_metrics(y_test, test_scores, threshold) if len(y_test) else {},
        test_ci=lipsync_estimates(y_test, test_scores, threshold, evaluation) if len(y_test) else {},
        test_by_fake_type=fake_type_estimates(y_test, test_scores, fake_types, threshold, evaluation),
    )
    return ev, test_scores, model


def evaluate_lipsync(
    challenger_dir: str | Path,
    champion_dir: str | Path | None,
    faces_dir: str | Path,
    out_dir: str | Path,
    cfg=None,
    robustness: bool = True,
    perturbations: dict[str, Sequence[float]] | None = None,
    face_config=None,
    evaluation: EvaluateConfig | None = None,
) -> LipsyncEvalReport:
    """Evaluate the challenger (and the champion) on the faces Dataset's test videos.

    Args:
        challenger_dir: Model folder of the new model.
        champion_dir: Model folder of the current champion, or ``None`` (first month).
        faces_dir: The face_tracking Dataset.
        out_dir: Where the report files go (JSON, paired JSONL, Markdown table, PNG plot).
        cfg: The FinetuneLipsyncConfig training used (its ``val_fraction`` and ``seed`` rebuild the
            validation split, its ``device`` runs the models); default settings when ``None``.
        robustness: Also run the perturbation sweep.
        perturbations: Overrides :data:`PERTURBATIONS`.
        face_config: The client's ``FaceTrackingConfig`` (the evidence a clip needs); default settings when ``None``.
        evaluation: The ``evaluate`` settings (confidence intervals); defaults when ``None``.

    Returns:
        The report (also written to ``out_dir``).
    """
    from components.face_tracking.config import FaceTrackingConfig
    from components.face_tracking.evidence import EvidenceRules
    from components.finetune_lipsync.config import FinetuneLipsyncConfig
    from components.finetune_lipsync.data import load_lipsync_videos, split_by_video, training_pool

    cfg = cfg or FinetuneLipsyncConfig()
    evaluation = evaluation or EvaluateConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    videos, skipped = load_lipsync_videos(
        faces_dir, EvidenceRules.of(cfg.model.window_s, face_config or FaceTrackingConfig())
    )
    _, val = split_by_video(training_pool(videos), cfg.val_fraction, cfg.seed)
    test = sorted((v for v in videos if v.split == "test"), key=lambda v: v.video_id)
    if not test:
        logger.warning("evaluate: no labelled lip-sync test videos in %s", faces_dir)
    y_test = np.array([v.label for v in test], dtype=int)

    models = {"challenger": Path(challenger_dir)}
    if champion_dir is not None:
        models["champion"] = Path(champion_dir)
    evals: dict[str, ModelEval] = {}
    scores: dict[str, np.ndarray] = {}
    loaded = {}
    for role, path in models.items():
        if test:
            evals[role], scores[role], loaded[role] = evaluate_model(path, val, test, cfg.device, evaluation)
        else:
            evals[role] = ModelEval(model_dir=str(path), threshold=float("nan"), threshold_source="none")
        logger.info(
            "evaluate: lipsync %s test AUC %s accuracy %s (threshold %.3f from %s)",
            role,
            evals[role].test.get("roc_auc"),
            evals[role].test.get("accuracy"),
            evals[role].threshold,
            evals[role].threshold_source,
        )

    paired = []
    for i, v in enumerate(test):
        row = {"video_id": v.video_id, "label": "fake" if v.label else "real", "fake_type": v.fake_type}
        for role in scores:
            pred = bool(scores[role][i] >= evals[role].threshold)
            row[f"{role}_score"] = float(scores[role][i])
            row[f"{role}_pred_fake"] = pred
            row[f"{role}_correct"] = pred == bool(v.label)
        paired.append(row)

    robust_rows: list[dict] = []
    if robustness and test:
        for role, model in loaded.items():
            clean = evals[role].test
            robust_rows.append(_robust_row(role, "none", 0.0, clean, evals[role].test_ci["roc_auc"]))
            for kind, levels in (perturbations or PERTURBATIONS).items():
                for level in levels:
                    s = _score(model, test, (kind, level))
                    auc = bootstrap_two_class(
                        "roc_auc", y_test, s, evaluation.confidence, evaluation.n_bootstrap, evaluation.seed
                    )
                    metrics = binary_metrics(y_test, s, evals[role].threshold)
                    robust_rows.append(_robust_row(role, kind, level, metrics, auc.to_dict()))

    report = LipsyncEvalReport(
        challenger=evals["challenger"],
        champion=evals.get("champion"),
        n_val_videos=len(val),
        n_test_videos=len(test),
        n_test_inconclusive=sum(s["split"] == "test" and s["reason"].startswith("no_evidence") for s in skipped),
        paired=paired,
        robustness=robust_rows,
        skipped=skipped,
    )
    write_lipsync_report(report, out)
    return report


def _robust_row(model: str, kind: str, level: float, metrics: dict, auc: dict) -> dict:
    keys = ("accuracy", "roc_auc", "average_precision", "fpr", "fnr")
    row = {"model": model, "perturbation": kind, "level": float(level), **{k: metrics.get(k) for k in keys}}
    return row | {"roc_auc_ci_low": auc.get("low"), "roc_auc_ci_high": auc.get("high"), "n": metrics.get("n")}


# ---------------------------------------------------------------------------------------- report


def robustness_table(rows: Sequence[dict]) -> str:
    """Markdown table: one line per perturbation level, AUC (with its CI) / accuracy / FPR / FNR per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    def cell(r: dict, key: str) -> str:
        if key == "roc_auc" and r.get("roc_auc_ci_low") is not None:
            return f"{r[key]:.3f} [{r['roc_auc_ci_low']:.3f}, {r['roc_auc_ci_high']:.3f}]"
        return fmt(r.get(key))

    head = "| perturbation | level | " + " | ".join(f"{m} AUC | {m} acc | {m} FPR | {m} FNR" for m in models) + " |"
    sep = "|---|---|" + "---|---|---|---|" * len(models)
    lines = [head, sep]
    keyed = {(r["model"], r["perturbation"], r["level"]): r for r in rows}
    for kind, level in dict.fromkeys((r["perturbation"], r["level"]) for r in rows):
        cells = []
        for m in models:
            r = keyed.get((m, kind, level), {})
            cells.append(" | ".join(cell(r, k) for k in ("roc_auc", "accuracy", "fpr", "fnr")))
        lines.append(f"| {kind} | {level:g} | " + " | ".join(cells) + " |")
    n = next((r.get("n") for r in rows if r.get("n")), None)
    lines += ["", f"AUC with its bootstrap CI over the {n} test videos (n/a: one class only)." if n else ""]
    return "\n".join(lines) + "\n"


def robustness_plot(rows: Sequence[dict], path: str | Path) -> Path:
    """PNG: one panel per perturbation, ROC AUC (solid) and accuracy (dashed) against level, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in dict.fromkeys(r["perturbation"] for r in rows) if k != "none"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = 3
    n_rows = max(1, math.ceil(len(kinds) / cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3 * n_rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds, strict=False):
        for j, m in enumerate(models):
            clean = next((r for r in rows if r["model"] == m and r["perturbation"] == "none"), None)
            pts = [r for r in rows if r["model"] == m and r["perturbation"] == kind]
            xs = list(range(len(pts) + 1))
            labels = ["clean"] + [f"{r['level']:g}" for r in pts]
            for key, style in (("roc_auc", "-o"), ("accuracy", "--s")):
                ys = [(clean or {}).get(key)] + [r.get(key) for r in pts]
                ys = [np.nan if y is None else y for y in ys]
                ax.plot(xs, ys, style, color=f"C{j}", label=f"{m} {'AUC' if key == 'roc_auc' else 'acc'}")
            ax.set_xticks(xs, labels)
        ax.set_title(kind)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(kinds) :]:
        ax.axis("off")
    if kinds:
        axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Lip-sync detector under perturbations (test videos with a face)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_lipsync_report(report: LipsyncEvalReport, out_dir: str | Path) -> dict[str, str]:
    """Write the JSON report, the paired outcomes (JSON Lines), the robustness table and plot.

    Returns:
        File role -> path (also stored in ``report.files``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": str(out / REPORT_FILE), "paired": str(out / PAIRED_FILE)}
    with open(out / PAIRED_FILE, "w", encoding="utf-8") as fh:
        for row in report.paired:
            fh.write(json.dumps(json_safe(row), sort_keys=True) + "\n")
    if report.challenger.test_by_fake_type:
        (out / FAKE_TYPES_FILE).write_text(fake_type_table(report.challenger, report.champion), encoding="utf-8")
        files["fake_types"] = str(out / FAKE_TYPES_FILE)
    if report.robustness:
        (out / TABLE_FILE).write_text(robustness_table(report.robustness), encoding="utf-8")
        robustness_plot(report.robustness, out / PLOT_FILE)
        files.update(table=str(out / TABLE_FILE), plot=str(out / PLOT_FILE))
    report.files = files
    (out / REPORT_FILE).write_text(json.dumps(json_safe(asdict(report)), indent=2, sort_keys=True), encoding="utf-8")
    return files

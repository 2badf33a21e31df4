"""monitor: Evidently drift reports of this month vs last (the real library, no server) and accuracy over months from
MLflow (sqlite) with `clipsync monitor`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from components.common.storage import LocalStore
from components.monitor.core import MonitorConfig, monitor_store_month

pytest.importorskip("evidently")
pytestmark = pytest.mark.slow


def _log(store: LocalStore, model: str, month: str, entries: list[dict], kind: str = "querylog") -> None:
    body = "".join(json.dumps(e) + "\n" for e in entries)
    store.put_bytes(f"{kind}/{model}/{month}/part.jsonl", body.encode())


def _embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for the text tower: unit vectors seeded by each text's words."""
    out = []
    for text in texts:
        seed = int(hashlib.sha256(text.split()[0].encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).normal(size=8)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def test_this_month_vs_last_month_per_signal_with_evidently(tmp_path):
    rng = np.random.default_rng(0)
    store = LocalStore(tmp_path / "artifacts", create=True)
    model = "clip-acme"

    def searches(month: str, words: list[str], conf_low: float, conf_high: float) -> list[dict]:
        out = []
        for i in range(40):
            conf = float(rng.uniform(conf_low, conf_high))
            out.append(
                {
                    "ts": f"{month}-10T00:00:{i:02d}.000+00:00",
                    "query_id": f"{month}-{i}",
                    "query": f"{words[i % len(words)]} clip {i}",
                    "confidence": conf,
                    "low_confidence": conf < 0.5,
                }
            )
        return out

    # October: construction searches, unsure; September: medical searches, confident. Feedback alike both months.
    _log(store, model, "2026-09", searches("2026-09", ["surgery", "suture", "scalpel", "clinic"], 0.5, 1.0))
    _log(store, model, "2026-10", searches("2026-10", ["crane", "forklift", "welding", "scaffold"], 0.0, 0.6))
    for month in ("2026-09", "2026-10"):
        rated = [
            {"ts": f"{month}-11T00:00:{i:02d}", "query_id": f"{month}-{i}", "video_id": f"v{i}", "relevant": i % 3 > 0}
            | {"rank": 1}
            for i in range(30)
        ]
        _log(store, model, month, rated, kind="feedback")
    library = rng.normal(size=(60, 8))
    uploads = rng.normal(size=(30, 8))  # the same distribution as the library: no drift expected

    report = monitor_store_month(
        store, model, "2026-10", tmp_path / "out", _embed, uploads=(uploads, library), config=MonitorConfig()
    )
    by = {s.signal: s for s in report.signals}
    assert by["query_embedding"].drift is True and by["query_embedding"].method == "mmd"
    assert by["top1_confidence"].drift is True and "K-S" in by["top1_confidence"].method
    assert by["top1_confidence"].current_value < by["top1_confidence"].reference_value
    assert by["low_confidence_rate"].drift is True and by["low_confidence_rate"].current_value > 0.5
    assert by["feedback_precision"].drift is False and by["feedback_precision"].current_value == pytest.approx(20 / 30)
    assert by["upload_embedding"].drift is False and by["upload_embedding"].n_reference == 60
    assert not by["lipsync_score"].evaluated and "needs 5 values" in by["lipsync_score"].note
    for s in report.signals:
        if s.evaluated:
            assert s.score is not None and s.threshold is not None
            html = (tmp_path / "out" / f"{s.signal}.html").read_text()
            assert "<html" in html.lower() and 'src="http' not in html  # self-contained
            saved = json.loads((tmp_path / "out" / f"{s.signal}.json").read_text())
            assert saved["metrics"][0]["value"] == pytest.approx(s.score) and saved["tests"]
    summary = json.loads(store.get_bytes("monitor/clip-acme/2026-10/summary.json"))
    assert {s["signal"]: s["drift"] for s in summary["signals"]}["query_embedding"] is True
    assert store.exists("monitor/clip-acme/2026-10/query_embedding.html")
    metrics = report.as_metrics()
    assert metrics["monitor_query_embedding_drift"] == 1.0 and "monitor_lipsync_score_drift" not in metrics
    assert "| query_embedding | **yes** | mmd |" in report.to_markdown()


def test_monitor_config_is_validated():
    from components.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"monitor.*min_samples"):
        MonitorConfig(min_samples=1)


def test_clipsync_monitor_plots_accuracy_over_months(tmp_path, capsys):
    import yaml

    from components.common import tracking
    from components.config import load_config
    from pipelines.cli import main

    (tmp_path / "acme.yaml").write_text(yaml.safe_dump({"client_id": "acme", "state_dir": str(tmp_path / "state")}))
    config = load_config(tmp_path / "acme.yaml")
    months = [  # as_of, clip (promote, champion R@1, challenger R@1), lip-sync promote
        ("2026-09-01", 1.0, 0.20, 0.55, 1.0),
        ("2026-10-01", 0.0, 0.55, 0.50, 0.0),
        ("2026-11-01", 1.0, 0.55, 0.70, 0.0),
    ]
    for as_of, promote, champion, challenger, lip in months:
        parent = tracking.start_parent_run(
            config.tracking, f"monthly_retrain acme {as_of}", {"as_of": as_of}, {tracking.CLIENT_TAG: "acme"}
        )
        with tracking.stage_run(config.tracking, parent, "evaluate_clip"):
            tracking.log_metrics({"clip_challenger_mean_ap": challenger + 0.1, "clip_baseline_mean_ap": champion + 0.1})
            role = {"query_top1_by_category": {"medical": challenger, "industrial": challenger / 2}}
            tracking.log_dict_artifact({"challenger": role, "baseline": role}, "evaluate_clip/clip_eval.json")
        with tracking.stage_run(config.tracking, parent, "ab_gate_clip"):
            tracking.log_metrics(
                {
                    "gate_clip_promote": promote,
                    "gate_clip_champion_recall_at_1": champion,
                    "gate_clip_challenger_recall_at_1": challenger,
                }
            )
        with tracking.stage_run(config.tracking, parent, "ab_gate_lipsync"):
            tracking.log_metrics(
                {
                    "gate_lipsync_promote": lip,
                    "gate_lipsync_champion_roc_auc": 0.8,
                    "gate_lipsync_challenger_roc_auc": 0.9,
                }
            )
        tracking.finish_parent_run(config.tracking, parent)
    store = LocalStore(config.storage.artifacts_uri, create=True)
    signals = [{"signal": "top1_confidence", "current_value": 0.61, "drift": True}]
    store.put_bytes("monitor/clip-acme/2026-10/summary.json", json.dumps({"signals": signals}).encode())

    assert main(["monitor", "--config", str(tmp_path / "acme.yaml"), "--months", "2", "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 2026-")][:2]
    assert rows[0].startswith("| 2026-10-01 | FINISHED | 0.55 | 0.65 | keep | 0.8 | keep |")
    assert rows[1].startswith("| 2026-11-01 | FINISHED | 0.7 | 0.8 | promote | 0.8 | keep | 0.61 |")
    assert "top1_confidence" in rows[1] and "2026-09-01" not in out  # the newest two runs, oldest first
    assert "| run as of | industrial | medical |" in out and "| 2026-11-01 | 0.35 | 0.7 |" in out
    assert (tmp_path / "m" / "accuracy_over_months.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "m" / "accuracy_over_months.html").read_text()
    assert main(["monitor", "--client", "nobody", "--config", str(tmp_path / "acme.yaml")]) == 1

"""The TRIPOD+AI model card: a real evaluate run writes it with every section and an interval for
every metric, it says the data are synthetic only when they are, its decision curve is the formula,
and the exported bundle carries it under SHA256SUMS."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.serving import bundle
from spinecast.training.model_card import card_metrics, write_model_card

from spinecast.cli import main
from spinecast.metrics import auroc, net_benefit, treat_all_net_benefit

CONFIGS = Path(__file__).parents[2] / "configs"
SECTIONS = [
    "## Intended use",
    "## Data source",
    "## Participants",
    "## Outcome",
    "## Predictors",
    "## Sample size",
    "## Missing data",
    "## Model",
    "## Performance",
    "## Calibration",
    "## Decision curve",
    "## Fairness by subgroup",
    "## Recommendations",
    "## Limitations",
    "## Ethics, open science",
]
INTERVAL = r"-?\d\.\d{3} \(-?\d\.\d{3} to -?\d\.\d{3}\)"


@pytest.fixture(scope="module")
def evaluated(small_cohort, tmp_path_factory, tiny_bert):
    """One epoch of the quickstart model, then `spinecast evaluate` on the synthetic cohort."""
    root = tmp_path_factory.mktemp("card_run")
    train = [
        "train",
        *("--config", str(CONFIGS / "default.yaml"), "--config", str(CONFIGS / "quickstart.yaml")),
        *("--data.train_path", str(small_cohort / "cohort.parquet")),
        *(
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.init_args.save_dir",
            str(root),
        ),
        *("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1"),
        *("--trainer.enable_progress_bar", "false", "--data.num_workers", "0"),
        *("--model.config.text.pretrained", tiny_bert, "--model.config.dim", "32"),
    ]
    assert main(train) == 0
    ckpt = next(root.rglob("best.ckpt"))
    out = root / "eval"
    cohort = small_cohort / "cohort.parquet"
    args = ["evaluate", "--ckpt", str(ckpt), "--data", str(cohort), "--out", str(out)]
    assert main([*args, "--bootstrap", "200"]) == 0
    return ckpt, out


def test_evaluate_writes_a_card_with_every_tripod_section_and_intervals(evaluated, small_cohort):
    _, out = evaluated
    text = (out / bundle.MODEL_CARD).read_text()
    card = json.loads((out / "model_card.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert [text.index(s) for s in SECTIONS] == sorted(text.index(s) for s in SECTIONS)
    assert "**The data are synthetic.**" in text and "**Observed arm only.**" in text
    assert card["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95, "unit": "patient"}
    assert card["overall"]["auroc"]["value"] == pytest.approx(metrics["test/auroc"])
    for name, cell in card["overall"].items():  # every metric: a value and its interval
        assert cell["low"] <= cell["high"], name
        shown = f"{cell['value']:.3f} ({cell['low']:.3f} to {cell['high']:.3f})"
        assert shown in text, name
    performance = text[text.index("## Performance") : text.index("## Calibration")]
    assert len(re.findall(rf"\| {INTERVAL} \|", performance)) == len(card["overall"]) == 7
    fairness = text[text.index("## Fairness") : text.index("## Recommendations")]
    rows = [r for r in card["subgroups"] if r["auroc"]["low"] is not None]
    assert len(rows) >= 10 and len(re.findall(rf"\| {INTERVAL} \|", fairness)) == len(rows)
    decision = text[text.index("## Decision curve") : text.index("## Fairness")]
    assert len(re.findall(INTERVAL, decision)) == 2 * len(card["decision_curve"]["key"])
    assert "Checkpoint `best.ckpt`" in text and "`cohort.parquet`, synthetic cohort" in text
    for png in ("decision_curve.png", "calibration.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in text
    cohort = load_cohort(small_cohort / "cohort.parquet", training=True)
    everything = text + (out / "model_card.json").read_text()
    assert not any(pid in everything for pid in cohort["patient_id"])


def test_export_carries_the_card_and_verify_catches_tampering(evaluated, tmp_path):
    ckpt, out = evaluated
    card = out / bundle.MODEL_CARD
    missing = ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x")]
    assert main([*missing, "--model-card", str(tmp_path / "nowhere.md")]) == 1
    folder = tmp_path / "bundle"
    args = ["export", "--ckpt", str(ckpt), "--out", str(folder), "--eval-rows", "40"]
    assert main([*args, "--model-card", str(card)]) == 0
    assert bundle.model_card(folder) == card.read_text()
    listed = (folder / bundle.CHECKSUMS).read_text()
    assert f"{bundle.sha256(card)}  {bundle.MODEL_CARD}\n" in listed
    assert bundle.verify(folder) == folder
    kept = tmp_path / "kept"
    shutil.copytree(folder, kept)
    with (folder / bundle.MODEL_CARD).open("a") as f:
        f.write("AUROC 0.99 (0.98 to 1.00)\n")
    with pytest.raises(bundle.BundleError, match="MODEL_CARD.md does not match its SHA-256"):
        bundle.verify(folder)
    (kept / bundle.MODEL_CARD).unlink()
    with pytest.raises(bundle.BundleError, match="MODEL_CARD.md is missing"):
        bundle.verify(kept)
    assert bundle.model_card(kept) is None


@pytest.fixture(scope="module")
def scored(small_cohort):
    """The synthetic cohort scored by its own true probabilities (no model needed)."""
    test = load_cohort(small_cohort / "cohort.parquet", training=True)
    truth = pd.read_parquet(small_cohort / "truth.parquet")
    return test, {"p_satisfied": truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()}


def test_the_decision_curve_and_subgroups_score_the_observed_arm(scored):
    test, outcomes = scored
    card = card_metrics(test, outcomes, n_boot=100)
    labeled = test["satisfied"].notna().to_numpy()
    given = test["treatment"].map(TREATMENTS.index).to_numpy()
    p = outcomes["p_satisfied"][np.arange(len(test)), given][labeled]
    y = test["satisfied"][labeled].astype(float).to_numpy()
    curve = card["decision_curve"]
    t = np.asarray(curve["thresholds"])
    assert t[0] == 0.05 and t[-1] == 0.95 and len(t) == 91
    assert curve["model"] == pytest.approx(net_benefit(p, y, t))
    prevalence = y.mean()
    assert curve["treat_all"] == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t))
    assert curve["treat_all"] == pytest.approx(treat_all_net_benefit(y, t))
    assert curve["treat_none"] == [0.0] * len(t)
    for key in curve["key"]:
        k = int(np.flatnonzero(np.isclose(t, key["threshold"]))[0])
        assert key["model"]["value"] == pytest.approx(curve["model"][k])
        assert key["treat_all"]["value"] == pytest.approx(curve["treat_all"][k])
    rows = {(r["field"], r["value"]): r for r in card["subgroups"]}
    female = (test["sex"] == "female").to_numpy()[labeled]
    assert rows[("sex", "female")]["auroc"]["value"] == pytest.approx(auroc(p[female], y[female]))
    assert rows[("sex", "female")]["n"] == female.sum()
    for r in card["subgroups"]:
        if r["auroc"]["low"] is not None:
            assert r["auroc"]["low"] <= r["auroc"]["value"] <= r["auroc"]["high"]


def test_the_card_says_synthetic_only_when_a_synthetic_data_card_says_so(scored, tmp_path):
    test, outcomes = scored
    real = {"evaluation": {"file": "site.parquet", "data_card": None, "synthetic": False}}
    text = write_model_card(tmp_path, test, outcomes, {}, sources=real, n_boot=50).read_text()
    assert "synthetic" not in text.lower().replace("on a synthetic cohort", "")
    assert "no data card beside it" in text and "## Fairness by subgroup" in text

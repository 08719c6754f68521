"""The evaluation report scores the right column, knows its ceiling, and leaks no patient text."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from spinecast.datasets import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.datasets.synth.card import auroc, expected_auroc
from spinecast.training.report import evaluate_predictions, write_report

P_COLUMNS = [f"p_satisfied_{t}" for t in TREATMENTS]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 200-patient test split of a synthetic cohort, its truth rows, and the truth as 'outcomes'."""
    out = tmp_path_factory.mktemp("synth")
    generate(600, seed=1, out=out, workers=1)
    frame = load_cohort(out / "cohort.parquet", training=True)
    truth = pd.read_parquet(out / "truth.parquet")
    rows = np.sort(np.random.default_rng(0).permutation(len(frame))[:200])
    test, truth = frame.iloc[rows].reset_index(drop=True), truth.iloc[rows].reset_index(drop=True)
    p = truth[P_COLUMNS].to_numpy()
    gain = truth[[f"odi_gain_{t}" for t in TREATMENTS]].to_numpy()
    odi = np.clip(test["baseline_odi"].fillna(45.0).to_numpy()[:, None] - gain, 0, 100)
    return test, truth, {"p_satisfied": p, "p_mcid": p, "odi_12m": odi}


def labels(test):
    labeled = test["satisfied"].notna().to_numpy()
    return labeled, test["satisfied"][labeled].astype(bool).to_numpy()


def observed_column(test, p):
    return p[np.arange(len(test)), test["treatment"].map(TREATMENTS.index).to_numpy()]


def test_label_metrics_score_the_observed_treatment_column(cohort):
    test, _, outcomes = cohort
    m = evaluate_predictions(test, outcomes)
    labeled, y = labels(test)
    p = observed_column(test, outcomes["p_satisfied"])[labeled]
    assert 0 < (~labeled).sum() and m["counts"]["labeled"] == labeled.sum() < len(test)
    assert m["test/auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["test/auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
    assert m["test/brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-9)
    assert 0 < m["test/ece"] < 0.3
    assert m["test/mcid_n"] < len(test) and 0.5 < m["test/mcid_auroc"] <= 1
    assert m["test/odi_n"] < len(test) and 0 < m["test/odi_rmse"] < 30


def test_unlabeled_rows_do_not_count(cohort):
    test, _, outcomes = cohort
    labeled, _ = labels(test)
    scrambled = {k: v.copy() for k, v in outcomes.items()}
    scrambled["p_satisfied"][~labeled] = 1.0  # would change every metric if these rows counted
    first, second = evaluate_predictions(test, outcomes), evaluate_predictions(test, scrambled)
    for key in ("test/auroc", "test/auprc", "test/brier", "test/ece"):
        assert first[key] == second[key]


def test_true_probabilities_reach_the_bayes_ceiling_and_the_oracle_policy(cohort):
    test, truth, outcomes = cohort
    m = evaluate_predictions(test, outcomes, truth=truth.iloc[::-1])  # matched by patient_id, not order
    labeled, y = labels(test)
    p_true = observed_column(test, truth[P_COLUMNS].to_numpy())[labeled]
    assert m["test/auroc"] == pytest.approx(auroc(p_true, y), abs=1e-6)
    assert m["test/auroc"] == pytest.approx(m["test/bayes_auroc_on_labels"], abs=1e-6)
    assert m["test/bayes_auroc"] == pytest.approx(expected_auroc(p_true))
    assert m["test/bayes_auroc_gap"] == pytest.approx(m["test/bayes_auroc"] - m["test/auroc"])
    assert m["test/bayes_auroc_gap_on_labels"] == pytest.approx(0.0, abs=1e-6)
    values = m["policy"]["values"]
    assert m["test/policy_capture"] == pytest.approx(1.0)
    assert m["test/policy_agreement"] == 1.0
    assert values["model"] == pytest.approx(values["oracle"])
    assert values["oracle"] > values["observed"] > values["always_physical_therapy"]
    assert values["always_physical_therapy"] == pytest.approx(truth["p_satisfied_physical_therapy"].mean())


def test_random_recommendations_capture_none_of_the_oracle_gain(cohort):
    test, truth, outcomes = cohort
    noise = np.random.default_rng(5).random(outcomes["p_satisfied"].shape)
    m = evaluate_predictions(test, {"p_satisfied": noise}, truth=truth)
    assert m["test/policy_capture"] < 0.2
    assert m["test/policy_agreement"] < 0.5
    assert m["test/bayes_auroc_gap"] > 0.2


def test_ablation_drop_on_a_constructed_example():
    test = pd.DataFrame({"patient_id": list("abcd"), "age": [30, 45, 65, 80], "sex": ["female", "male"] * 2,
                         "treatment": ["fusion"] * 4, "satisfied": [False, False, True, True]})
    full = np.tile(np.array([[0.1], [0.2], [0.8], [0.9]]), (1, 4))  # ranks the labels perfectly
    m = evaluate_predictions(test, {"p_satisfied": full}, ablations={
        "clinical_note": full[::-1].copy(),  # ranks them backwards
        "tabular": np.tile(np.array([[0.1], [0.8], [0.2], [0.9]]), (1, 4))})  # one pair swapped
    assert m["test/auroc"] == 1.0
    assert m["ablation"]["clinical_note"] == {"auroc": 0.0, "drop": 1.0}
    assert m["ablation"]["tabular"]["auroc"] == pytest.approx(0.75)
    assert m["test/auroc_drop_tabular"] == pytest.approx(0.25)


def test_a_subgroup_with_one_class_gets_no_auroc(cohort):
    test, _, outcomes = cohort
    test = test.copy()
    test.loc[test["sex"] == "male", "satisfied"] = True
    rows = {(r["field"], r["value"]): r for r in evaluate_predictions(test, outcomes)["subgroups"]}
    male, female = rows[("sex", "male")], rows[("sex", "female")]
    assert male["auroc"] is None and male["satisfied_rate"] == 1.0 and male["n"] > 0
    assert 0.5 < female["auroc"] <= 1
    assert male["n"] + female["n"] == test["satisfied"].notna().sum()
    assert sum(r["n"] for (f, _), r in rows.items() if f == "age") == male["n"] + female["n"]
    assert sum(r["n"] for (f, _), r in rows.items() if f == "diagnosis") == male["n"] + female["n"]
    assert rows[("diagnosis", "missing")]["n"] == test["diagnosis"][test["satisfied"].notna()].isna().sum()


def test_wrong_shapes_and_non_probabilities_are_refused(cohort):
    test, _, outcomes = cohort
    with pytest.raises(ValueError, match=r"outcomes\['p_satisfied'\] must have shape \(200, 4\)"):
        evaluate_predictions(test, {"p_satisfied": outcomes["p_satisfied"][:, :3]})
    with pytest.raises(ValueError, match=r"baselines\['gb'\] must hold probabilities"):
        evaluate_predictions(test, outcomes, baselines={"gb": np.full(len(test), 1.5)})
    with pytest.raises(ValueError, match="unknown modality 'notes'"):
        evaluate_predictions(test, outcomes, ablations={"notes": outcomes["p_satisfied"]})


def test_report_files_hold_the_numbers_and_no_patient_text(cohort, tmp_path):
    test, truth, outcomes = cohort
    test = test.copy()
    test["clinical_note"] = test["clinical_note"].astype(object)
    test.loc[0, "clinical_note"] = "SENTINEL-NOTE-QZX patient reports pain"
    test.loc[1, "imaging_report"] = "SENTINEL-REPORT-QZX L4-5 stenosis"
    baselines = {"gradient_boosting": np.full(len(test), 0.6), "tfidf_logistic": outcomes["p_satisfied"][:, 2]}
    m = evaluate_predictions(test, outcomes, baselines=baselines, truth=truth,
                             ablations={"clinical_note": outcomes["p_satisfied"][::-1].copy()})
    write_report(tmp_path, m, test, outcomes, baselines=baselines)
    for name in ("roc.png", "calibration.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    report = (tmp_path / "report.md").read_text()
    for value in (m["test/auroc"], m["test/brier"], m["test/bayes_auroc"], m["baselines"]["tfidf_logistic"]["auroc"]):
        assert f"{value:.3f}" in report
    assert f"{m['test/policy_capture']:.1%}" in report
    assert "](roc.png)" in report and "](calibration.png)" in report
    assert report.index("| AUROC, `satisfied`") < report.index("## Modality ablation") \
        < report.index("## Subgroups") < report.index("## Baselines") < report.index("## Treatment policy")
    everything = report + (tmp_path / "metrics.json").read_text()
    assert "SENTINEL" not in everything and "QZX" not in everything
    assert not any(pid in everything for pid in test["patient_id"])

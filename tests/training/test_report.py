"""The evaluation report scores the right column, knows its ceiling, scores the recommendations as
policies (against the truth and by DR), survives a missing treatment, and leaks no patient text."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from spinecast.datasets import load_cohort
from spinecast.datasets.decision import DecisionRule
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.training.markdown import recommendation_table
from spinecast.training.report import evaluate_predictions, write_report

from spinecast.metrics import auroc, expected_auroc

P_COLUMNS = [f"p_satisfied_{t}" for t in TREATMENTS]
ACCEPTANCE = [
    "auroc",
    "ece",
    "policy_capture",
    "policy_capture_argmax",
    "policy_agreement",
    "cf_rmse",
    *(f"cf_rmse_{t}" for t in TREATMENTS),
    "unnecessary_surgery",
    "missed_benefit",
    "surgery_share",
    "oracle_surgery_share",
    "dr_value_model",
    "dr_value_model_low",
    "dr_value_model_high",
    "true_value_model",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 200-patient test split of a synthetic cohort, its truth rows, and the truth as
    'outcomes'."""
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
    # Margins 0: on point estimates the rule climbs to the argmax, so the truth is the oracle.
    no_margin = DecisionRule(margin=0.0, surgical_margin=0.0)
    m = evaluate_predictions(test, outcomes, truth=truth.iloc[::-1], rule=no_margin)
    labeled, y = labels(test)
    p_true = observed_column(test, truth[P_COLUMNS].to_numpy())[labeled]
    assert m["test/auroc"] == pytest.approx(auroc(p_true, y), abs=1e-6)
    assert m["test/auroc"] == pytest.approx(m["test/bayes_auroc_on_labels"], abs=1e-6)
    assert m["test/bayes_auroc"] == pytest.approx(expected_auroc(p_true))
    assert m["test/bayes_auroc_gap"] == pytest.approx(m["test/bayes_auroc"] - m["test/auroc"])
    assert m["test/bayes_auroc_gap_on_labels"] == pytest.approx(0.0, abs=1e-6)
    assert m["test/policy_capture"] == pytest.approx(1.0) == m["test/policy_capture_argmax"]
    assert m["test/policy_agreement"] == 1.0
    assert m["test/unnecessary_surgery"] == 0 == m["test/missed_benefit"] == m["test/cf_rmse"]
    assert m["test/surgery_share"] == m["test/oracle_surgery_share"]
    assert m["test/true_value_model"] == pytest.approx(m["test/true_value_oracle"])
    assert (
        m["test/true_value_oracle"]
        > m["test/true_value_observed"]
        > m["test/true_value_always_physical_therapy"]
    )
    assert m["test/true_value_always_physical_therapy"] == pytest.approx(
        truth["p_satisfied_physical_therapy"].mean()
    )
    # The default rule keeps physical therapy unless a gain clears the margin: never more surgery.
    default = evaluate_predictions(test, outcomes, truth=truth)
    assert default["test/surgery_share"] <= m["test/surgery_share"]
    assert default["test/policy_capture_argmax"] == pytest.approx(1.0)


def test_random_recommendations_capture_none_of_the_oracle_gain(cohort):
    test, truth, outcomes = cohort
    noise = np.random.default_rng(5).random(outcomes["p_satisfied"].shape)
    m = evaluate_predictions(test, {"p_satisfied": noise}, truth=truth)
    assert m["test/policy_capture"] < 0.2
    assert m["test/policy_agreement"] < 0.5
    assert m["test/bayes_auroc_gap"] > 0.2


def test_ablation_drop_on_a_constructed_example():
    test = pd.DataFrame(
        {
            "patient_id": list("abcd"),
            "age": [30, 45, 65, 80],
            "sex": ["female", "male"] * 2,
            "treatment": ["fusion"] * 4,
            "satisfied": [False, False, True, True],
        }
    )
    full = np.tile(np.array([[0.1], [0.2], [0.8], [0.9]]), (1, 4))  # ranks the labels perfectly
    m = evaluate_predictions(
        test,
        {"p_satisfied": full},
        ablations={
            "clinical_note": full[::-1].copy(),  # ranks them backwards
            "tabular": np.tile(np.array([[0.1], [0.8], [0.2], [0.9]]), (1, 4)),
        },
    )  # one pair swapped
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
    assert (
        rows[("diagnosis", "missing")]["n"]
        == test["diagnosis"][test["satisfied"].notna()].isna().sum()
    )


def test_wrong_shapes_and_non_probabilities_are_refused(cohort):
    test, _, outcomes = cohort
    with pytest.raises(ValueError, match=r"outcomes\['p_satisfied'\] must have shape \(200, 4\)"):
        evaluate_predictions(test, {"p_satisfied": outcomes["p_satisfied"][:, :3]})
    with pytest.raises(ValueError, match=r"baselines\['gb'\] must hold probabilities"):
        evaluate_predictions(test, outcomes, baselines={"gb": np.full((len(test), 4), 1.5)})
    with pytest.raises(ValueError, match=r"baselines\['gb'\] must have shape \(200, 4\)"):
        evaluate_predictions(test, outcomes, baselines={"gb": np.full(len(test), 0.5)})
    with pytest.raises(
        ValueError, match=r"outcomes\['p_satisfied_heads'\] must have shape \(200, 3, 4\)"
    ):
        evaluate_predictions(
            test, {**outcomes, "p_satisfied_heads": np.full((len(test), 3, 2), 0.5)}
        )
    with pytest.raises(ValueError, match="unknown modality 'notes'"):
        evaluate_predictions(test, outcomes, ablations={"notes": outcomes["p_satisfied"]})


def test_report_files_hold_the_numbers_and_no_patient_text(cohort, tmp_path):
    test, truth, outcomes = cohort
    test = test.copy()
    test["clinical_note"] = test["clinical_note"].astype(object)
    test.loc[0, "clinical_note"] = "SENTINEL-NOTE-QZX patient reports pain"
    test.loc[1, "imaging_report"] = "SENTINEL-REPORT-QZX L4-5 stenosis"
    baselines = {
        "t_learner": np.full((len(test), 4), 0.6),
        "s_learner": outcomes["p_satisfied"][:, ::-1].copy(),
    }
    m = evaluate_predictions(
        test,
        outcomes,
        baselines=baselines,
        truth=truth,
        ablations={"clinical_note": outcomes["p_satisfied"][::-1].copy()},
    )
    write_report(tmp_path, m, test, outcomes, baselines=baselines, truth=truth)
    for name in (
        "roc.png",
        "calibration.png",
        "counterfactual.png",
        "mix_by_diagnosis.png",
        "propensity.png",
    ):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    report = (tmp_path / "report.md").read_text()
    for value in (
        m["test/auroc"],
        m["test/brier"],
        m["test/bayes_auroc"],
        m["baselines"]["s_learner"]["auroc"],
        m["test/cf_rmse"],
        m["test/s_learner/cf_rmse"],
        m["test/dr_value_model_low"],
    ):
        assert f"{value:.3f}" in report
    assert (
        f"{m['test/policy_capture']:.1%}" in report
        and f"{m['test/t_learner/unnecessary_surgery']:.1%}" in report
    )
    for plot in (
        "roc.png",
        "calibration.png",
        "counterfactual.png",
        "mix_by_diagnosis.png",
        "propensity.png",
    ):
        assert f"]({plot})" in report
    order = [
        "## Recommendations",
        "| AUROC, `satisfied`",
        "## By diagnosis",
        "## Overlap and support",
        "## Calibration of predicted benefit",
        "## Modality ablation",
        "## Subgroups",
        "## Baselines",
    ]
    assert [report.index(h) for h in order] == sorted(report.index(h) for h in order)
    everything = report + (tmp_path / "metrics.json").read_text()
    assert "SENTINEL" not in everything and "QZX" not in everything
    assert not any(pid in everything for pid in test["patient_id"])


def test_metrics_hold_the_acceptance_keys_for_the_model_and_each_baseline(cohort):
    test, truth, outcomes = cohort
    noisy = np.clip(
        outcomes["p_satisfied"] + np.random.default_rng(2).normal(0, 0.1, (len(test), 4)), 0, 1
    )
    baselines = {"t_learner": noisy, "s_learner": np.full((len(test), 4), 0.5)}
    m = evaluate_predictions(test, outcomes, baselines=baselines, truth=truth, n_boot=200)
    for prefix in ("test/", "test/t_learner/", "test/s_learner/"):
        missing = [k for k in ACCEPTANCE if prefix + k not in m]
        assert not missing, (prefix, missing)
    assert m["test/t_learner/cf_rmse"] == pytest.approx(
        np.sqrt(((noisy - outcomes["p_satisfied"]) ** 2).mean(0)).mean()
    )
    assert m["test/cf_rmse"] == 0 < m["test/t_learner/cf_rmse"]
    # A constant baseline's argmax is physical therapy for everyone: no surgery at all.
    assert m["test/s_learner/surgery_share"] == 0 and m["test/s_learner/unnecessary_surgery"] == 0
    assert m["test/s_learner/true_value_model"] == pytest.approx(
        m["test/true_value_always_physical_therapy"]
    )
    assert m["test/dr_value_model_low"] < m["test/dr_value_model"] < m["test/dr_value_model_high"]
    table = recommendation_table(m).splitlines()  # what `spinecast evaluate` prints
    assert [line.split("  ")[0] for line in table] == [
        "policy",
        "model: decision rule",
        "T-learner (argmax)",
        "S-learner (argmax)",
        "oracle: best_treatment",
    ]
    assert (
        f"{m['test/t_learner/policy_capture']:.1%}" in table[2]
        and f"{m['test/dr_value_model']:.3f}" in table[1]
    )


def test_the_support_floor_keeps_the_rule_off_a_treatment_without_support(cohort):
    test, truth, outcomes = cohort
    propensity = np.full((len(test), 4), 0.3)
    propensity[:, TREATMENTS.index("fusion")] = 0.01  # below the floor for every patient
    m = evaluate_predictions(test, {**outcomes, "propensity": propensity}, truth=truth, n_boot=100)
    mix = m["recommendation"]["policies"]["model"]["mix"]
    assert mix["fusion"] == 0 < m["recommendation"]["policies"]["model_argmax"]["mix"]["fusion"]
    assert m["recommendation"]["argmax_unsupported_share"] == pytest.approx(
        m["recommendation"]["policies"]["model_argmax"]["mix"]["fusion"]
    )


def _all_numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _all_numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _all_numbers(v)
    elif isinstance(tree, float):
        yield tree


def test_a_cohort_without_one_treatment_gives_no_nan_and_names_it(cohort, tmp_path):
    test, truth, outcomes = cohort
    keep = (test["treatment"] != "fusion").to_numpy()
    test, truth = test[keep].reset_index(drop=True), truth[keep].reset_index(drop=True)
    outcomes = {k: v[keep] for k, v in outcomes.items()}
    baselines = {"t_learner": outcomes["p_satisfied"], "s_learner": np.full((len(test), 4), 0.5)}
    m = evaluate_predictions(test, outcomes, baselines=baselines, truth=truth, n_boot=100)
    assert not any(math.isnan(x) for x in _all_numbers(m))
    assert m["recommendation"]["unsupported"] == ["fusion"]
    assert m["recommendation"]["dr"]["overlap"]["treatments"]["fusion"]["quantiles"]["q95"] == 0
    policies = m["recommendation"]["policies"]
    assert policies["model"]["mix"]["fusion"] > 0  # the truth sends some of them to fusion
    assert m["test/dr_value_model"] is None and "fusion" in policies["model"]["dr_reason"]
    assert m["test/s_learner/dr_value_model"] is not None  # it never recommends fusion
    write_report(tmp_path, m, test, outcomes, baselines=baselines, truth=truth)
    report = (tmp_path / "report.md").read_text()
    assert "fusion lacks support: no patient in this cohort received it" in report
    assert "DR value of model: decision rule is n/a: recommends fusion" in report
    assert "nan" not in report.lower()


def test_without_a_truth_file_only_the_dr_part_runs(cohort, tmp_path):
    test, _, outcomes = cohort
    m = evaluate_predictions(test, outcomes, n_boot=100)
    assert not any(k.startswith(("test/cf_", "test/true_value")) for k in m)
    assert "test/policy_capture" not in m and "test/unnecessary_surgery" not in m
    assert m["test/dr_value_model_low"] < m["test/dr_value_model"] < m["test/dr_value_model_high"]
    assert m["test/dr_value_observed"] == pytest.approx(
        test["satisfied"].dropna().astype(float).mean(), abs=0.08
    )
    write_report(tmp_path, m, test, outcomes)
    assert (
        not (tmp_path / "counterfactual.png").exists() and (tmp_path / "propensity.png").is_file()
    )
    report = (tmp_path / "report.md").read_text()
    assert "## Recommendations" in report and "counterfactual.png" not in report


def test_the_accuracy_benchmark_checks_the_acceptance_targets():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    good = {
        "test/policy_capture": 0.85,
        "test/policy_agreement": 0.75,
        "test/cf_rmse": 0.12,
        **{f"test/cf_rmse_{t}": 0.15 for t in TREATMENTS},
        "test/unnecessary_surgery": 0.04,
        "test/surgery_share": 0.70,
        "test/oracle_surgery_share": 0.72,
        "test/auroc": 0.82,
        "test/ece": 0.02,
        "test/t_learner/policy_capture": 0.70,
        "test/s_learner/policy_capture": 0.66,
        "test/t_learner/cf_rmse": 0.19,
        "test/s_learner/cf_rmse": 0.19,
        "test/dr_value_model_low": 0.70,
        "test/dr_value_model_high": 0.76,
        "test/true_value_model": 0.74,
        **bench.renamed(
            {"test/policy_capture": 0.65, "test/unnecessary_surgery": 0.08, "val/x": 1},
            "shift_strong",
        ),
        **bench.renamed(
            {"test/policy_capture": 0.61, "test/unnecessary_surgery": 0.02}, "shift_weak"
        ),
    }
    assert "shift_strong/val/x" not in good and good["shift_weak/policy_capture"] == 0.61
    checks = bench.targets(good)
    assert len(checks) == 15 and all(checks.values())
    worse = {
        **good,
        "test/cf_rmse_fusion": 0.17,
        "test/true_value_model": 0.77,
        "test/t_learner/cf_rmse": 0.11,
        "shift_weak/unnecessary_surgery": None,
    }
    failed = {k for k, ok in bench.targets(worse).items() if not ok}
    assert failed == {
        "cf_rmse_each_0.16",
        "dr_interval_contains_true_value",
        "cf_rmse_beats_baselines",
        "shift_weak_unnecessary_surgery_0.10",
    }
    assert set(bench.targets({"test/auroc": 0.9, "test/ece": 0.01})) == {"auroc_0.81", "ece_0.03"}

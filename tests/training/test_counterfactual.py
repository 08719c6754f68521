"""The counterfactual estimators: AIPW recovers a known policy value under confounding, the truth
metrics count what they say, and a cohort without one treatment degrades to "n/a", never NaN."""

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.training.counterfactual import (
    benefit_calibration,
    bootstrap_ci,
    cross_fit_propensity,
    doubly_robust,
    dr_scores,
    policy_value,
    truth_metrics,
)

PT, ESI, DECOMPRESSION, FUSION = range(4)


@pytest.fixture(scope="module")
def simulated():
    """20,000 patients, 4 arms; treatment and outcome both depend on x (confounding by indication),
    with known propensities `e` and known outcome probabilities `p`."""
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=n)
    logits = np.stack([np.zeros(n), 0.5 + 0.8 * x, 1.5 * x, -1.0 - 1.2 * x], axis=1)
    e = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = 1 / (
        1 + np.exp(-np.stack([-0.5 + 0.3 * x, 0.5 * x, 0.2 + 1.5 * x, -0.3 - 1.0 * x], axis=1))
    )
    t = (rng.random(n)[:, None] > np.cumsum(e, axis=1)).sum(axis=1).clip(max=3)
    y = (rng.random(n) < p[np.arange(n), t]).astype(float)
    policy = np.where(x > 0, DECOMPRESSION, FUSION)
    return {
        "x": x,
        "e": e,
        "p": p,
        "t": t,
        "y": y,
        "policy": policy,
        "true": p[np.arange(n), policy].mean(),
    }


def test_aipw_recovers_a_known_policy_value_where_the_naive_mean_is_biased(simulated):
    s = simulated
    naive = s["y"][
        s["t"] == s["policy"]
    ].mean()  # observed outcomes of those who happened to get it
    assert abs(naive - s["true"]) > 0.04
    # Double robustness: right propensities with a useless outcome model, and the reverse.
    for e, mu in ((s["e"], np.full_like(s["p"], 0.5)), (np.full_like(s["e"], 0.25), s["p"])):
        scores = dr_scores(s["y"], s["t"], e, mu)
        assert policy_value(scores, s["policy"]) == pytest.approx(s["true"], abs=0.02)
        low, high = bootstrap_ci(scores, s["policy"], n_boot=500, seed=0)
        assert low < s["true"] < high and high - low < 0.05


def test_dr_scores_add_the_weighted_residual_only_on_the_received_arm():
    y, t = np.array([1.0, 0.0]), np.array([FUSION, PT])
    e = np.array([[0.5, 0.2, 0.2, 0.1], [0.5, 0.2, 0.3, 0.0]])  # nobody like row 2 gets fusion
    mu = np.full((2, 4), 0.6)
    scores = dr_scores(y, t, e, mu)
    np.testing.assert_allclose(
        scores, [[0.6, 0.6, 0.6, 0.6 + 0.4 / 0.1], [0.6 - 0.6 / 0.5, 0.6, 0.6, 0.6]]
    )


def test_benefit_calibration_slope_is_one_for_true_benefits_and_zero_for_noise(simulated):
    s = simulated
    scores = dr_scores(s["y"], s["t"], s["e"], s["p"])
    counts = np.bincount(s["t"], minlength=4)
    right = benefit_calibration(s["p"], scores, counts)["decompression"]
    assert right["slope"] == pytest.approx(1.0, abs=0.25)
    assert [b["predicted"] for b in right["bins"]] == sorted(b["predicted"] for b in right["bins"])
    assert right["bins"][-1]["dr"] > right["bins"][0]["dr"] + 0.3
    noise = np.random.default_rng(1).permutation(s["p"])  # benefits of other patients
    assert abs(benefit_calibration(noise, scores, counts)["decompression"]["slope"]) < 0.25
    no_fusion = benefit_calibration(s["p"], scores, np.array([5, 5, 5, 0]))
    assert no_fusion["fusion"] == {"reason": "no labeled patient received fusion"}


def test_truth_metrics_count_unnecessary_surgery_and_missed_benefit_exactly():
    true_p = np.array(
        [
            [0.6, 0.5, 0.4, 0.3],  # PT best: surgery here is unnecessary
            [0.3, 0.5, 0.4, 0.2],  # ESI best: decompression unnecessary
            [0.2, 0.3, 0.8, 0.6],  # decompression best: PT misses benefit
            [0.2, 0.3, 0.4, 0.7],  # fusion best: decompression is still surgery, not unnecessary
            [0.5, 0.4, 0.45, 0.3],  # PT best, PT recommended
        ]
    )
    best = true_p.argmax(axis=1)
    observed = np.array([PT, PT, PT, PT, PT])
    recommended = np.array([FUSION, DECOMPRESSION, PT, DECOMPRESSION, PT])
    m = truth_metrics(
        true_p,
        best,
        observed,
        true_p.copy(),
        recommended,
        np.array(
            [
                "nonspecific_low_back_pain",
                None,
                "spinal_stenosis",
                "spondylolisthesis",
                "nonspecific_low_back_pain",
            ],
            dtype=object,
        ),
    )
    assert m["unnecessary_surgery"] == pytest.approx(2 / 5)
    assert m["missed_benefit"] == pytest.approx(1 / 5)
    assert m["surgery_share"] == pytest.approx(3 / 5) and m[
        "oracle_surgery_share"
    ] == pytest.approx(2 / 5)
    assert m["policy_agreement"] == pytest.approx(1 / 5)
    values = (
        true_p[np.arange(5), recommended].mean(),
        true_p.max(axis=1).mean(),
        true_p[:, PT].mean(),
    )
    assert m["true_value"] == pytest.approx(values[0])
    assert m["policy_capture"] == pytest.approx((values[0] - values[2]) / (values[1] - values[2]))
    assert m["cf_rmse"] == 0 and all(m[f"cf_rmse_{t}"] == 0 for t in TREATMENTS)
    assert m["recommended_mix_decompression"] == pytest.approx(2 / 5)
    rows = {r["diagnosis"]: r for r in m["by_diagnosis"]}
    assert rows["nonspecific_low_back_pain"]["n"] == 2 and rows["missing"]["n"] == 1
    assert rows["nonspecific_low_back_pain"]["recommended_mix"]["fusion"] == 0.5
    assert rows["nonspecific_low_back_pain"]["oracle_mix"]["physical_therapy"] == 1.0
    assert rows["disc_herniation"] == {
        "diagnosis": "disc_herniation",
        "n": 0,
        "predicted": None,
        "true": None,
        "recommended_mix": None,
        "oracle_mix": None,
    }


def test_truth_metrics_score_every_patient_not_only_the_observed_arm():
    true_p = np.full((4, 4), 0.5)
    predicted = true_p.copy()
    predicted[:, FUSION] = 0.9  # wrong only under a treatment nobody received
    m = truth_metrics(true_p, np.zeros(4, int), np.zeros(4, int), predicted, np.zeros(4, int))
    assert m["cf_rmse_fusion"] == pytest.approx(0.4) and m["cf_rmse_physical_therapy"] == 0
    assert m["cf_rmse"] == pytest.approx(0.1) and m["cf_ece_fusion"] == pytest.approx(0.4)


@pytest.fixture(scope="module")
def cohort_without_fusion(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(300, seed=3, out=out, workers=1)
    frame = load_cohort(out / "cohort.parquet", training=True)
    return frame[frame["treatment"] != "fusion"].reset_index(drop=True)


def test_a_treatment_nobody_received_gets_zero_propensity_and_no_dr_value(cohort_without_fusion):
    frame = cohort_without_fusion
    e = cross_fit_propensity(frame, folds=3)
    assert e.shape == (len(frame), 4) and np.isfinite(e).all()
    assert (e[:, FUSION] == 0).all() and (e[:, :FUSION] >= 0.01).all()
    observed = frame["treatment"].map(TREATMENTS.index).to_numpy()
    assert e[np.arange(len(frame)), observed].mean() > 0.35  # informative: above the 1/3 of chance
    n = len(frame)
    policies = {
        "pt": np.zeros(n, int),
        "some_fusion": np.where(np.arange(n) % 4 == 0, FUSION, DECOMPRESSION),
    }
    dr = doubly_robust(frame, policies, np.full((n, 4), 0.5), folds=3, n_boot=200)
    assert dr["overlap"]["unsupported"] == ["fusion"]
    assert (
        dr["values"]["some_fusion"]["value"] is None
        and "fusion" in dr["values"]["some_fusion"]["reason"]
    )
    pt = dr["values"]["pt"]
    assert pt["reason"] is None and pt["low"] < pt["value"] < pt["high"]
    assert "reason" in dr["benefit_calibration"]["fusion"]
    assert (
        dr["benefit_calibration"]["decompression"]["slope"] is None
    )  # constant predictions: no slope


def test_unlabeled_rows_are_left_out_of_dr_estimates(cohort_without_fusion):
    frame = cohort_without_fusion.copy()
    n = len(frame)
    policies = {"pt": np.zeros(n, int)}
    first = doubly_robust(frame, policies, folds=3, n_boot=100)
    frame["satisfied"] = frame["satisfied"].astype("boolean")
    frame.loc[: n // 2, "satisfied"] = pd.NA
    second = doubly_robust(frame, policies, folds=3, n_boot=100)
    assert second["labeled"] == frame["satisfied"].notna().sum() < first["labeled"]
    assert second["values"]["pt"]["value"] != first["values"]["pt"]["value"]


def test_balancing_weights_count_the_rarely_treated_for_the_many_like_them(small_cohort):
    """`--data.balance`: mean 1, positive, and larger for patients whose treatment was unlikely."""
    from spinecast.training.baselines import treatment_index
    from spinecast.training.data import balancing_weights

    frame = load_cohort(small_cohort / "cohort.parquet", training=True)
    w = balancing_weights(frame, seed=0)
    e = cross_fit_propensity(frame, seed=0)[np.arange(len(frame)), treatment_index(frame)]
    assert w.mean() == pytest.approx(1.0, abs=1e-5) and (w > 0).all()
    unlikely, likely = e < np.quantile(e, 0.25), e > np.quantile(e, 0.75)
    assert w[unlikely].mean() > 2 * w[likely].mean()

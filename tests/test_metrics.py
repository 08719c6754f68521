"""The one metrics module agrees with scikit-learn and with the torchmetrics classes the
LightningModule logs during training (ties included), and says None where a metric is undefined;
its vectorised bootstrap equals a loop over the same resamples; net benefit is the formula."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError

from spinecast.metrics import (
    WEIGHTED,
    auroc,
    average_precision,
    binary_metrics,
    binary_metrics_ci,
    bootstrap_ci,
    calibration_error,
    net_benefit,
    resamples,
    treat_all_net_benefit,
    weighted_calibration_intercept,
    weighted_calibration_slope,
    weighted_net_benefit,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_and_the_training_metrics(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(size=500), 2)  # many ties
    y = (rng.uniform(size=500) < p).astype(int)
    preds, target = torch.as_tensor(p), torch.as_tensor(y)
    m = binary_metrics(p, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["auroc"] == pytest.approx(float(BinaryAUROC()(preds, target)), abs=1e-6)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["auprc"] == pytest.approx(float(BinaryAveragePrecision()(preds, target)), abs=1e-6)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    ece = BinaryCalibrationError(n_bins=15, norm="l1")(preds, target)
    assert m["ece"] == pytest.approx(float(ece), abs=1e-6)


def test_undefined_metrics_are_none_and_a_perfect_score_is_one():
    assert auroc(np.array([0.1, 0.9]), np.array([1, 1])) is None
    assert average_precision(np.array([0.1, 0.9]), np.array([0, 0])) is None
    assert binary_metrics(np.array([]), np.array([]))["ece"] is None
    assert auroc(np.array([0.1, 0.2, 0.8]), np.array([0, 0, 1])) == 1.0
    # Against true probabilities: a calibrated prediction has no error, a shifted one its shift.
    p = np.linspace(0.01, 0.99, 99)
    assert calibration_error(p, p) == pytest.approx(0.0)
    assert calibration_error(np.clip(p + 0.05, 0, 1), p, bins=10) == pytest.approx(0.05, abs=0.01)


def _sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(0.02, 0.98, size=n), 2)  # ties
    return p, (rng.uniform(size=n) < p).astype(float)


def test_bootstrap_ci_equals_a_direct_loop_over_the_same_resamples():
    p, y = _sample(150)
    direct = {
        "auroc": auroc,
        "auprc": average_precision,
        "brier": lambda p, y: float(np.mean((p - y) ** 2)),
        "ece": calibration_error,
    }
    draws = resamples(len(p), 300, seed=7)
    for name, metric in direct.items():
        got = bootstrap_ci(WEIGHTED[name], p, y, n_boot=300, seed=7)
        values = np.array([metric(p[i], y[i]) for i in draws], dtype=float)
        assert got["value"] == pytest.approx(metric(p, y), abs=1e-12), name
        low, high = np.quantile(values[~np.isnan(values)], [0.025, 0.975])
        assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12), name


def test_calibration_slope_and_intercept_solve_the_logistic_recalibration():
    p, y = _sample(2000, seed=3)
    x = np.log(p / (1 - p))
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[:, None], y)
    ones = np.ones((1, len(p)))
    assert weighted_calibration_slope(p, y, ones)[0] == pytest.approx(fit.coef_[0, 0], abs=1e-4)
    a = weighted_calibration_intercept(p, y, ones)[0]
    assert np.mean(y - 1 / (1 + np.exp(-(a + x)))) == pytest.approx(0.0, abs=1e-9)
    # Predictions too low by 0.7 on the logit scale: the intercept finds the shift.
    shifted = 1 / (1 + np.exp(-(x - 0.7)))
    assert weighted_calibration_intercept(shifted, y, ones)[0] == pytest.approx(a + 0.7, abs=1e-6)
    # Predictions twice as extreme as they should be: slope 1/2.
    extreme = 1 / (1 + np.exp(-2 * x))
    slope = weighted_calibration_slope(extreme, y, ones)[0]
    assert slope == pytest.approx(fit.coef_[0, 0] / 2, abs=1e-4)


def test_bootstrap_ci_holds_the_estimate_narrows_with_more_patients_and_is_seeded():
    small, large = _sample(200, seed=1), _sample(5000, seed=1)
    for name in ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept"):
        a = bootstrap_ci(WEIGHTED[name], *small, n_boot=400)
        b = bootstrap_ci(WEIGHTED[name], *large, n_boot=400)
        assert a["low"] < a["value"] < a["high"] and b["low"] < b["value"] < b["high"], name
        assert (b["high"] - b["low"]) < 0.5 * (a["high"] - a["low"]), name
    again = binary_metrics_ci(*small, n_boot=400)
    assert again == binary_metrics_ci(*small, n_boot=400)
    assert again["auroc"] != binary_metrics_ci(*small, n_boot=400, seed=1)["auroc"]
    assert again["auroc"]["value"] == auroc(*small)
    one_class = bootstrap_ci(WEIGHTED["auroc"], np.array([0.2, 0.7]), np.array([1.0, 1.0]))
    assert one_class == {"value": None, "low": None, "high": None}


def test_net_benefit_on_a_hand_checked_example():
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.2])
    y = np.array([1, 0, 1, 1, 0])
    t = np.array([0.25, 0.5, 0.6, 0.7])
    # acted on (p >= t): 0.25 -> 4 (TP 3, FP 1); 0.5 and 0.6 -> 3 (TP 2, FP 1); 0.7 -> 2 (1, 1)
    expected = [3 / 5 - 1 / 5 * (1 / 3), 2 / 5 - 1 / 5, 2 / 5 - 1 / 5 * 1.5, 1 / 5 - 1 / 5 * 7 / 3]
    assert net_benefit(p, y, t) == pytest.approx(expected)
    # acting on all: prevalence 3/5 minus 2/5 x t / (1 - t); acting on none: 0 everywhere
    assert treat_all_net_benefit(y, t) == pytest.approx(
        [0.6 - 0.4 / 3, 0.2, 0.0, 0.6 - 0.4 * 7 / 3]
    )
    assert net_benefit(np.ones(5), y, t) == pytest.approx(treat_all_net_benefit(y, t))
    assert net_benefit(np.zeros(5), y, t) == pytest.approx(np.zeros(4))
    ones = np.ones((1, 5), dtype=float)
    for k, threshold in enumerate(t):
        got = weighted_net_benefit(p, y.astype(float), ones, threshold)[0]
        assert got == pytest.approx(expected[k])

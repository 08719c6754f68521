"""The one metrics module agrees with scikit-learn and with the torchmetrics classes the
LightningModule logs during training (ties included), and says None where a metric is undefined."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError

from spinecast.metrics import auroc, average_precision, binary_metrics, calibration_error


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

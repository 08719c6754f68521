"""The counterfactual baselines predict every treatment for every row, learn real signal, read the
text, survive an arm nobody received, and are reproducible."""

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.training.baselines import BASELINES, baseline_predictions

from spinecast.metrics import auroc


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(600, seed=1, out=out, workers=1)
    cohort = load_cohort(out / "cohort.parquet", training=True)
    test_rows = np.random.default_rng(0).permutation(len(cohort))[:200]
    is_test = np.isin(np.arange(len(cohort)), test_rows)
    return cohort[~is_test].reset_index(drop=True), cohort[is_test].reset_index(drop=True)


@pytest.fixture(scope="module")
def predictions(split):
    train, test = split
    return baseline_predictions(train, test, seed=0)


def observed_column(test, p):
    return p[np.arange(len(test)), test["treatment"].map(TREATMENTS.index).to_numpy()]


def test_every_baseline_predicts_every_treatment_for_every_test_row(split, predictions):
    assert set(predictions) == set(BASELINES) == {"t_learner", "s_learner"}
    for p in predictions.values():
        assert p.shape == (len(split[1]), len(TREATMENTS))
        assert ((p >= 0) & (p <= 1)).all() and np.isfinite(p).all()


def test_baselines_beat_chance_clearly_on_the_observed_arm(split, predictions):
    test = split[1]
    labeled = test["satisfied"].notna().to_numpy()
    y = test["satisfied"][labeled].astype(bool).to_numpy()
    for name, p in predictions.items():
        assert auroc(observed_column(test, p)[labeled], y) > 0.6, name


def test_predictions_are_counterfactual_not_tied_to_the_recorded_treatment(split, predictions):
    train, test = split
    as_pt = baseline_predictions(train, test.assign(treatment="physical_therapy"))
    for name, p in predictions.items():
        np.testing.assert_allclose(as_pt[name], p, rtol=0, atol=1e-12)
        # The cohort's fusion patients are satisfied far more often than its PT patients.
        assert p[:, TREATMENTS.index("fusion")].mean() > p[:, 0].mean() + 0.05, name


def test_same_seed_same_predictions(split, predictions):
    again = baseline_predictions(*split, seed=0)
    for name in predictions:
        np.testing.assert_array_equal(again[name], predictions[name])


def test_unlabeled_train_rows_are_ignored(split, predictions):
    train, test = split
    unlabeled = train.head(40).copy()
    unlabeled["satisfied"] = pd.array([pd.NA] * len(unlabeled), dtype="boolean")
    unlabeled["baseline_odi"] = 99.0  # would move the encoding's mean if it were fitted on them
    padded = pd.concat([train[train["satisfied"].notna()], unlabeled], ignore_index=True)
    again = baseline_predictions(padded, test, seed=0)
    for name in predictions:
        np.testing.assert_allclose(again[name], predictions[name], rtol=0, atol=1e-12)


def test_both_baselines_read_the_text(split, predictions):
    train, test = split
    no_text = baseline_predictions(train, test.assign(clinical_note=pd.NA, imaging_report=pd.NA))
    for name in predictions:
        assert not np.allclose(no_text[name], predictions[name]), name


def test_an_arm_nobody_received_gets_the_pooled_rate_from_t_learner_finite_from_s_learner(split):
    train, test = split
    without_fusion = train[train["treatment"] != "fusion"]
    p = baseline_predictions(without_fusion, test)
    fusion = TREATMENTS.index("fusion")
    pooled = without_fusion["satisfied"].dropna().astype(bool).mean()
    np.testing.assert_allclose(p["t_learner"][:, fusion], pooled)
    assert np.isfinite(p["s_learner"]).all()


def test_a_row_without_a_treatment_is_refused(split):
    train, test = split
    test = test.copy()
    test.loc[3, "treatment"] = pd.NA
    with pytest.raises(ValueError, match=r"test: 'treatment' must be one of .* \(first: row 4\)"):
        baseline_predictions(train, test)

"""Classical baselines the multimodal model has to beat, on the same rows and the same labels.

    from spinecast.training.baselines import baseline_predictions
    preds = baseline_predictions(train_df, test_df, seed=0)   # {"gradient_boosting": (N,), ...}

Each baseline is fitted on the train rows that have a `satisfied` label and returns, for every test
row, P(satisfied) under the treatment that row records. They use the same feature encoding as the
model (`spinecast.datasets.features`), fitted on the training split only.

- `gradient_boosting`: scikit-learn's HistGradientBoostingClassifier on the structured fields and the
  treatment. Trees find treatment x field interactions themselves and handle missing values natively,
  so the raw values go in (NaN where missing) with no hand-made interactions.
- `tfidf_logistic`: a logistic regression on TF-IDF word 1-2 grams of the clinic note and of the MRI
  report (one vocabulary each: "stenosis" in a history and in a radiology finding are different
  evidence), plus the standardized structured fields, their missing flags and one-hot treatment.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.schema import TEXT_COLUMNS, TREATMENTS
from threadpoolctl import threadpool_limits

Baseline = Callable[[pd.DataFrame, np.ndarray, pd.DataFrame, FeatureEncoding, int], np.ndarray]


def baseline_predictions(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> dict[str, np.ndarray]:
    """P(satisfied) for every test row under its observed treatment, one (N,) array per baseline."""
    for name, frame in (("train", train), ("test", test)):
        treatment_index(frame, name)
    labeled = train[train["satisfied"].notna()]
    y = labeled["satisfied"].astype(bool).to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError(f"train needs both satisfied and unsatisfied rows; got {len(y)} labeled rows "
                         f"of a single class")
    encoding = FeatureEncoding.fit(labeled)
    return {name: fit(labeled, y, test, encoding, seed) for name, fit in BASELINES.items()}


def gradient_boosting(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame,
                      encoding: FeatureEncoding, seed: int) -> np.ndarray:
    # Shallow, shrunken trees with early stopping on an internal split: the usual tabular baseline,
    # and it does not overfit a few hundred patients.
    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=500, max_leaf_nodes=8, min_samples_leaf=20, l2_regularization=1.0,
        categorical_features=_tree_categorical_mask(encoding), early_stopping=True,
        validation_fraction=0.15, n_iter_no_change=20, random_state=seed)
    # One OpenMP thread: with torch loaded in the same process (training, the tests), sklearn's
    # OpenMP pool stalled 8,000 rows from 0.3 s to 47 s on 2 shared cores; one thread is plenty here.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(_tree_features(train, encoding), y)
        return model.predict_proba(_tree_features(test, encoding))[:, 1]


def tfidf_logistic(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame,
                   encoding: FeatureEncoding, seed: int) -> np.ndarray:
    vectorizers = {col: _vectorizer() for col in TEXT_COLUMNS}
    for col, vectorizer in vectorizers.items():
        vectorizer.fit(_text(train, col))
    one_hot = OneHotEncoder(handle_unknown="ignore", dtype=np.float64)
    one_hot.fit(_categorical_ids(train, encoding.encode(train)))

    def features(frame: pd.DataFrame) -> sparse.csr_matrix:
        enc = encoding.encode(frame)
        blocks = [v.transform(_text(frame, col)) for col, v in vectorizers.items()]
        blocks += [sparse.csr_matrix(enc["numeric"]), sparse.csr_matrix(enc["numeric_missing"]),
                   one_hot.transform(_categorical_ids(frame, enc))]
        return sparse.hstack(blocks, format="csr")

    # Strong-ish L2 (C=0.3): ~20k n-grams against a few thousand patients. On 8,000 synthetic
    # patients C in [0.3, 1] scores the same AUROC; saga converges ~5x faster than lbfgs here.
    model = LogisticRegression(C=0.3, solver="saga", max_iter=1000, random_state=seed)
    model.fit(features(train), y)
    return model.predict_proba(features(test))[:, 1]


BASELINES: dict[str, Baseline] = {"gradient_boosting": gradient_boosting, "tfidf_logistic": tfidf_logistic}


def _tree_features(frame: pd.DataFrame, encoding: FeatureEncoding) -> np.ndarray:
    """(B, numeric + categorical + 1): numeric fields with NaN where missing, category ids, treatment id."""
    enc = encoding.encode(frame)
    numeric = np.where(enc["numeric_missing"] > 0, np.nan, enc["numeric"])
    return np.hstack([numeric, _categorical_ids(frame, enc)]).astype(np.float64)


def _tree_categorical_mask(encoding: FeatureEncoding) -> np.ndarray:
    return np.array([False] * len(encoding.numeric) + [True] * (len(encoding.categorical) + 1))


def _categorical_ids(frame: pd.DataFrame, enc: dict[str, np.ndarray]) -> np.ndarray:
    """(B, categorical + 1): the encoding's category ids (0 = missing, a level of its own) and the
    treatment's index in TREATMENTS."""
    return np.hstack([enc["categorical"], treatment_index(frame)[:, None]])


def _vectorizer() -> TfidfVectorizer:
    # min_df drops typos and one-off numbers; sublinear tf keeps a repeated word from dominating.
    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50_000, sublinear_tf=True,
                           dtype=np.float64)


def _text(frame: pd.DataFrame, col: str) -> list[str]:
    if col not in frame.columns:
        return [""] * len(frame)
    return frame[col].astype(object).where(frame[col].notna(), "").tolist()


def treatment_index(frame: pd.DataFrame, name: str = "frame") -> np.ndarray:
    """(B,) index in TREATMENTS of each row's treatment; every row must record a known one, since
    the baselines condition on it and the report scores the observed treatment's column."""
    if "treatment" not in frame.columns:
        raise ValueError(f"{name} must have a 'treatment' column (one of {', '.join(TREATMENTS)})")
    index = frame["treatment"].map({t: i for i, t in enumerate(TREATMENTS)})
    bad = index.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(f"{name}: 'treatment' must be one of {', '.join(TREATMENTS)} in every row; "
                         f"{int(bad.sum())} rows are missing or unknown (first: row {row})")
    return index.to_numpy(dtype=np.int64)

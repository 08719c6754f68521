"""Classical counterfactual baselines the multimodal model has to beat, on the same rows and labels.

    from spinecast.training.baselines import baseline_predictions
    # {"t_learner": (N, 4), "s_learner": (N, 4)}
    preds = baseline_predictions(train_df, test_df, seed=0)

Each baseline is fitted on the train rows that have a `satisfied` label and returns, for every test
row, P(satisfied) under every treatment (columns in TREATMENTS order), whatever treatment the row
records: a per-treatment prediction is a counterfactual claim, so the baselines make one too and the
report scores them exactly as it scores the model (their recommendation is their argmax).

- `t_learner`: one logistic regression per treatment, fitted on that arm's rows only, on TF-IDF word
  1-3 grams of the clinic note and of the MRI report (one vocabulary each: "stenosis" in a history
  and in a radiology finding are different evidence) plus the standardized structured fields, their
  missing flags and one-hot categories. An arm the training rows never received cannot be learned:
  its column is the pooled satisfied rate, a constant that says "no information".
- `s_learner`: one HistGradientBoostingClassifier on the structured fields (NaN where missing), a
  128-d TruncatedSVD of the same TF-IDF text and the treatment as a categorical feature, asked once
  per treatment with the treatment set to that arm. Trees find treatment x field interactions
  themselves, but nothing forces them to use the treatment where an arm is rare.

The same text + fields features (`TextFields`) feed the cross-fitted propensity and outcome models
of the doubly robust evaluation (training/counterfactual.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder
from spinecast.datasets.features import NUMERIC_FIELDS, FeatureEncoding
from spinecast.datasets.schema import TEXT_COLUMNS, TREATMENT_INDEX, TREATMENTS
from threadpoolctl import threadpool_limits

SVD_DIM = 128


def baseline_predictions(
    train: pd.DataFrame, test: pd.DataFrame, seed: int = 0
) -> dict[str, np.ndarray]:
    """P(satisfied) for every test row under every treatment, one (N, 4) array per baseline."""
    for name, frame in (("train", train), ("test", test)):
        treatment_index(frame, name)
    labeled = train[train["satisfied"].notna()].reset_index(drop=True)
    y = labeled["satisfied"].astype(bool).to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"train needs both satisfied and unsatisfied rows; got {len(y)} labeled rows "
            f"of a single class"
        )
    return {name: fit(labeled, y, test, seed) for name, fit in BASELINES.items()}


class TextFields:
    """TF-IDF of note and report + standardized fields, missing flags and one-hot categories (not
    the treatment), fitted on the rows given. A text column without a usable vocabulary (absent,
    empty, or too few documents) is left out rather than failing."""

    def __init__(self, train: pd.DataFrame):
        # The contract's fields only (not the sides read from the text): the baselines as specified.
        # A whole optional column may be absent (CONTRACT.md): it counts as all missing.
        self.encoding = FeatureEncoding.fit(train, numeric=NUMERIC_FIELDS)
        self.vectorizers = {col: v for col in TEXT_COLUMNS if (v := _fit_vectorizer(train, col))}
        self.one_hot = OneHotEncoder(handle_unknown="ignore", dtype=np.float64)
        self.one_hot.fit(self.encoding.encode(train)["categorical"])

    def text(self, frame: pd.DataFrame) -> sparse.csr_matrix:
        blocks = [v.transform(_text(frame, col)) for col, v in self.vectorizers.items()]
        return sparse.hstack(blocks, format="csr") if blocks else sparse.csr_matrix((len(frame), 0))

    def __call__(self, frame: pd.DataFrame) -> sparse.csr_matrix:
        enc = self.encoding.encode(frame)
        blocks = [
            self.text(frame),
            sparse.csr_matrix(enc["numeric"]),
            sparse.csr_matrix(enc["numeric_missing"]),
            self.one_hot.transform(enc["categorical"]),
        ]
        return sparse.hstack(blocks, format="csr")


def t_learner(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame, seed: int) -> np.ndarray:
    """(N, 4): one logistic regression per arm on that arm's labeled rows."""
    features = TextFields(train)
    x_train, x_test = features(train), features(test)
    arm = treatment_index(train, "train")
    out = np.empty((len(test), len(TREATMENTS)))
    for t in range(len(TREATMENTS)):
        rows = arm == t
        if len(np.unique(y[rows])) < 2:  # no rows, or one class: nothing to separate
            out[:, t] = y[rows].mean() if rows.any() else y.mean()
            continue
        out[:, t] = logistic(seed).fit(x_train[rows], y[rows]).predict_proba(x_test)[:, 1]
    return out


def logistic(seed: int) -> LogisticRegression:
    # Strong-ish L2 (C=0.3): ~50k n-grams against a few thousand patients; on 8,000 synthetic
    # patients C in [0.3, 1] scores the same AUROC. saga converges ~5x faster than lbfgs here.
    return LogisticRegression(C=0.3, solver="saga", max_iter=1000, random_state=seed)


def s_learner(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame, seed: int) -> np.ndarray:
    """(N, 4): one boosted model with the treatment as a feature, asked once per arm."""
    features = TextFields(train)
    svd = _fit_svd(features.text(train), seed)
    # Shallow, shrunken trees with early stopping on an internal split: the usual tabular baseline,
    # and it does not overfit a few hundred patients.
    model = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=500,
        max_leaf_nodes=8,
        min_samples_leaf=20,
        l2_regularization=1.0,
        categorical_features=_tree_categorical_mask(features.encoding, svd),
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=20,
        random_state=seed,
    )
    arm = treatment_index(train, "train")
    # One OpenMP thread: with torch loaded in the same process (training, the tests), sklearn's
    # OpenMP pool stalled 8,000 rows from 0.3 s to 47 s on 2 shared cores; one thread is plenty
    # here.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(_tree_features(train, features, svd, arm), y)
        return np.stack(
            [
                model.predict_proba(_tree_features(test, features, svd, np.full(len(test), t)))[
                    :, 1
                ]
                for t in range(len(TREATMENTS))
            ],
            axis=1,
        )


BASELINES = {"t_learner": t_learner, "s_learner": s_learner}


def _tree_features(
    frame: pd.DataFrame, features: TextFields, svd: TruncatedSVD | None, arm: np.ndarray
) -> np.ndarray:
    """(B, numeric + svd + categorical + 1): numeric fields with NaN where missing, the text's SVD
    coordinates, category ids (0 = missing, a level of its own) and the treatment index."""
    enc = features.encoding.encode(frame)
    numeric = np.where(enc["numeric_missing"] > 0, np.nan, enc["numeric"])
    text = svd.transform(features.text(frame)) if svd else np.zeros((len(frame), 0))
    return np.hstack([numeric, text, enc["categorical"], arm[:, None]]).astype(np.float64)


def _tree_categorical_mask(encoding: FeatureEncoding, svd: TruncatedSVD | None) -> np.ndarray:
    dense = len(encoding.numeric) + (svd.n_components if svd else 0)
    return np.array([False] * dense + [True] * (len(encoding.categorical) + 1))


def _fit_svd(text: sparse.csr_matrix, seed: int) -> TruncatedSVD | None:
    """128 dimensions, or fewer when the vocabulary is smaller (tiny cohorts); None without text."""
    dim = min(SVD_DIM, text.shape[1] - 1, text.shape[0] - 1)
    return TruncatedSVD(n_components=dim, random_state=seed).fit(text) if dim >= 1 else None


def _fit_vectorizer(train: pd.DataFrame, col: str) -> TfidfVectorizer | None:
    # min_df drops typos and one-off numbers; sublinear tf keeps a repeated word from dominating.
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 3), min_df=2, max_features=50_000, sublinear_tf=True, dtype=np.float64
    )
    try:
        return vectorizer.fit(_text(train, col))
    except ValueError:  # empty vocabulary: no text in this column, or every term pruned
        return None


def _text(frame: pd.DataFrame, col: str) -> list[str]:
    if col not in frame.columns:
        return [""] * len(frame)
    return frame[col].astype(object).where(frame[col].notna(), "").tolist()


def treatment_index(frame: pd.DataFrame, name: str = "frame") -> np.ndarray:
    """(B,) index in TREATMENTS of each row's treatment; every row must record a known one, since
    the learners condition on it and the report scores the observed treatment's column."""
    if "treatment" not in frame.columns:
        raise ValueError(f"{name} must have a 'treatment' column (one of {', '.join(TREATMENTS)})")
    index = frame["treatment"].map(TREATMENT_INDEX)
    bad = index.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(
            f"{name}: 'treatment' must be one of {', '.join(TREATMENTS)} in every row; "
            f"{int(bad.sum())} rows are missing or unknown (first: row {row})"
        )
    return index.to_numpy(dtype=np.int64)

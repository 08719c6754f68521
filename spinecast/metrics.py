"""Every metric computed after training, in one place (numpy; torch-free).

The evaluation report, the export's accuracy guard, the benchmarks and the synthetic cohort's data
card call these. During training the LightningModule keeps torchmetrics' streaming classes (they
accumulate over batches and synchronise across devices); `tests/training/test_report.py` checks
that both give the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ECE_BINS = 15


def as_float(x) -> float | None:
    """A plain float for JSON, None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank-based (Mann-Whitney) AUROC, ties counted as half; None with a single class."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_classes(labels):
        return None
    ranks = pd.Series(np.asarray(scores, dtype=float)).rank(method="average").to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_auroc(p: np.ndarray) -> float:
    """AUROC of the true probabilities, in expectation over the label draw (the Bayes ceiling)."""
    p = np.sort(np.asarray(p, dtype=float))
    neg = 1.0 - p
    below = np.cumsum(neg) - neg  # expected negatives scored lower than each patient
    pairs = p.sum() * neg.sum() - (p * neg).sum()
    return float((p * below).sum() / pairs)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve as a step sum over distinct thresholds (sklearn's
    definition); None with a single class."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_classes(labels):
        return None
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s, y = np.asarray(scores, dtype=float)[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each tied run
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibration_error(
    predicted: np.ndarray, target: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """Expected calibration error: equal-width bins of the prediction, |mean predicted - mean
    target| weighted by the bin's share. `target` is the labels, or the true probabilities."""
    predicted, target = np.asarray(predicted, dtype=float), np.asarray(target, dtype=float)
    if len(predicted) == 0:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)  # a prediction on an edge goes to the bin above it
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, bins - 1)
    gap = sum(
        abs(predicted[which == b].mean() - target[which == b].mean()) * np.mean(which == b)
        for b in np.unique(which)
    )
    return as_float(gap)


def binary_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """AUROC, AUPRC, Brier score and 15-bin ECE; AUROC and AUPRC are None with a single class."""
    if len(y) == 0:
        return {"auroc": None, "auprc": None, "brier": None, "ece": None}
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    return {
        "auroc": auroc(p, y),
        "auprc": average_precision(p, y),
        "brier": as_float(np.mean((p - y) ** 2)),
        "ece": calibration_error(p, y),
    }


def observed_auroc(
    p_satisfied: np.ndarray, treatment_index: np.ndarray, satisfied: np.ndarray
) -> float | None:
    """AUROC of `satisfied` against P(satisfied) of the treatment each patient got (N, 4 columns);
    unlabeled rows (NaN) are left out."""
    satisfied = np.asarray(satisfied, dtype=float)
    labeled = ~np.isnan(satisfied)
    given = np.asarray(treatment_index)[labeled].astype(int)
    return auroc(p_satisfied[labeled][np.arange(len(given)), given], satisfied[labeled])

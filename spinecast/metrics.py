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


# ----------------------------------------------------------------------------- bootstrap
# A percentile bootstrap over patients, vectorised: resample b holds patient i `weights[b, i]`
# times, so every metric below is a weighted one computed for all resamples at once; with one row
# of ones it is the plain metric. A resample with a single class gives NaN for AUROC and AUPRC and
# is left out of their interval.

N_BOOT = 1000
DECISION_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) patient indices drawn with replacement; the same seed, the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resample_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n): how many times each patient appears in each of `resamples(n, n_boot, seed)`."""
    draws = resamples(n, n_boot, seed)
    offsets = (np.arange(n_boot) * n)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n)
    return counts.reshape(n_boot, n).astype(float)


def bootstrap_ci(
    statistic, *arrays: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> dict[str, float | None]:
    """The point estimate and percentile `level` interval of `statistic(*arrays, weights=W)`
    (one value per row of W) over `n_boot` resamples of the patients (the rows of the arrays).
    Resamples are scored in chunks of about two million patient-weights to bound memory."""
    arrays = tuple(np.asarray(a, dtype=float) for a in arrays)
    n = len(arrays[0])
    if n == 0:
        return {"value": None, "low": None, "high": None}
    value = statistic(*arrays, weights=np.ones((1, n)))[0]
    weights = resample_weights(n, n_boot, seed)
    step = max(1, 2_000_000 // n)
    draws = np.concatenate(
        [statistic(*arrays, weights=weights[i : i + step]) for i in range(0, n_boot, step)]
    )
    draws = draws[~np.isnan(draws)]
    if np.isnan(value) or len(draws) == 0:
        return {"value": as_float(value), "low": None, "high": None}
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return {"value": float(value), "low": float(low), "high": float(high)}


def _tie_groups(scores: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """The sort order and the start of each run of tied scores in it."""
    order = np.argsort(-scores if descending else scores, kind="stable")
    s = scores[order]
    return order, np.r_[0, np.flatnonzero(np.diff(s)) + 1]


def weighted_auroc(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each weight row (ties count half); NaN without both classes."""
    order, starts = _tie_groups(p, descending=False)
    w, pos = weights[:, order], y[order] > 0.5
    n_pos = np.add.reduceat(w * pos, starts, axis=1)  # (B, groups)
    n_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(n_neg, axis=1) - n_neg  # negatives scored strictly lower
    pairs = n_pos.sum(1) * n_neg.sum(1)
    wins = (n_pos * (below + 0.5 * n_neg)).sum(1)
    return np.divide(wins, pairs, out=np.full(len(w), np.nan), where=pairs > 0)


def weighted_average_precision(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`average_precision` of each weight row; NaN without both classes."""
    order, starts = _tie_groups(p, descending=True)
    w, pos = weights[:, order], y[order] > 0.5
    tp = np.cumsum(np.add.reduceat(w * pos, starts, axis=1), axis=1)  # (B, thresholds)
    seen = np.cumsum(np.add.reduceat(w, starts, axis=1), axis=1)
    total = tp[:, -1:]
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    recall = np.divide(tp, total, out=np.zeros_like(tp), where=total > 0)
    ap = np.sum(np.diff(recall, axis=1, prepend=0.0) * precision, axis=1)
    both = (total[:, 0] > 0) & (total[:, 0] < seen[:, -1])
    return np.where(both, ap, np.nan)


def weighted_brier(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights @ (p - y) ** 2 / weights.sum(1)


def weighted_calibration_error(
    p: np.ndarray, y: np.ndarray, weights: np.ndarray, bins: int = ECE_BINS
) -> np.ndarray:
    """`calibration_error` of each weight row: sum over bins of |sum p - sum y| / total weight."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    onehot = np.eye(bins)[which]  # (n, bins)
    gap = weights @ (onehot * (p - y)[:, None])  # (B, bins)
    return np.abs(gap).sum(1) / weights.sum(1)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def weighted_calibration_intercept(
    p: np.ndarray, y: np.ndarray, weights: np.ndarray, steps: int = 25
) -> np.ndarray:
    """Calibration in the large: `a` of logit P(y) = a + logit(p) (slope fixed at 1), by Newton's
    method on each weight row; 0 when the mean prediction is right, > 0 when it is too low."""
    x, a = _logit(p), np.zeros(len(weights))
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-(a[:, None] + x)))
        a = a + (weights * (y - mu)).sum(1) / np.maximum((weights * mu * (1 - mu)).sum(1), 1e-12)
    return a


def weighted_calibration_slope(
    p: np.ndarray, y: np.ndarray, weights: np.ndarray, steps: int = 25
) -> np.ndarray:
    """`b` of logit P(y) = a + b logit(p), by Newton's method on each weight row: 1 when the
    spread of the predictions is right, < 1 when they are too extreme (overfitting)."""
    x = _logit(p)
    a, b = np.zeros(len(weights)), np.ones(len(weights))
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-(a[:, None] + b[:, None] * x)))
        r, h = weights * (y - mu), weights * mu * (1 - mu)
        g0, g1 = r.sum(1), r @ x
        h00, h01, h11 = h.sum(1), h @ x, h @ x**2
        det = h00 * h11 - h01**2
        ok = det > 1e-12
        safe = np.where(ok, det, 1.0)
        a = np.where(ok, a + (h11 * g0 - h01 * g1) / safe, np.nan)
        b = np.where(ok, b + (h00 * g1 - h01 * g0) / safe, np.nan)
    return b


def net_benefit(
    p: np.ndarray, y: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS
) -> np.ndarray:
    """Net benefit of acting on everyone with p >= t, for each threshold t (Vickers & Elkin 2006):
    true positives / n - false positives / n * t / (1 - t)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    act = p[None, :] >= np.asarray(thresholds)[:, None]  # (T, n)
    tp, fp = (act & y).sum(1) / len(y), (act & ~y).sum(1) / len(y)
    return tp - fp * thresholds / (1 - thresholds)


def treat_all_net_benefit(
    y: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS
) -> np.ndarray:
    """Net benefit of acting on everyone: prevalence - (1 - prevalence) * t / (1 - t). Acting on
    no one has net benefit 0 at every threshold."""
    prevalence = float(np.mean(np.asarray(y, dtype=float)))
    return prevalence - (1 - prevalence) * thresholds / (1 - thresholds)


def weighted_net_benefit(
    p: np.ndarray, y: np.ndarray, weights: np.ndarray, threshold: float
) -> np.ndarray:
    """`net_benefit` at one threshold for each weight row."""
    act = (p >= threshold).astype(float)
    gain = act * (y - (1 - y) * threshold / (1 - threshold))
    return weights @ gain / weights.sum(1)


WEIGHTED = {
    "auroc": weighted_auroc,
    "auprc": weighted_average_precision,
    "brier": weighted_brier,
    "ece": weighted_calibration_error,
    "calibration_intercept": weighted_calibration_intercept,
    "calibration_slope": weighted_calibration_slope,
}


def binary_metrics_ci(
    p: np.ndarray, y: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, dict]:
    """Every metric of `WEIGHTED` with its bootstrap 95 % interval; the same resamples for each."""
    return {name: bootstrap_ci(f, p, y, n_boot=n_boot, seed=seed) for name, f in WEIGHTED.items()}

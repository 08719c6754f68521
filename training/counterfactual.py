"""Counterfactual evaluation of per-treatment predictions and of the treatments they recommend.

    from spinecast.training.counterfactual import truth_metrics, doubly_robust
    truth_metrics(true_p, best, observed, predicted, recommended, diagnosis)  # synthetic cohorts
    doubly_robust(test_df, {"model": recommended, ...}, predicted)           # any labeled cohort

A prediction of P(satisfied) under a treatment the patient did not get is a counterfactual claim, so
it is scored as one (STYLE.md, principle 14):

- with the truth (a synthetic cohort's `truth.parquet`): RMSE and calibration against the true
  P(satisfied) of every patient under every treatment, and the recommendations as a policy (its true
  value, the share of the oracle's gain it captures, unnecessary surgery, missed benefit);
- without it (a real site): doubly robust (AIPW) estimates. A four-class propensity model and a
  T-learner outcome model are cross-fitted on the evaluated cohort itself (each patient is scored
  by models that never saw them), and each patient's pseudo-outcome under treatment t is
  Γ_it = μ_it + 1[T_i = t] (y_i − μ_it) / e_it. The mean of Γ over a policy's choices estimates its
  value, consistent when either the propensity or the outcome model is right. Rows without a
  `satisfied` label are left out of every DR estimate (they have no y to correct μ with).

EconML's DRTester does the DR calibration/BLP part for categorical treatments, but it is not
installed and would pull a heavy dependency tree (and its own estimator conventions) into an
evaluation that needs ~20 lines of AIPW over four arms; the serving install must stay torch- and
econml-free, and this module is numpy + scikit-learn only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold
from spinecast.datasets.schema import DIAGNOSES, TREATMENT_INDEX, TREATMENTS

from spinecast.metrics import as_float, calibration_error

from .baselines import TextFields, logistic, t_learner, treatment_index

SURGICAL = tuple(TREATMENTS.index(t) for t in ("decompression", "fusion"))
NON_SURGICAL = tuple(
    TREATMENTS.index(t) for t in ("physical_therapy", "epidural_steroid_injection")
)
CONSERVATIVE = TREATMENTS.index("physical_therapy")
CALIBRATION_BINS = 10
PROPENSITY_CLIP = 0.01  # AIPW weights at most 100: one patient cannot carry the estimate
SUPPORT_FLOOR = 0.05
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ----------------------------------------------------------------------------- against the truth


def truth_metrics(
    true_p: np.ndarray,
    best: np.ndarray,
    observed: np.ndarray,
    predicted: np.ndarray,
    recommended: np.ndarray,
    diagnosis: np.ndarray | None = None,
) -> dict:
    """Flat scalars over ALL patients (labeled or not), plus `by_diagnosis` (a list of table rows)
    when `diagnosis` is given. `true_p`, `predicted`: (N, 4); `best`, `observed`, `recommended`:
    (N,) indices in TREATMENTS."""
    out: dict = {}
    for t, name in enumerate(TREATMENTS):
        out[f"cf_rmse_{name}"] = as_float(np.sqrt(np.mean((predicted[:, t] - true_p[:, t]) ** 2)))
        out[f"cf_ece_{name}"] = calibration_error(predicted[:, t], true_p[:, t], CALIBRATION_BINS)
    out["cf_rmse"] = as_float(np.mean([out[f"cf_rmse_{t}"] for t in TREATMENTS]))
    out["cf_ece"] = as_float(np.mean([out[f"cf_ece_{t}"] for t in TREATMENTS]))
    out.update(policy_truth(true_p, best, observed, recommended))
    if diagnosis is not None:
        out["by_diagnosis"] = by_diagnosis(diagnosis, predicted, recommended, true_p, best)
    return out


def policy_truth(
    true_p: np.ndarray, best: np.ndarray, observed: np.ndarray, recommended: np.ndarray
) -> dict:
    """A policy against the truth: its true value (mean true P(satisfied) of what it picks), the
    share of the oracle's gain over observed practice it captures
    ((V - V_obs) / (V_oracle - V_obs)), agreement with the oracle, surgery errors and shares, and
    the mixes."""
    rows = np.arange(len(true_p))
    value = true_p[rows, recommended].mean()
    oracle, usual = true_p[rows, best].mean(), true_p[rows, observed].mean()
    out = {
        "true_value": as_float(value),
        "oracle_value": as_float(oracle),
        "observed_value": as_float(usual),
        "policy_capture": as_float((value - usual) / (oracle - usual))
        if oracle - usual > 1e-12
        else None,
        "policy_agreement": as_float(np.mean(recommended == best)),
        **surgery_errors(true_p, recommended),
        "surgery_share": as_float(np.isin(recommended, SURGICAL).mean()),
        "oracle_surgery_share": as_float(np.isin(best, SURGICAL).mean()),
    }
    out |= {
        f"recommended_mix_{t}": as_float(np.mean(recommended == k))
        for k, t in enumerate(TREATMENTS)
    }
    out |= {f"oracle_mix_{t}": as_float(np.mean(best == k)) for k, t in enumerate(TREATMENTS)}
    return out


def surgery_errors(true_p: np.ndarray, recommended: np.ndarray) -> dict:
    """Shares of ALL patients: recommended surgery although the best non-surgical option is truly
    better (unnecessary), and recommended a non-surgical option although a surgery is truly better
    (missed benefit)."""
    rows = np.arange(len(true_p))
    got = true_p[rows, recommended]
    surgical = np.isin(recommended, SURGICAL)
    unnecessary = surgical & (got < true_p[:, NON_SURGICAL].max(axis=1))
    missed = ~surgical & (true_p[:, SURGICAL].max(axis=1) > got)
    return {
        "unnecessary_surgery": as_float(unnecessary.mean()),
        "missed_benefit": as_float(missed.mean()),
    }


def by_diagnosis(
    diagnosis: np.ndarray,
    predicted: np.ndarray,
    recommended: np.ndarray,
    true_p: np.ndarray | None = None,
    best: np.ndarray | None = None,
) -> list[dict]:
    """One row per contract diagnosis plus "missing": mean predicted (and true) P(satisfied) per
    treatment, recommended (and oracle) mix. Labels come from the contract, never from the data."""
    diagnosis = pd.Series(diagnosis, dtype=object)
    groups = [(d, (diagnosis == d).to_numpy(dtype=bool)) for d in DIAGNOSES]
    groups.append(("missing", diagnosis.isna().to_numpy()))
    table = []
    for label, member in groups:
        row = {
            "diagnosis": label,
            "n": int(member.sum()),
            "predicted": _means(predicted, member),
            "true": _means(true_p, member),
            "recommended_mix": _mix(recommended, member),
            "oracle_mix": _mix(best, member),
        }
        table.append(row)
    return table


def _means(p: np.ndarray | None, member: np.ndarray) -> dict | None:
    if p is None or not member.any():
        return None
    return {t: as_float(p[member, k].mean()) for k, t in enumerate(TREATMENTS)}


def _mix(choice: np.ndarray | None, member: np.ndarray) -> dict | None:
    if choice is None or not member.any():
        return None
    return {t: as_float(np.mean(choice[member] == k)) for k, t in enumerate(TREATMENTS)}


def aligned_truth(test: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) true P(satisfied) and (N,) best-treatment index, in the test rows' order (matched by
    patient_id, so the truth file's row order does not matter)."""
    columns = [f"p_satisfied_{t}" for t in TREATMENTS]
    aligned = truth.set_index("patient_id").reindex(test["patient_id"].astype(str))
    best = aligned["best_treatment"].map(TREATMENT_INDEX)
    lacking = aligned[columns].isna().any(axis=1).to_numpy() | best.isna().to_numpy()
    if lacking.any():
        raise ValueError(
            f"truth must have a row for every test patient (matched by patient_id); "
            f"{int(lacking.sum())} of {len(test)} are missing"
        )
    return aligned[columns].to_numpy(dtype=float), best.to_numpy(dtype=np.int64)


# ----------------------------------------------------------------------------- doubly robust


def cross_fit_propensity(frame: pd.DataFrame, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, 4) out-of-fold P(treatment | chart) from a multinomial logistic regression on the
    T-learner's text + fields features. An arm absent from a fold's training rows gets 0 there;
    every other arm is clipped to [PROPENSITY_CLIP, 1]. Needs no labels."""
    observed = treatment_index(frame, "cohort")
    out = np.zeros((len(frame), len(TREATMENTS)))
    for fit_rows, score_rows in _folds(len(frame), folds, seed):
        part = frame.iloc[fit_rows]
        classes = np.unique(observed[fit_rows])
        if len(classes) == 1:  # one arm only: it is certain
            out[np.ix_(score_rows, classes)] = 1.0
            continue
        features = TextFields(part)
        model = logistic(seed)  # saga, multinomial for 4 classes; lbfgs was ~5x slower here
        model.fit(features(part), observed[fit_rows])
        out[np.ix_(score_rows, model.classes_)] = model.predict_proba(
            features(frame.iloc[score_rows])
        )
    present = np.isin(np.arange(len(TREATMENTS)), np.unique(observed))
    out[:, present] = np.clip(out[:, present], PROPENSITY_CLIP, 1.0)
    return out


def cross_fit_outcomes(frame: pd.DataFrame, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, 4) out-of-fold T-learner P(satisfied): the DR outcome model, fitted on the labeled rows
    of the other folds; every row (labeled or not) gets a prediction."""
    labeled = frame["satisfied"].notna().to_numpy()
    out = np.zeros((len(frame), len(TREATMENTS)))
    for fit_rows, score_rows in _folds(len(frame), folds, seed):
        fit_rows = fit_rows[labeled[fit_rows]]
        part = frame.iloc[fit_rows].reset_index(drop=True)
        y = part["satisfied"].astype(bool).to_numpy()
        if len(y) == 0:
            out[score_rows] = 0.5
            continue
        out[score_rows] = t_learner(part, y, frame.iloc[score_rows], seed)
    return out


def _folds(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folds = max(2, min(folds, n))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)))


def dr_scores(
    y: np.ndarray, observed: np.ndarray, propensity: np.ndarray, mu: np.ndarray
) -> np.ndarray:
    """(N, 4) AIPW pseudo-outcomes Γ_it = μ_it + 1[T_i = t] (y_i − μ_it) / e_it. An arm nobody
    received has e = 0 and no correction term (its Γ is μ alone: an extrapolation)."""
    received = observed[:, None] == np.arange(mu.shape[1])[None, :]  # (N, 4)
    residual = np.asarray(y, dtype=float)[:, None] - mu
    weight = np.divide(received, propensity, out=np.zeros_like(mu), where=received)
    return mu + weight * residual


def policy_value(scores: np.ndarray, policy: np.ndarray) -> float:
    """DR estimate of the mean outcome when each patient gets `policy`'s treatment."""
    return float(scores[np.arange(len(scores)), policy].mean())


def bootstrap_ci(
    scores: np.ndarray, policy: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the policy value over `n_boot` resamples of the patients. The same
    seed draws the same resamples for every policy, so intervals of two policies are paired."""
    values = scores[np.arange(len(scores)), policy]
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def doubly_robust(
    frame: pd.DataFrame,
    policies: dict[str, np.ndarray],
    predicted: np.ndarray | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    floor: float = SUPPORT_FLOOR,
) -> dict:
    """DR value with a bootstrap 95 % interval of each policy ((N,) treatment indices), overlap
    diagnostics and, given the (N, 4) predictions behind them, the calibration of predicted benefit
    over physical therapy. A policy that sends anyone to an arm no labeled patient received gets
    no value (None) and a `reason`: its estimate would be the outcome model's guess alone."""
    observed = treatment_index(frame, "test")
    labeled = frame["satisfied"].notna().to_numpy()
    if labeled.sum() < 2:
        return {
            "skipped": (
                f"DR estimates need labeled rows; {int(labeled.sum())} have a `satisfied` label"
            )
        }
    propensity = cross_fit_propensity(frame, folds, seed)
    mu = cross_fit_outcomes(frame, folds, seed)
    y = frame["satisfied"][labeled].astype(bool).to_numpy(dtype=float)
    scores = dr_scores(y, observed[labeled], propensity[labeled], mu[labeled])  # (n_labeled, 4)
    counts = np.bincount(observed[labeled], minlength=len(TREATMENTS))
    result = {
        "labeled": int(labeled.sum()),
        "folds": len(_folds(len(frame), folds, seed)),
        "bootstrap": n_boot,
        "received_labeled": {t: int(c) for t, c in zip(TREATMENTS, counts)},
        "values": {
            name: _policy_estimate(scores, p[labeled], counts, n_boot, seed)
            for name, p in policies.items()
        },
        "overlap": overlap(propensity, observed, policies, floor),
    }
    if predicted is not None:
        result["benefit_calibration"] = benefit_calibration(predicted[labeled], scores, counts)
    return result


def _policy_estimate(
    scores: np.ndarray, policy: np.ndarray, counts: np.ndarray, n_boot: int, seed: int
) -> dict:
    lacking = [t for t in np.unique(policy) if counts[t] == 0]
    if lacking:
        share = np.isin(policy, lacking).mean()
        names = ", ".join(TREATMENTS[t] for t in lacking)
        return {
            "value": None,
            "low": None,
            "high": None,
            "reason": (
                f"recommends {names} to {share:.0%} of patients, but no labeled patient in this "
                "cohort received it: nothing to correct the outcome model with"
            ),
        }
    low, high = bootstrap_ci(scores, policy, n_boot, seed)
    return {"value": policy_value(scores, policy), "low": low, "high": high, "reason": None}


def overlap(
    propensity: np.ndarray,
    observed: np.ndarray,
    policies: dict[str, np.ndarray],
    floor: float = SUPPORT_FLOOR,
    bins: int = 20,
) -> dict:
    """Per treatment: how many received it, quantiles of its propensity over all patients and a
    histogram among those who did and did not receive it (the overlap plot, aggregates only); per
    policy: the share of patients whose recommended treatment has propensity below `floor`."""
    rows, edges = np.arange(len(propensity)), np.linspace(0, 1, bins + 1)
    per_treatment = {}
    for k, t in enumerate(TREATMENTS):
        e, got = propensity[:, k], observed == k
        per_treatment[t] = {
            "received": int(got.sum()),
            "quantiles": {f"q{round(q * 100):02d}": as_float(np.quantile(e, q)) for q in QUANTILES},
            "histogram_received": np.histogram(e[got], edges)[0].tolist(),
            "histogram_others": np.histogram(e[~got], edges)[0].tolist(),
        }
    return {
        "floor": floor,
        "edges": edges.tolist(),
        "treatments": per_treatment,
        "unsupported": [t for t, v in per_treatment.items() if v["received"] == 0],
        "low_support_share": {
            name: as_float(np.mean(propensity[rows, p] < floor)) for name, p in policies.items()
        },
    }


def benefit_calibration(
    predicted: np.ndarray, scores: np.ndarray, counts: np.ndarray, bins: int = 5
) -> dict:
    """For each treatment vs physical therapy: patients in quintiles of predicted benefit
    (p_t - p_PT), mean predicted vs mean DR benefit (Γ_t - Γ_PT) per quintile, and the BLP-style
    slope of DR benefit on predicted benefit (1 = the predicted differences are right in size,
    0 = they carry no information about who benefits)."""
    out = {}
    for t in range(len(TREATMENTS)):
        if t == CONSERVATIVE:
            continue
        missing = [TREATMENTS[k] for k in (t, CONSERVATIVE) if counts[k] == 0]
        if missing:
            out[TREATMENTS[t]] = {"reason": f"no labeled patient received {' or '.join(missing)}"}
            continue
        b, d = predicted[:, t] - predicted[:, CONSERVATIVE], scores[:, t] - scores[:, CONSERVATIVE]
        groups = [g for g in np.array_split(np.argsort(b, kind="stable"), bins) if len(g)]
        table = [
            {"n": len(g), "predicted": as_float(b[g].mean()), "dr": as_float(d[g].mean())}
            for g in groups
        ]
        out[TREATMENTS[t]] = {"bins": table, "predicted_mean": as_float(b.mean()), **_blp(b, d)}
    return out


def _blp(b: np.ndarray, d: np.ndarray) -> dict:
    """OLS of d on (b - mean b) with an intercept: intercept = the DR average benefit, slope with
    its heteroskedasticity-robust (HC0) standard error. No slope when the predictions are
    constant."""
    centered = b - b.mean()
    ss = float((centered**2).sum())
    if ss < 1e-12:
        return {"dr_mean": as_float(d.mean()), "slope": None, "slope_se": None}
    slope = float((centered * d).sum() / ss)
    residual = d - d.mean() - slope * centered
    se = float(np.sqrt((centered**2 * residual**2).sum()) / ss)
    return {"dr_mean": as_float(d.mean()), "slope": slope, "slope_se": se}

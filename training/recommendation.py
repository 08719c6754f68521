"""The recommendation part of the evaluation report: the model's rule, its argmax and the baselines'
argmax as treatment policies, scored against the truth where it exists and by doubly robust
estimates always (training/counterfactual.py holds the estimators).

    from spinecast.training.recommendation import evaluate_recommendations
    flat, section = evaluate_recommendations(test_df, outcomes, baselines, truth_df, DecisionRule())

`flat` holds `test/<name>` scalars for the model and `test/<baseline>/<name>` for each baseline (the
same names, so every run reads the same way); `section` holds the tables behind the report's
recommendation sections and plots. Aggregates only: no patient id, no note or report text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.schema import TREATMENTS

from .baselines import treatment_index
from .counterfactual import (
    aligned_truth,
    as_float,
    by_diagnosis,
    doubly_robust,
    policy_truth,
    truth_metrics,
)
from .plots import plot_counterfactual, plot_mix_by_diagnosis, plot_propensity

# policy name -> label in the tables; predictive policies first, then the fixed references
LABELS = {
    "model": "model: decision rule",
    "model_argmax": "model: argmax",
    "t_learner": "T-learner (argmax)",
    "s_learner": "S-learner (argmax)",
    "oracle": "oracle: `best_treatment`",
    "observed": "observed practice",
    "always_physical_therapy": "always physical therapy",
}
POLICY_KEYS = (
    "policy_capture",
    "policy_agreement",
    "unnecessary_surgery",
    "missed_benefit",
    "surgery_share",
    "oracle_surgery_share",
)
HEADS_KEYS = ("p_satisfied_heads", "p_satisfied_members")  # the ensemble's samples, either name
CF_KEYS = (
    "cf_rmse",
    *(f"cf_rmse_{t}" for t in TREATMENTS),
    "cf_ece",
    *(f"cf_ece_{t}" for t in TREATMENTS),
)


def evaluate_recommendations(
    test: pd.DataFrame,
    outcomes: dict[str, np.ndarray],
    baselines: dict[str, np.ndarray] | None = None,
    truth: pd.DataFrame | None = None,
    rule: DecisionRule | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
    folds: int = 5,
) -> tuple[dict, dict]:
    """-> (flat `test/...` scalars, the `recommendation` section). `outcomes` may hold
    `p_satisfied_heads` (or `p_satisfied_members`) (N, K, 4) and `propensity` (N, 4) for the rule;
    without them the rule runs on the point estimates with every treatment counted as supported."""
    rule, baselines = rule or DecisionRule(), baselines or {}
    observed = treatment_index(test, "test")
    p = np.asarray(outcomes["p_satisfied"], dtype=float)
    decision = decide(member_samples(outcomes), outcomes.get("propensity"), rule)
    predictions = {"model": p, "model_argmax": p, **baselines}
    policies = {
        "model": decision.recommended,
        "model_argmax": decision.argmax,
        **{k: np.asarray(v).argmax(axis=1) for k, v in baselines.items()},
        "observed": observed,
        "always_physical_therapy": np.zeros(len(test), dtype=np.int64),
    }
    diagnosis = (
        test["diagnosis"].to_numpy(dtype=object)
        if "diagnosis" in test
        else np.full(len(test), None)
    )
    blocked = ~decision.supported[
        np.arange(len(p)), decision.argmax
    ]  # the floor overrode the argmax
    section: dict = {
        "rule": rule.to_dict(),
        "argmax_unsupported_share": as_float(blocked.mean()),
        "unsupported": [t for k, t in enumerate(TREATMENTS) if not (observed == k).any()],
    }
    rows = _truth_rows(test, truth, policies, predictions, observed, section, diagnosis, decision)
    section["dr"] = doubly_robust(
        test, policies, p, folds=folds, seed=seed, n_boot=n_boot, floor=rule.support_floor
    )
    for name, row in rows.items():
        row["mix"] = {t: as_float(np.mean(policies[name] == k)) for k, t in enumerate(TREATMENTS)}
        row |= _dr_row(section["dr"], name)
    section["policies"] = {name: rows[name] for name in LABELS if name in rows}
    return _flat(section["policies"], baselines), section


def _truth_rows(test, truth, policies, predictions, observed, section, diagnosis, decision):
    """Each policy's row of truth metrics (empty without a truth file, where the oracle is
    unknown) and the per-diagnosis table into `section`."""
    p = predictions["model"]
    if truth is None:
        section["by_diagnosis"] = by_diagnosis(diagnosis, p, decision.recommended)
        return {name: {} for name in policies}
    true_p, best = aligned_truth(test, truth)
    policies["oracle"] = best
    section["by_diagnosis"] = by_diagnosis(diagnosis, p, decision.recommended, true_p, best)
    return {
        name: truth_metrics(true_p, best, observed, predictions[name], choice)
        if name in predictions
        else policy_truth(true_p, best, observed, choice)
        for name, choice in policies.items()
    }


def member_samples(outcomes: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K, 4) P(satisfied) of the model's K ensemble members; K = 1 (the point estimate) when
    the predictions carry none."""
    for key in HEADS_KEYS:
        if outcomes.get(key) is not None:
            return np.asarray(outcomes[key], dtype=float)
    return np.asarray(outcomes["p_satisfied"], dtype=float)[:, None, :]


def _dr_row(dr: dict, name: str) -> dict:
    if "skipped" in dr:
        return {}
    value = dr["values"][name]
    return {
        "dr_value": value["value"],
        "dr_low": value["low"],
        "dr_high": value["high"],
        "dr_reason": value["reason"],
        "low_support_share": dr["overlap"]["low_support_share"][name],
    }


def _flat(rows: dict, baselines: dict) -> dict:
    """The acceptance keys: `test/<name>` for the model's rule and `test/<baseline>/<name>` for each
    baseline's argmax (for a baseline `policy_capture_argmax` is its `policy_capture`); plus the
    model's argmax (`test/<name>_argmax`) and the reference policies' true and DR values."""
    out = {}
    for name, prefix in [("model", "test/"), *((b, f"test/{b}/") for b in baselines)]:
        row = rows[name]
        out |= {
            prefix + k: row[k] for k in (*POLICY_KEYS, *CF_KEYS, "low_support_share") if k in row
        }
        if "policy_capture" in row:
            out[prefix + "policy_capture_argmax"] = rows[
                "model_argmax" if name == "model" else name
            ]["policy_capture"]
        out |= {prefix + k: v for k, v in _values(row, "model").items()}
    argmax = rows["model_argmax"]
    out |= {
        f"test/{k}_argmax": argmax[k]
        for k in POLICY_KEYS[1:5] + ("low_support_share",)
        if k in argmax
    }
    for name, tag in (
        ("model_argmax", "argmax"),
        ("observed", "observed"),
        ("always_physical_therapy", "always_physical_therapy"),
        ("oracle", "oracle"),
    ):
        out |= {f"test/{k}": v for k, v in _values(rows.get(name, {}), tag).items()}
    return out


def _values(row: dict, tag: str) -> dict:
    """true_value_<tag>, dr_value_<tag>, dr_value_<tag>_low, dr_value_<tag>_high, where known."""
    names = {
        "true_value": f"true_value_{tag}",
        "dr_value": f"dr_value_{tag}",
        "dr_low": f"dr_value_{tag}_low",
        "dr_high": f"dr_value_{tag}_high",
    }
    return {new: row[old] for old, new in names.items() if old in row}


# ----------------------------------------------------------------------------- plots


def write_plots(
    out: Path,
    section: dict,
    test: pd.DataFrame,
    p_satisfied: np.ndarray,
    truth: pd.DataFrame | None,
) -> None:
    """counterfactual.png (with a truth file), mix_by_diagnosis.png, propensity.png (with DR)."""
    if truth is not None:
        plot_counterfactual(out / "counterfactual.png", p_satisfied, aligned_truth(test, truth)[0])
    plot_mix_by_diagnosis(out / "mix_by_diagnosis.png", section["by_diagnosis"])
    if "overlap" in section["dr"]:
        plot_propensity(out / "propensity.png", section["dr"]["overlap"])


# ----------------------------------------------------------------------------- markdown

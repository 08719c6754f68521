"""The evaluation report: how well the model predicts satisfaction and how good its recommendations
are, against the ceiling and the counterfactual baselines.

    from spinecast.training.report import evaluate_predictions, write_report
    metrics = evaluate_predictions(test_df, outcomes, ablations=abl, baselines=base, truth=truth_df,
                                   rule=DecisionRule())
    write_report("runs/eval", metrics, test_df, outcomes, baselines=base, truth=truth_df)

`outcomes` holds the model's (N, 4) predictions for every test row under every treatment (columns in
TREATMENTS order), optionally `p_satisfied_heads` (N, K, 4) and `propensity` (N, 4) for the decision
rule; each baseline is (N, 4) too. Labels exist only for the treatment each patient got, so label
metrics (AUROC, ECE, ...) score the observed-treatment column. The recommendations are scored as
treatment policies by training/recommendation.py: against the synthetic cohort's `truth.parquet`
(every patient's true P(satisfied) under all four treatments, which also gives the Bayes ceiling)
where it exists, and by doubly robust estimates on any labeled cohort.

The report holds only aggregate numbers and contract category names: never note or report text,
never a patient id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from spinecast.datasets import mcid
from spinecast.datasets.decision import DecisionRule
from spinecast.datasets.inputs import MODALITIES, OUTCOMES
from spinecast.datasets.schema import COLUMN_BY_NAME, DIAGNOSES, TREATMENTS

from spinecast.metrics import as_float, binary_metrics, expected_auroc
from spinecast.metrics import auroc as _auroc

from .baselines import treatment_index
from .counterfactual import aligned_truth
from .markdown import render_markdown
from .plots import plot_reliability, plot_roc
from .recommendation import (
    HEADS_KEYS,
    evaluate_recommendations,
    write_plots,
)

AGE_BANDS = ((18, 40, "<40"), (40, 60, "40-59"), (60, 75, "60-74"), (75, 200, "75+"))


# ----------------------------------------------------------------------------- metrics


def evaluate_predictions(
    test: pd.DataFrame,
    outcomes: dict[str, np.ndarray],
    *,
    ablations: dict[str, np.ndarray] | None = None,
    baselines: dict[str, np.ndarray] | None = None,
    truth: pd.DataFrame | None = None,
    rule: DecisionRule | None = None,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict:
    """Flat `test/<name>` scalars plus the nested sections counts, ablation, subgroups, baselines,
    recommendation. Rows without a `satisfied` label are left out of every label metric and of the
    doubly robust estimates; truth-based metrics cover every row."""
    _check_predictions(test, outcomes, ablations, baselines)
    observed = treatment_index(test, "test")
    p = outcomes["p_satisfied"][np.arange(len(test)), observed]
    labeled = test["satisfied"].notna().to_numpy()
    y = test["satisfied"][labeled].astype(bool).to_numpy()
    model = binary_metrics(p[labeled], y)
    metrics: dict = {f"test/{k}": v for k, v in model.items()}
    metrics["counts"] = {
        "patients": len(test),
        "labeled": int(labeled.sum()),
        "satisfied_rate": as_float(y.mean()) if len(y) else None,
    }
    metrics.update(_secondary_outcomes(test, outcomes, observed))
    if ablations:
        metrics["ablation"] = _ablation(model["auroc"], ablations, observed, labeled, y)
        for name, row in metrics["ablation"].items():
            metrics[f"test/auroc_without_{name}"] = row["auroc"]
            metrics[f"test/auroc_drop_{name}"] = row["drop"]
    metrics["subgroups"] = _subgroups(test, p, labeled)
    if baselines:
        metrics["baselines"] = {"model": model}
        for name, scores in baselines.items():
            on_observed = np.asarray(scores, float)[np.arange(len(test)), observed]
            metrics["baselines"][name] = binary_metrics(on_observed[labeled], y)
            metrics.update({f"test/{name}/{k}": v for k, v in metrics["baselines"][name].items()})
    if truth is not None:
        metrics.update(_bayes_ceiling(test, truth, observed, labeled, y, model["auroc"]))
    flat, metrics["recommendation"] = evaluate_recommendations(
        test, outcomes, baselines, truth, rule, seed=seed, n_boot=n_boot
    )
    metrics.update(flat)
    return metrics


def _secondary_outcomes(test: pd.DataFrame, outcomes: dict, observed: np.ndarray) -> dict:
    """MCID AUROC where the label is defined, ODI RMSE where odi_12m was measured."""
    rows, out = np.arange(len(test)), {}
    if "p_mcid" in outcomes and {"baseline_odi", "odi_12m"} <= set(test.columns):
        label = mcid(test)
        defined = label.notna().to_numpy()
        y = label[defined].astype(bool).to_numpy()
        out["test/mcid_auroc"] = _auroc(outcomes["p_mcid"][rows, observed][defined], y)
        out["test/mcid_n"] = int(defined.sum())
    if "odi_12m" in outcomes and "odi_12m" in test.columns:
        actual = test["odi_12m"].astype(float).to_numpy()
        present = ~np.isnan(actual)
        error = outcomes["odi_12m"][rows, observed][present] - actual[present]
        out["test/odi_rmse"] = as_float(np.sqrt(np.mean(error**2))) if present.any() else None
        out["test/odi_n"] = int(present.sum())
    return out


def _ablation(
    full: float | None, ablations: dict, observed: np.ndarray, labeled: np.ndarray, y: np.ndarray
) -> dict:
    """AUROC with each modality removed, and how much it fell (positive = the modality helps)."""
    rows, out = np.arange(len(observed)), {}
    for name, p in ablations.items():
        score = _auroc(p[rows, observed][labeled], y)
        drop = None if full is None or score is None else full - score
        out[name] = {"auroc": score, "drop": drop}
    return out


def subgroup_masks(test: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(field, group, row mask) of every reported subgroup: sex, age band, diagnosis (and its
    absence), treatment given. Values come from the contract's category lists, never the data."""
    age = test["age"].astype(float).to_numpy()
    groups = [("sex", v, _equals(test, "sex", v)) for v in COLUMN_BY_NAME["sex"].categories]
    groups += [("age", label, (age >= lo) & (age < hi)) for lo, hi, label in AGE_BANDS]
    groups += [("diagnosis", v, _equals(test, "diagnosis", v)) for v in DIAGNOSES]
    groups.append(("diagnosis", "missing", _missing(test, "diagnosis")))
    groups += [("treatment", t, _equals(test, "treatment", t)) for t in TREATMENTS]
    return groups


def _subgroups(test: pd.DataFrame, p: np.ndarray, labeled: np.ndarray) -> list[dict]:
    """One row per subgroup with its labeled-row count n, AUROC (None with a single class) and
    satisfied rate."""
    satisfied = test["satisfied"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    rows = []
    for field, value, member in subgroup_masks(test):
        keep = member & labeled
        y = satisfied[keep]
        rate = as_float(y.mean()) if keep.any() else None
        rows.append(
            {
                "field": field,
                "value": value,
                "n": int(keep.sum()),
                "auroc": _auroc(p[keep], y),
                "satisfied_rate": rate,
            }
        )
    return rows


def _bayes_ceiling(
    test: pd.DataFrame,
    truth: pd.DataFrame,
    observed: np.ndarray,
    labeled: np.ndarray,
    y: np.ndarray,
    model_auroc: float | None,
) -> dict:
    """The Bayes AUROC: the true probabilities scored on the same labeled rows."""
    true_p, _ = aligned_truth(test, truth)
    p_given = true_p[np.arange(len(test)), observed][labeled]  # (n_labeled,)
    both = 0 < y.sum() < len(y)
    bayes = expected_auroc(p_given) if both else None
    on_labels = _auroc(p_given, y) if both else None
    return {
        "test/bayes_auroc": bayes,
        "test/bayes_auroc_on_labels": on_labels,
        "test/bayes_auroc_gap": _minus(bayes, model_auroc),
        # On few rows the drawn labels move the ceiling; the true probabilities score exactly
        # `on_labels` on them, so this gap is 0 for a perfect model.
        "test/bayes_auroc_gap_on_labels": _minus(on_labels, model_auroc),
    }


def _check_predictions(
    test: pd.DataFrame, outcomes: dict, ablations: dict | None, baselines: dict | None
) -> None:
    """Say which array is wrong and what was expected; probabilities must lie in [0, 1]."""
    shape = (len(test), len(TREATMENTS))
    if "p_satisfied" not in outcomes:
        raise ValueError(f"outcomes must contain 'p_satisfied'; got keys {sorted(outcomes)}")
    unknown = sorted(set(ablations or {}) - set(MODALITIES))
    if unknown:
        raise ValueError(
            f"ablations: unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}"
        )
    # label -> (array, expected shape, is a probability)
    arrays = {
        f"outcomes[{k!r}]": (outcomes[k], shape, k != "odi_12m") for k in OUTCOMES if k in outcomes
    }
    arrays.update({f"ablations[{k!r}]": (v, shape, True) for k, v in (ablations or {}).items()})
    arrays.update({f"baselines[{k!r}]": (v, shape, True) for k, v in (baselines or {}).items()})
    if outcomes.get("propensity") is not None:
        arrays["outcomes['propensity']"] = (outcomes["propensity"], shape, True)
    for key in HEADS_KEYS:
        if outcomes.get(key) is not None:
            heads = np.asarray(outcomes[key])
            members = heads.shape[1] if heads.ndim == 3 else "K"
            arrays[f"outcomes[{key!r}]"] = (heads, (len(test), members, len(TREATMENTS)), True)
    for label, (value, expected, probability) in arrays.items():
        value = np.asarray(value, dtype=float)
        if value.shape != expected:
            raise ValueError(
                f"{label} must have shape {expected} (rows aligned with test, "
                f"columns in TREATMENTS order); got {value.shape}"
            )
        if not np.isfinite(value).all():
            raise ValueError(
                f"{label} must be finite; got {int((~np.isfinite(value)).sum())} "
                "NaN or infinite values"
            )
        if probability and ((value < 0) | (value > 1)).any():
            raise ValueError(
                f"{label} must hold probabilities in [0, 1]; got values in "
                f"[{value.min():.3g}, {value.max():.3g}]"
            )


def _equals(frame: pd.DataFrame, column: str, value: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return (frame[column] == value).fillna(False).to_numpy(dtype=bool)


def _missing(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    return frame[column].isna().to_numpy()


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# ----------------------------------------------------------------------------- files


def write_report(
    out_dir,
    metrics: dict,
    test: pd.DataFrame,
    outcomes: dict[str, np.ndarray],
    baselines: dict[str, np.ndarray] | None = None,
    truth: pd.DataFrame | None = None,
) -> None:
    """Write report.md, metrics.json, roc.png and calibration.png (model and baselines, observed
    arm), mix_by_diagnosis.png, propensity.png (with DR estimates) and counterfactual.png (with a
    truth file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    observed = treatment_index(test, "test")
    labeled = test["satisfied"].notna().to_numpy()
    y = test["satisfied"][labeled].astype(bool).to_numpy()
    scores = {"model": outcomes["p_satisfied"][np.arange(len(test)), observed][labeled]}
    scores.update(
        {
            k: np.asarray(v, float)[np.arange(len(test)), observed][labeled]
            for k, v in (baselines or {}).items()
        }
    )
    plot_roc(out / "roc.png", y, scores)
    plot_reliability(out / "calibration.png", y, scores)
    if "recommendation" in metrics:
        write_plots(out, metrics["recommendation"], test, outcomes["p_satisfied"], truth)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(metrics))

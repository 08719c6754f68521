"""How close to the Bayes AUROC can any model trained on 8,000 synthetic patients get?

    .venv/bin/python benchmarks/ceiling.py [--seed 0]

Gradient-boosting fits (scikit-learn, same 8,000 / 2,000 split, same labels) on two feature sets
bracket what the accuracy targets ask of the multimodal model:
- `full_state`: every hidden-state variable, as if the chart held everything without noise;
- `chart_facts`: what the chart holds, with perfect reading of the text: the structured fields as
  charted (missing values included), an indicator for each outcome-relevant fact the note or report
  in the cohort states, and concordance where both the leg side and the compressed side are stated.
Two gradient-boosting learners on each: one fit with the treatment as a feature (an S-learner, keys
`gradient_boosting_*`) and one fit per treatment (a T-learner, keys `t_learner_*`). Reported: the
test AUROC on the treatment each patient got, the RMSE of its
P(satisfied) under every treatment against the truth (`cf_rmse`, the mean over treatments, as
issue 14 scores the model), and for recommending its best treatment (argmax) and for the decision
rule on its point estimates (`rule/`, the default margins): the share of the oracle's gain over the
observed treatments captured, unnecessary surgery and the surgery share (beside the oracle's).
Writes benchmarks/results/ceiling.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth.card import FACTS
from spinecast.datasets.synth.cohort import (
    NOTE_MISSING,
    REPORT_MISSING,
    _drop,
    _rng,
    structured_view,
)
from spinecast.datasets.synth.outcomes import observe, potential_outcomes
from spinecast.datasets.synth.state import sample_state
from spinecast.datasets.synth.text import write_note, write_report
from spinecast.training.counterfactual import policy_truth
from threadpoolctl import threadpool_limits

from spinecast.metrics import auroc as score_auroc
from spinecast.metrics import expected_auroc

RESULTS = Path(__file__).parent / "results" / "ceiling.json"
N, N_TRAIN = 10_000, 8_000


def chart_facts(state: pd.DataFrame, cohort: pd.DataFrame, seed: int, rng) -> pd.DataFrame:
    records = state.to_dict("records")
    notes = [write_note(r, _rng(seed, i, 1)) for i, r in enumerate(records)]
    reports = [write_report(r, _rng(seed, i, 2)) for i, r in enumerate(records)]
    note_ok = _drop([t for t, _ in notes], NOTE_MISSING, rng).notna().to_numpy()
    report_ok = _drop([t for t, _ in reports], REPORT_MISSING, rng).notna().to_numpy()
    facts = pd.DataFrame(0.0, index=state.index, columns=[f"fact_{k}" for k in FACTS])
    for i, ((_, in_note), (_, in_report)) in enumerate(zip(notes, reports)):
        for fact in (in_note if note_ok[i] else []) + (in_report if report_ok[i] else []):
            facts.loc[i, f"fact_{fact}"] = 1.0
    both_sides = facts["fact_leg_side"] * facts["fact_compression_side"]
    facts["concordant_stated"] = both_sides * state["concordant"].to_numpy()
    structured = cohort.drop(
        columns=[
            "patient_id",
            "clinical_note",
            "imaging_report",
            "mri_image",
            "satisfied",
            "odi_12m",
            "treatment",
        ]
    )
    flags = {
        c: float
        for c in (
            "diabetes",
            "depression",
            "anxiety",
            "workers_comp",
            "opioid_use",
            "prior_spine_surgery",
        )
    }
    return pd.concat(
        [pd.get_dummies(structured.astype(flags), dtype=float, dummy_na=True).astype(float), facts],
        axis=1,
    )


def _booster() -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_leaf_nodes=15, learning_rate=0.05, max_iter=800, early_stopping=True, random_state=0
    )


def s_learner(x: pd.DataFrame, treatment: pd.Series, y: np.ndarray) -> np.ndarray:
    """One fit with the treatment as a feature -> (test patients, 4) P(satisfied)."""
    arms = pd.get_dummies(pd.Categorical(treatment, categories=TREATMENTS), dtype=float)
    arms = arms.set_axis(x.index)
    model = _booster().fit(pd.concat([x, arms], axis=1).iloc[:N_TRAIN], y[:N_TRAIN])
    test = x.iloc[N_TRAIN:]
    return np.stack(
        [
            model.predict_proba(test.assign(**{a: float(a == t) for a in TREATMENTS}))[:, 1]
            for t in TREATMENTS
        ],
        axis=1,
    )


def t_learner(x: pd.DataFrame, treatment: pd.Series, y: np.ndarray) -> np.ndarray:
    """One fit per treatment, on the patients who got it -> (test patients, 4) P(satisfied)."""
    train, got = x.iloc[:N_TRAIN], treatment.to_numpy()[:N_TRAIN]
    return np.stack(
        [
            _booster().fit(train[got == t], y[:N_TRAIN][got == t]).predict_proba(x.iloc[N_TRAIN:])
            for t in TREATMENTS
        ],
        axis=2,
    )[:, 1]


def fit(learner, x: pd.DataFrame, treatment: pd.Series, y, true_p, given) -> dict:
    """One learner's test AUROC (on the treatment each patient got), cf_rmse, and its
    recommendations against the truth: the argmax, and the decision rule on point estimates."""
    with threadpool_limits(1):
        under = learner(x, treatment, y)
    rows = np.arange(len(under))
    out = {
        "auroc": round(float(score_auroc(under[rows, given], y[N_TRAIN:])), 4),
        "cf_rmse": round(float(np.sqrt(((under - true_p) ** 2).mean(axis=0)).mean()), 4),
    }
    best = true_p.argmax(axis=1)
    rule = decide(under[:, None, :], None, DecisionRule()).recommended
    for tag, chosen in (("", under.argmax(axis=1)), ("rule/", rule)):
        scored = policy_truth(true_p, best, given, chosen)
        for key in ("policy_capture", "unnecessary_surgery", "surgery_share"):
            out[tag + key] = round(scored[key], 4)
    out["oracle_surgery_share"] = round(scored["oracle_surgery_share"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    seed = parser.parse_args().seed
    rng = np.random.default_rng(seed)  # the same draws, in the same order, as `generate`
    state = sample_state(N, rng)
    truth = potential_outcomes(state)
    observed = observe(state, truth, rng)
    cohort = structured_view(state, observed, rng)
    y = observed["satisfied"].to_numpy(dtype=int)
    hidden = state.drop(
        columns=["patient_id", "degeneration", "incidental_bulges", "prior_surgery_level"]
    )
    full = pd.get_dummies(hidden, dtype=float)
    chart = chart_facts(state, cohort, seed, rng)
    p_test = observed["p_satisfied_observed"].to_numpy()[N_TRAIN:]
    true_p = truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()[N_TRAIN:]
    given = pd.Categorical(observed["treatment"], categories=TREATMENTS).codes[N_TRAIN:]
    args = (observed["treatment"], y, true_p, given)
    result = {
        "benchmark": "learnability ceiling",
        "seed": seed,
        "train": N_TRAIN,
        "test": N - N_TRAIN,
        "bayes_auroc_expected": round(expected_auroc(p_test), 4),
        "bayes_auroc_on_labels": round(score_auroc(p_test, y[N_TRAIN:]), 4),
        **{
            f"{name}_{facts}": fit(learner, x, *args)
            for name, learner in (("gradient_boosting", s_learner), ("t_learner", t_learner))
            for facts, x in (("full_state", full), ("chart_facts", chart))
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

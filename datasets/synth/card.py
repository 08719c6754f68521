"""The data card of a synthetic cohort: what it holds, and the ceilings a model is measured
against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spinecast.metrics import auroc, expected_auroc

from ..schema import COLUMNS, MCID_ODI_POINTS, TREATMENTS
from .outcomes import INDICATION, POSITIVITY, assignment_probabilities

# Outcome-relevant facts (they move p_satisfied or the treatment effect in outcomes.py), the
# predicate that makes each true for a patient, and the structured fields that can record it.
FACTS: dict[str, tuple] = {
    "workers_comp": (lambda s: s["workers_comp"], ("workers_comp",)),
    "depression": (lambda s: s["depression"], ("depression",)),
    "anxiety": (lambda s: s["anxiety"], ("anxiety",)),
    "opioid_use": (lambda s: s["opioid_use"], ("opioid_use",)),
    "prior_spine_surgery": (lambda s: s["prior_spine_surgery"], ("prior_spine_surgery",)),
    "current_smoker": (lambda s: s["smoking"] == "current", ("smoking",)),
    "chronic_symptoms": (lambda s: s["symptom_duration_weeks"] > 52, ("symptom_duration_weeks",)),
    "severe_disability": (lambda s: s["baseline_odi"] > 56, ("baseline_odi",)),
    "leg_dominant_pain": (lambda s: s["leg_dominant"], ("back_pain_nrs", "leg_pain_nrs")),
    "fear_avoidance": (lambda s: s["fear_avoidance"], ()),
    "unrealistic_expectations": (lambda s: s["unrealistic_expectations"], ()),
    "leg_side": (lambda s: s["leg_side"] != "none", ()),
    "positive_slr": (lambda s: s["slr_positive"], ()),
    "motor_deficit": (lambda s: s["motor_deficit"], ()),
    "root_compression": (lambda s: s["root_compression"], ()),
    "compression_side": (lambda s: s["root_compression"], ()),
    "foraminal_stenosis": (lambda s: s["foraminal_stenosis"], ()),
    "central_stenosis": (lambda s: s["central_stenosis"].isin(["moderate", "severe"]), ()),
    "unstable_slip": (lambda s: s["unstable_slip"], ()),
    "listhesis": (lambda s: s["listhesis_grade"] > 0, ()),
}

NO_POSITIVITY = (
    "**Positivity is not guaranteed**: positivity = 0, so a treatment can be practically "
    "impossible for some patients; estimates of its effect there are extrapolation."
)


def text_only_facts(state: pd.DataFrame, cohort: pd.DataFrame, in_text: dict[str, list]) -> dict:
    """Count (patient, fact) pairs that hold and say where the chart shows them."""
    texts_present = {col: cohort[col].notna().to_numpy() for col in in_text}
    mentioned = {name: np.zeros(len(state), dtype=bool) for name in FACTS}
    for col, per_patient in in_text.items():
        for i, facts in enumerate(per_patient):
            if texts_present[col][i]:
                for name in facts:
                    mentioned[name][i] = True
    per_fact, totals = {}, np.zeros(3, dtype=int)
    for name, (holds, fields) in FACTS.items():
        true = np.asarray(holds(state), dtype=bool)
        recorded = np.ones(len(state), dtype=bool) if fields else np.zeros(len(state), dtype=bool)
        for field in fields:
            recorded &= cohort[field].notna().to_numpy()
        text_only = true & ~recorded & mentioned[name]
        counts = np.array(
            [(true & recorded).sum(), text_only.sum(), (true & ~recorded & ~mentioned[name]).sum()]
        )
        totals += counts
        per_fact[name] = dict(zip(("structured", "text_only", "nowhere"), map(int, counts)))
    total = int(totals.sum())
    return {
        "facts_total": total,
        "structured_fraction": round(totals[0] / total, 4),
        "text_only_fraction": round(totals[1] / total, 4),
        "nowhere_fraction": round(totals[2] / total, 4),
        "per_fact": per_fact,
        "how_counted": (
            "Each (patient, fact) pair where an outcome-relevant fact holds in the hidden state "
            "counts once. It is 'structured' when every structured field that records it is "
            "present, 'text_only' when those fields are missing (or none exists) but the clinic "
            "note or MRI report in the cohort states it, and 'nowhere' otherwise."
        ),
    }


def policy_values(truth: pd.DataFrame, observed: pd.DataFrame) -> dict:
    """Mean P(satisfied) under the oracle policy, the clinicians' policy and each fixed
    treatment."""
    p = truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()
    values = {"oracle": p.max(axis=1).mean(), "observed": observed["p_satisfied_observed"].mean()}
    values.update({f"always_{t}": p[:, k].mean() for k, t in enumerate(TREATMENTS)})
    return {k: round(float(v), 4) for k, v in values.items()}


def practice(
    state: pd.DataFrame, observed: pd.DataFrame, indication: float, positivity: float
) -> dict:
    """How treatment was assigned: the setting, the realised mix and the support of what was
    given."""
    given = observed["p_assigned"].to_numpy()
    return {
        "indication": float(indication),
        "positivity": float(positivity),
        "positivity_guaranteed": positivity > 0,
        "guaranteed_min_probability": round(positivity / len(TREATMENTS), 6),
        "min_probability_any_treatment": _sig(
            assignment_probabilities(state, indication, positivity).min()
        ),
        "treatment_mix": {
            t: round(float((observed["treatment"] == t).mean()), 4) for t in TREATMENTS
        },
        "assigned_propensity": {"min": _sig(given.min()), "p01": _sig(np.percentile(given, 1))},
    }


def _sig(x) -> float:
    """Four significant digits: a probability of 3e-7 must not print as 0."""
    return float(f"{float(x):.4g}")


def build_card(
    cohort, truth, state, observed, in_text, seed, indication=INDICATION, positivity=POSITIVITY
) -> dict:
    labeled = cohort["satisfied"].notna().to_numpy()
    sat = cohort["satisfied"][labeled].astype(bool).to_numpy()
    gain = cohort["baseline_odi"].astype(float) - cohort["odi_12m"].astype(float)
    words = cohort["clinical_note"].dropna().str.split().str.len()
    return {
        "generator": "spinecast.datasets.synth",
        "seed": seed,
        "patients": len(cohort),
        "with_note": int(cohort["clinical_note"].notna().sum()),
        "with_mri_report": int(cohort["imaging_report"].notna().sum()),
        "with_mri_image": int(cohort["mri_image"].notna().sum()),
        "satisfied_rate": round(float(sat.mean()), 4),
        "mcid_rate": round(float((gain.dropna() >= MCID_ODI_POINTS).mean()), 4),
        "label_counts": {
            "satisfied": int(sat.sum()),
            "not_satisfied": int((~sat).sum()),
            "missing": int((~labeled).sum()),
        },
        "diagnosis_mix": _shares(state["diagnosis"]),
        "treatment_counts": cohort["treatment"].value_counts().sort_index().astype(int).to_dict(),
        "satisfied_rate_by_treatment": (
            cohort[labeled]
            .groupby("treatment")["satisfied"]
            .apply(lambda x: round(float(x.astype(bool).mean()), 4))
            .to_dict()
        ),
        "missingness": {c.name: round(float(cohort[c.name].isna().mean()), 4) for c in COLUMNS},
        "bayes_auroc": round(expected_auroc(observed["p_satisfied_observed"].to_numpy()), 4),
        "bayes_auroc_on_labels": round(
            auroc(observed["p_satisfied_observed"].to_numpy()[labeled], sat), 4
        ),
        "policy_value_p_satisfied": policy_values(truth, observed),
        "best_treatment_mix": _shares(truth["best_treatment"]),
        "min_assignment_probability": round(float(observed["p_assigned"].min()), 4),
        "practice": practice(state, observed, indication, positivity),
        "note_words": {
            "min": int(words.min()),
            "median": float(words.median()),
            "max": int(words.max()),
        },
        "facts": text_only_facts(state, cohort, in_text),
    }


def _shares(values) -> dict:
    return values.value_counts(normalize=True).round(4).sort_index().to_dict()


def write_card(
    out: Path,
    cohort,
    truth,
    state,
    observed,
    in_text,
    seed: int,
    indication: float = INDICATION,
    positivity: float = POSITIVITY,
) -> dict:
    card = build_card(cohort, truth, state, observed, in_text, seed, indication, positivity)
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out / "card.md").write_text(render_markdown(card))
    return card


def render_markdown(card: dict) -> str:
    pv, facts, pr = card["policy_value_p_satisfied"], card["facts"], card["practice"]
    lines = _summary(card)
    if not pr["positivity_guaranteed"]:
        lines += [NO_POSITIVITY, ""]
    lines += [
        "## Treatments",
        "",
        "| treatment | patients | share | satisfied | P(satisfied) if all got it |",
        "|---|---|---|---|---|",
    ]
    for t in TREATMENTS:
        lines.append(
            f"| {t} | {card['treatment_counts'].get(t, 0):,} | {pr['treatment_mix'][t]:.1%} | "
            f"{card['satisfied_rate_by_treatment'].get(t, float('nan')):.1%} | "
            f"{pv[f'always_{t}']:.3f} |"
        )
    lines += ["", "## Missing values", "", "| column | missing |", "|---|---|"]
    lines += [f"| `{k}` | {v:.1%} |" for k, v in card["missingness"].items()]
    lines += [
        "",
        "## Where the facts are",
        "",
        facts["how_counted"],
        "",
        "| fact | structured | text only | nowhere |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['structured']} | {v['text_only']} | {v['nowhere']} |"
        for k, v in facts["per_fact"].items()
    ]
    return "\n".join(lines) + "\n"


def _summary(card: dict) -> list[str]:
    pv, facts, pr = card["policy_value_p_satisfied"], card["facts"], card["practice"]
    return [
        f"# Synthetic spine cohort (seed {card['seed']}, {card['patients']:,} patients)",
        "",
        "| what | value |",
        "|---|---|",
        (
            f"| clinic notes / MRI reports / key images | {card['with_note']:,} / "
            f"{card['with_mri_report']:,} / {card['with_mri_image']:,} |"
        ),
        (
            f"| satisfied at 12 months | {card['satisfied_rate']:.1%} "
            f"({card['label_counts']['missing']} unlabeled) |"
        ),
        f"| reached ODI MCID (>= 15 points) | {card['mcid_rate']:.1%} |",
        (
            f"| Bayes AUROC of `satisfied` (ceiling for any model) | {card['bayes_auroc']:.3f} "
            f"(on the drawn labels: {card['bayes_auroc_on_labels']:.3f}) |"
        ),
        (
            "| P(satisfied): oracle policy / clinicians' policy | "
            f"{pv['oracle']:.3f} / {pv['observed']:.3f} |"
        ),
        (
            f"| outcome-relevant facts only in text | {facts['text_only_fraction']:.1%} "
            f"(structured {facts['structured_fraction']:.1%}, "
            f"nowhere {facts['nowhere_fraction']:.1%}) |"
        ),
        (
            f"| note length, words (min / median / max) | {card['note_words']['min']} / "
            f"{card['note_words']['median']:.0f} / {card['note_words']['max']} |"
        ),
        (
            "| practice: indication / positivity (uniform share) | "
            f"{pr['indication']:g} / {pr['positivity']:g} |"
        ),
        "| probability of the treatment given: min / 1st percentile | "
        + f"{pr['assigned_propensity']['min']:.3g} / {pr['assigned_propensity']['p01']:.3g} |",
        "| smallest probability of any treatment for any patient | "
        + f"{pr['min_probability_any_treatment']:.3g} "
        f"(guaranteed: {pr['guaranteed_min_probability']:.3g}) |",
        "",
    ]

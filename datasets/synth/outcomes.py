"""Potential outcomes under every treatment, confounded treatment assignment, observed labels.

For each patient and treatment t the generator knows exactly:
- `odi_gain_t`: the expected ODI improvement (baseline - expected 12-month ODI), in points;
- `p_satisfied_t`: the probability of being satisfied at 12 months.
Sizes follow ../shared/CLINICAL.md ("Outcome" and "Treatment effect heterogeneity").
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pandas as pd

from ..schema import MCID_ODI_POINTS, TREATMENTS

POSITIVITY = 0.10  # share of assignment mixed with uniform: every treatment keeps >= 2.5 %
INDICATION = 1.0  # today's practice: the assignment logits as written below
SATISFIED_ODI_SHIFT = 8.0  # satisfied patients improve this many ODI points more than expected


def _flags(s: pd.DataFrame) -> dict[str, np.ndarray]:
    f = {
        k: s[k].to_numpy(dtype=float)
        for k in (
            "workers_comp",
            "depression",
            "anxiety",
            "opioid_use",
            "prior_spine_surgery",
            "fear_avoidance",
            "unrealistic_expectations",
            "leg_dominant",
            "concordant",
            "foraminal_stenosis",
            "unstable_slip",
            "claudication",
            "root_compression",
            "motor_deficit",
            "has_mri",
            "tried_pt",
            "tried_esi",
        )
    }
    f["smoker"] = (s["smoking"] == "current").to_numpy(dtype=float)
    f["chronic"] = (s["symptom_duration_weeks"] > 52).to_numpy(dtype=float)
    f["odi"] = s["baseline_odi"].to_numpy(dtype=float)
    f["severe_odi"] = (f["odi"] > 56).astype(float)
    f["radicular"] = ((s["leg_side"] != "none") & s["leg_dominant"]).to_numpy(dtype=float)
    f["canal"] = (
        s["central_stenosis"]
        .map({"none": 0, "mild": 1, "moderate": 2, "severe": 3})
        .to_numpy(dtype=float)
    )
    f["high_grade"] = (s["listhesis_grade"] >= 2).to_numpy(dtype=float)
    for name in (
        "disc_herniation",
        "spinal_stenosis",
        "spondylolisthesis",
        "nonspecific_low_back_pain",
    ):
        f[name] = (s["diagnosis"] == name).to_numpy(dtype=float)
    return f


def _prognosis(f: dict[str, np.ndarray]) -> np.ndarray:
    """ODI points lost under any treatment to adverse prognostic factors."""
    return (
        4.0 * f["workers_comp"]
        + 3.0 * f["depression"]
        + 1.5 * f["anxiety"]
        + 3.0 * f["chronic"]
        + 2.0 * f["opioid_use"]
        + 2.5 * f["prior_spine_surgery"]
        + 2.0 * f["smoker"]
        + 4.0 * f["fear_avoidance"]
        + 1.0 * f["unrealistic_expectations"]
    )


def _decompression_effect(f: dict[str, np.ndarray]) -> np.ndarray:
    """ODI benefit of decompression over physical therapy."""
    herniation = np.where(
        f["concordant"] * f["leg_dominant"] > 0, 12.5, np.where(f["concordant"] > 0, 6.0, 1.0)
    )
    # Stenosis: ~15 if ODI <= 56 vs ~4 above; ~12 non-smokers vs ~2 smokers; foraminal and
    # leg-dominant pain add to the benefit (SPORT subgroup analyses).
    stenosis = (
        13.5
        + 4.0 * f["foraminal_stenosis"]
        + 3.0 * f["leg_dominant"]
        - 10.0 * f["smoker"]
        - 11.0 * f["severe_odi"]
    ).clip(-2, None)
    spondy = np.where((f["unstable_slip"] + f["high_grade"]) > 0, 3.0, 8.0)
    return (
        f["disc_herniation"] * herniation
        + f["spinal_stenosis"] * stenosis
        + f["spondylolisthesis"] * spondy
        - 2.0 * f["nonspecific_low_back_pain"]
    )


def potential_outcomes(s: pd.DataFrame) -> pd.DataFrame:
    """Expected ODI gain and exact P(satisfied) under each treatment, one row per patient."""
    f = _flags(s)
    natural = f["odi"] * (
        0.42 * f["disc_herniation"]
        + 0.34 * f["spinal_stenosis"]
        + 0.32 * f["spondylolisthesis"]
        + 0.38 * f["nonspecific_low_back_pain"]
    )
    pt = natural - _prognosis(f)
    decompression = _decompression_effect(f)
    surgical_penalty = 0.8 + 0.2 * (1 - f["prior_spine_surgery"])  # revision surgery helps less
    effect = {
        "physical_therapy": np.zeros(len(s)),
        # Short-term relief for radicular pain; small benefit at 12 months, below the MCID.
        "epidural_steroid_injection": np.where(f["radicular"] > 0, 2.5, -1.0),
        "decompression": decompression * surgical_penalty,
        "fusion": surgical_penalty
        * np.where(
            f["spondylolisthesis"] > 0,
            14.0 + 2.0 * f["unstable_slip"],
            np.where(f["nonspecific_low_back_pain"] > 0, -0.5, decompression - 2.0),
        ),
    }
    out = {"patient_id": s["patient_id"].to_numpy()}
    for t in TREATMENTS:
        gain = np.clip(pt + effect[t], f["odi"] - 100.0, f["odi"] - 2.0)
        out[f"p_satisfied_{t}"] = _p_satisfied(gain, f, surgical=t in ("decompression", "fusion"))
        out[f"odi_gain_{t}"] = gain.round(3)
    truth = pd.DataFrame(out)
    p = truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()
    truth["best_treatment"] = np.asarray(TREATMENTS, dtype=object)[p.argmax(axis=1)]
    return truth


def _p_satisfied(gain: np.ndarray, f: dict[str, np.ndarray], surgical: bool) -> np.ndarray:
    final = f["odi"] - gain
    logit = (
        1.6
        + 1.5 * (gain - MCID_ODI_POINTS) / 10.0
        - 0.9 * (final - 25.0) / 15.0
        - 1.0 * f["workers_comp"]
        - 0.3 * f["depression"]
        - 0.2 * f["anxiety"]
        - 0.25 * f["chronic"]
        - 0.2 * f["opioid_use"]
        - 0.25 * f["smoker"]
        - 0.45 * f["fear_avoidance"]
        - 0.9 * f["unrealistic_expectations"]
    )
    if surgical:  # surgery for axial pain disappoints more often
        logit = logit - 0.6 * f["nonspecific_low_back_pain"]
    return (1.0 / (1.0 + np.exp(-logit))).round(6)


def check_practice(indication: float, positivity: float) -> None:
    """Raise ValueError unless `indication` is a finite number >= 0 and `positivity` one in
    [0, 1]."""
    if not _finite_number(indication) or indication < 0:
        raise ValueError(
            "indication must be a finite number >= 0 (1.0 = today's practice, 2.0 = "
            "treatment follows indication more strongly, 0.0 = independent of the chart); "
            f"got {indication!r}."
        )
    if not _finite_number(positivity) or not 0 <= positivity <= 1:
        raise ValueError(
            "positivity must be a number in [0, 1] (the share of assignment mixed with a "
            f"uniform choice; today's {POSITIVITY}); got {positivity!r}."
        )


def _finite_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _indication_logits(f: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Today's assignment logits, (n, 4) in TREATMENTS order, physical therapy the reference."""
    no_mri = 1 - f["has_mri"]
    return np.stack(
        [
            np.zeros(n),
            -0.5
            + 1.0 * f["radicular"]
            + 0.4 * f["tried_pt"]
            - 1.0 * f["nonspecific_low_back_pain"],
            (
                -1.2
                + 1.5 * f["root_compression"]
                + 0.9 * f["motor_deficit"]
                + 0.8 * f["leg_dominant"]
                + 0.6 * f["tried_esi"]
                + 0.5 * f["canal"] * f["spinal_stenosis"]
                + 0.6 * f["claudication"]
                + 0.03 * (f["odi"] - 45)
                + 0.4 * f["workers_comp"]
                - 2.5 * f["nonspecific_low_back_pain"]
                - 2.0 * no_mri
            ),
            (
                -2.8
                + 3.5 * f["spondylolisthesis"]
                + 0.8 * f["unstable_slip"]
                + 0.03 * (f["odi"] - 45)
                + 0.3 * f["prior_spine_surgery"]
                - 2.0 * no_mri
            ),
        ],
        axis=1,
    )


def assignment_probabilities(
    s: pd.DataFrame, indication: float = INDICATION, positivity: float = POSITIVITY
) -> np.ndarray:
    """P(treatment | chart), (n, 4): confounded by indication, with positivity for every arm.

    `indication` multiplies the logits (intercepts included, so the treatment mix moves too):
    1.0 is today's practice, 2.0 surgeons who follow indication more strongly (surgery concentrates
    on the strong indications), 0.0 a choice independent of the chart (uniform). `positivity` is
    the share mixed with a uniform choice: every treatment keeps at least positivity / 4 for every
    patient; 0 guarantees nothing (a treatment can become practically impossible for some patients).
    """
    check_practice(indication, positivity)
    logits = indication * _indication_logits(_flags(s), len(s))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (1 - positivity) * p + positivity / len(TREATMENTS)


def observe(
    s: pd.DataFrame,
    truth: pd.DataFrame,
    rng: np.random.Generator,
    indication: float = INDICATION,
    positivity: float = POSITIVITY,
) -> pd.DataFrame:
    """Draw the treatment given (under the practice of `assignment_probabilities`) and the
    labels."""
    n = len(s)
    probs = assignment_probabilities(s, indication, positivity)
    t_idx = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=3)
    rows = np.arange(n)
    p = truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()[rows, t_idx]
    gain = truth[[f"odi_gain_{t}" for t in TREATMENTS]].to_numpy()[rows, t_idx]
    satisfied = rng.random(n) < p
    # Centred on the expected gain: satisfaction and improvement move together (MCID drives
    # satisfaction) without biasing E[odi_12m].
    realised = gain + SATISFIED_ODI_SHIFT * (satisfied - p) + rng.normal(0, 7.0, n)
    odi_12m = (s["baseline_odi"].to_numpy() - realised).clip(0, 100).round(1)
    return pd.DataFrame(
        {
            "treatment": np.asarray(TREATMENTS, dtype=object)[t_idx],
            "satisfied": satisfied,
            "odi_12m": odi_12m,
            "p_assigned": probs[rows, t_idx],
            "p_satisfied_observed": p,
        }
    )

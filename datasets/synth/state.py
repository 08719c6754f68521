"""Hidden clinical state of synthetic spine patients (see STATE.md for every key).

Rates and directions follow ../shared/CLINICAL.md ("Population"). Every draw is vectorised over
patients, so 10,000 patients take milliseconds; the text and image writers then read one row each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..schema import DIAGNOSES

LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
ROOT_OF_LEVEL = {"L3-L4": "L4", "L4-L5": "L5", "L5-S1": "S1"}
SIDES = ("left", "right", "bilateral", "none")

# Per diagnosis, in DIAGNOSES order: herniation, stenosis, spondylolisthesis, non-specific LBP.
DIAGNOSIS_MIX = (0.32, 0.33, 0.16, 0.19)
AGE_MEAN_SD = ((45, 11), (66, 9), (64, 9), (47, 13))
FEMALE_RATE = (0.45, 0.50, 0.67, 0.52)  # degenerative spondylolisthesis ~2:1 female
# Symptomatic level: herniation L5-S1 ~54 %, L4-L5 ~38 %, upper ~8 %; stenosis peaks at L4-L5.
LEVEL_MIX = {  # over (L3-L4, L4-L5, L5-S1)
    "disc_herniation": (0.08, 0.38, 0.54),
    "spinal_stenosis": (0.25, 0.60, 0.15),
    "spondylolisthesis": (0.10, 0.80, 0.10),
    "nonspecific_low_back_pain": (0.10, 0.45, 0.45),
}
LEG_SIDE_MIX = {  # over (left, right, bilateral, none)
    "disc_herniation": (0.47, 0.47, 0.04, 0.02),
    "spinal_stenosis": (0.20, 0.20, 0.50, 0.10),
    "spondylolisthesis": (0.20, 0.20, 0.35, 0.25),
    "nonspecific_low_back_pain": (0.08, 0.08, 0.04, 0.80),
}
MEDIAN_DURATION_WEEKS = (14, 60, 70, 45)
MRI_RATE = (0.90, 0.92, 0.95, 0.55)  # axial back pain is often not imaged


def _pick(rng: np.random.Generator, options, probs: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: probs is (n, k), rows sum to 1."""
    u = rng.random(len(probs))[:, None]
    idx = (u > np.cumsum(probs, axis=1)).sum(axis=1).clip(max=len(options) - 1)
    return np.asarray(options, dtype=object)[idx]


def _by_diag(dx_idx: np.ndarray, table) -> np.ndarray:
    return np.asarray(table, dtype=float)[dx_idx]


def sample_state(n: int, rng: np.random.Generator) -> pd.DataFrame:
    dx_idx = rng.choice(len(DIAGNOSES), size=n, p=DIAGNOSIS_MIX)
    dx = np.asarray(DIAGNOSES, dtype=object)[dx_idx]
    s = pd.DataFrame({"patient_id": [f"P-{i + 1:06d}" for i in range(n)], "diagnosis": dx})
    _demographics(s, dx_idx, rng)
    _symptoms(s, dx_idx, rng)
    _exam(s, rng)
    _imaging(s, dx_idx, rng)
    return s


def _demographics(s: pd.DataFrame, dx_idx: np.ndarray, rng: np.random.Generator) -> None:
    n = len(s)
    mean, sd = np.asarray(AGE_MEAN_SD, dtype=float)[dx_idx].T
    s["age"] = rng.normal(mean, sd).round().clip(18, 95).astype(int)
    s["sex"] = np.where(rng.random(n) < _by_diag(dx_idx, FEMALE_RATE), "female", "male")
    s["bmi"] = rng.normal(29.0, 5.5, n).clip(16, 55).round(1)
    young = s["age"].to_numpy() < 50
    u = rng.random(n)
    current = np.where(young, 0.24, 0.15)
    s["smoking"] = np.where(u < current, "current", np.where(u < current + 0.25, "former", "never"))
    age_excess = np.clip(s["age"].to_numpy() - 40, 0, None)
    s["diabetes"] = rng.random(n) < 0.04 + 0.0035 * age_excess + 0.01 * np.clip(
        s["bmi"] - 30, 0, None
    )
    s["depression"] = rng.random(n) < 0.27
    s["anxiety"] = rng.random(n) < np.where(s["depression"], 0.45, 0.12)
    working_age_claim = (s["age"].to_numpy() < 62) & np.isin(dx_idx, (0, 3))
    s["workers_comp"] = rng.random(n) < np.where(working_age_claim, 0.11, 0.03)
    s["fear_avoidance"] = rng.random(n) < 0.22 + 0.15 * s["depression"]
    s["unrealistic_expectations"] = rng.random(n) < 0.18
    s["prior_spine_surgery"] = rng.random(n) < np.where(dx_idx == 3, 0.06, 0.13)
    s["prior_surgery_level"] = np.where(
        s["prior_spine_surgery"], np.where(rng.random(n) < 0.55, "L4-L5", "L5-S1"), ""
    )
    asa = 1 + (s["age"] > 50) + (s["diabetes"] | (s["bmi"] > 35)) + (rng.random(n) < 0.2)
    s["asa_class"] = asa.clip(1, 4).astype(int)


def _symptoms(s: pd.DataFrame, dx_idx: np.ndarray, rng: np.random.Generator) -> None:
    n = len(s)
    levels = np.empty(n, dtype=object)
    leg_side = np.empty(n, dtype=object)
    for d, name in enumerate(DIAGNOSES):
        rows = np.flatnonzero(dx_idx == d)
        levels[rows] = rng.choice(LEVELS[2:], size=len(rows), p=LEVEL_MIX[name])
        leg_side[rows] = rng.choice(SIDES, size=len(rows), p=LEG_SIDE_MIX[name])
    s["level"] = levels
    s["root"] = s["level"].map(ROOT_OF_LEVEL)
    s["leg_side"] = leg_side
    has_leg = leg_side != "none"
    s["leg_dominant"] = has_leg & (rng.random(n) < _by_diag(dx_idx, (0.82, 0.60, 0.45, 0.15)))
    s["claudication"] = has_leg & (rng.random(n) < _by_diag(dx_idx, (0.03, 0.75, 0.50, 0.0)))
    weeks = np.exp(rng.normal(np.log(_by_diag(dx_idx, MEDIAN_DURATION_WEEKS)), 0.9))
    s["symptom_duration_weeks"] = weeks.clip(1, 800).round(1)
    s["tried_pt"] = rng.random(n) < 0.55 + 0.2 * (weeks > 12)
    s["tried_esi"] = has_leg & (rng.random(n) < 0.15 + 0.25 * (weeks > 12))
    s["tried_nsaids"] = rng.random(n) < 0.75
    s["opioid_use"] = (
        rng.random(n)
        < 0.34 + 0.12 * s["depression"] + 0.10 * (weeks > 52) + 0.08 * s["prior_spine_surgery"]
    )
    odi = rng.normal(_by_diag(dx_idx, (46, 43, 44, 37)), 12.5)
    odi += (
        5 * s["depression"] + 4 * s["fear_avoidance"] + 3 * s["workers_comp"] + 3 * s["opioid_use"]
    )
    s["baseline_odi"] = odi.clip(4, 96).round(1)
    back = rng.normal(np.where(s["leg_dominant"], 4.8, 6.6), 1.6)
    leg = np.where(
        s["leg_dominant"],
        back + rng.uniform(1, 4, n),
        np.where(has_leg, back - rng.uniform(0.5, 3.5, n), rng.uniform(0, 2, n)),
    )
    s["back_pain_nrs"] = back.round().clip(0, 10).astype(int)
    s["leg_pain_nrs"] = leg.round().clip(0, 10).astype(int)


def _exam(s: pd.DataFrame, rng: np.random.Generator) -> None:
    n = len(s)
    dx = s["diagnosis"].to_numpy()
    has_leg = (s["leg_side"] != "none").to_numpy()
    herniation = dx == "disc_herniation"
    slr_rate = np.select([herniation, dx == "nonspecific_low_back_pain"], [0.70, 0.03], 0.15)
    s["slr_positive"] = has_leg & (rng.random(n) < slr_rate)
    s["slr_angle"] = np.where(s["slr_positive"], rng.integers(25, 71, n), 0)
    motor_rate = np.select([herniation, dx == "nonspecific_low_back_pain"], [0.30, 0.02], 0.20)
    s["motor_deficit"] = has_leg & (rng.random(n) < motor_rate)
    s["motor_grade"] = np.where(s["motor_deficit"], np.where(rng.random(n) < 0.8, 4, 3), 5)
    s["sensory_deficit"] = has_leg & (rng.random(n) < np.where(herniation, 0.45, 0.2))
    has_reflex = s["root"].isin(["L4", "S1"]).to_numpy()
    s["reflex_diminished"] = (
        has_leg & has_reflex & (rng.random(n) < np.where(herniation, 0.45, 0.25))
    )


def _imaging(s: pd.DataFrame, dx_idx: np.ndarray, rng: np.random.Generator) -> None:
    """Imaging findings exist for everyone (hidden); only `has_mri` patients get a report/image."""
    n = len(s)
    s["has_mri"] = rng.random(n) < _by_diag(dx_idx, MRI_RATE)
    hern_mix = np.asarray(
        [  # over (none, bulge, protrusion, extrusion)
            (0.00, 0.10, 0.45, 0.45),
            (0.10, 0.70, 0.20, 0.00),
            (0.30, 0.70, 0.00, 0.00),
            (0.55, 0.35, 0.10, 0.00),
        ]
    )[dx_idx]
    s["herniation"] = _pick(rng, ("none", "bulge", "protrusion", "extrusion"), hern_mix)
    stenosis_mix = np.asarray(
        [  # over (none, mild, moderate, severe)
            (0.70, 0.25, 0.05, 0.00),
            (0.00, 0.20, 0.45, 0.35),
            (0.10, 0.30, 0.45, 0.15),
            (0.92, 0.08, 0.00, 0.00),
        ]
    )[dx_idx]
    stenosis = _pick(rng, ("none", "mild", "moderate", "severe"), stenosis_mix)
    extrusion = (s["herniation"] == "extrusion").to_numpy()
    # A large extrusion narrows the canal by itself.
    stenosis = np.where(extrusion & (stenosis == "none") & (rng.random(n) < 0.4), "mild", stenosis)
    s["central_stenosis"] = stenosis
    _compression(s, dx_idx, rng)
    s["foraminal_stenosis"] = rng.random(n) < _by_diag(dx_idx, (0.12, 0.40, 0.50, 0.05))
    s["foraminal_side"] = np.where(s["foraminal_stenosis"], _side_like_leg(s, rng), "")
    spondy = dx_idx == 2
    s["listhesis_grade"] = np.where(spondy, np.where(rng.random(n) < 0.85, 1, 2), 0)
    s["unstable_slip"] = spondy & (rng.random(n) < 0.35)
    s["translation_mm"] = np.where(
        s["unstable_slip"], rng.uniform(3.5, 8, n), np.where(spondy, rng.uniform(0, 2.5, n), 0.0)
    ).round(1)
    modic = rng.random(n) < _by_diag(dx_idx, (0.20, 0.15, 0.25, 0.25))
    s["modic"] = np.where(modic, np.where(rng.random(n) < 0.4, 1, 2), 0)
    _degeneration(s, dx_idx, rng)


def _side_like_leg(s: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """A side that usually matches the leg symptoms (random where the leg is not involved)."""
    n = len(s)
    leg = s["leg_side"].to_numpy()
    random_side = np.where(rng.random(n) < 0.5, "left", "right")
    return np.where(leg == "none", random_side, leg)


def _compression(s: pd.DataFrame, dx_idx: np.ndarray, rng: np.random.Generator) -> None:
    n = len(s)
    leg = s["leg_side"].to_numpy()
    focal = s["herniation"].isin(["protrusion", "extrusion"]).to_numpy()
    rate = np.where(
        dx_idx == 0, np.where(focal, 0.88, 0.0), _by_diag(dx_idx, (0, 0.45, 0.35, 0.02))
    )
    compressed = rng.random(n) < rate
    # Most compressions sit on the symptomatic side; some are contralateral (discordant).
    concordant_side = rng.random(n) < np.where(dx_idx == 0, 0.89, 0.75)
    opposite = {"left": "right", "right": "left", "bilateral": "left", "none": "left"}
    liked = _side_like_leg(s, rng)
    other = np.asarray([opposite[x] for x in leg], dtype=object)
    side = np.where(concordant_side, liked, other)
    s["root_compression"] = compressed
    s["compression_side"] = np.where(compressed, side, "")
    central = (s["herniation"] == "extrusion") & (side == "bilateral")
    hern_side = np.where(central, "central", np.where(compressed, side, _pick_side3(rng, n)))
    s["herniation_side"] = np.where(s["herniation"] == "none", "", hern_side)
    s["herniation_side"] = s["herniation_side"].replace("bilateral", "central")
    match = (side == leg) | (side == "bilateral") | (leg == "bilateral")
    s["concordant"] = compressed & (leg != "none") & match


def _pick_side3(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(("left", "right", "central"), dtype=object)[rng.integers(0, 3, n)]


def _degeneration(s: pd.DataFrame, dx_idx: np.ndarray, rng: np.random.Generator) -> None:
    """Disc degeneration and bulges rise steeply with age in everyone (Brinjikji 2015)."""
    n = len(s)
    age_frac = np.clip((s["age"].to_numpy() - 20) / 70, 0, 1)[:, None]
    weight = np.asarray([0.45, 0.55, 0.70, 1.0, 0.95])[None, :]
    grades = rng.binomial(3, np.clip(0.05 + 0.75 * age_frac * weight, 0, 0.85))
    level_idx = s["level"].map(LEVELS.index).to_numpy()
    symptomatic = (dx_idx != 3) | (rng.random(n) < 0.6)
    grades[np.arange(n), level_idx] += symptomatic
    grades = grades.clip(0, 3)
    bulge = rng.random((n, 5)) < 0.10 + 0.55 * age_frac * weight
    bulge[np.arange(n), level_idx] = False
    s["degeneration"] = [list(map(int, row)) for row in grades]
    s["incidental_bulges"] = [[LEVELS[j] for j in np.flatnonzero(row)] for row in bulge]

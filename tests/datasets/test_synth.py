"""The synthetic cohort encodes the medicine of CLINICAL.md and is reproducible byte for byte."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from spinecast.datasets import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.datasets.synth.outcomes import (
    POSITIVITY,
    assignment_probabilities,
    potential_outcomes,
)
from spinecast.datasets.synth.state import sample_state

from spinecast.cli import main

N = 3000


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(N, seed=7, out=out, workers=2)
    return out


@pytest.fixture(scope="module")
def card(cohort_dir):
    return json.loads((cohort_dir / "card.json").read_text())


@pytest.fixture(scope="module")
def world():
    """A large hidden state and its potential outcomes (the same code `generate` runs)."""
    state = sample_state(40_000, np.random.default_rng(3))
    return pd.concat([state, potential_outcomes(state).drop(columns="patient_id")], axis=1)


def test_cohort_passes_the_contract(cohort_dir):
    df = load_cohort(cohort_dir / "cohort.parquet", training=True)
    assert len(df) == N and df["patient_id"].is_unique
    truth = pd.read_parquet(cohort_dir / "truth.parquet")
    expected = ["patient_id"] + [
        f"{k}_{t}" for t in TREATMENTS for k in ("p_satisfied", "odi_gain")
    ]
    assert sorted(truth.columns) == sorted(expected + ["best_treatment"])
    assert truth["patient_id"].tolist() == df["patient_id"].tolist()
    p = truth[[f"p_satisfied_{t}" for t in TREATMENTS]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert (truth["best_treatment"] == np.asarray(TREATMENTS)[p.argmax(axis=1)]).all()


def test_rates_and_ceiling_are_in_the_target_ranges(card):
    assert 0.60 <= card["satisfied_rate"] <= 0.75
    assert 0.78 <= card["bayes_auroc"] <= 0.88
    assert card["policy_value_p_satisfied"]["oracle"] > card["policy_value_p_satisfied"]["observed"]


def test_enough_outcome_relevant_facts_are_only_in_text(card):
    facts = card["facts"]
    assert facts["text_only_fraction"] >= 0.20
    total = sum(sum(v.values()) for v in facts["per_fact"].values())
    assert total == facts["facts_total"]
    # Exam findings and psychosocial factors have no structured field: where charted, only in text.
    assert facts["per_fact"]["positive_slr"]["structured"] == 0
    assert facts["per_fact"]["positive_slr"]["text_only"] > 0


def test_structured_fields_go_missing_at_realistic_rates(cohort_dir, card):
    optional = [
        "bmi",
        "smoking",
        "diabetes",
        "depression",
        "anxiety",
        "workers_comp",
        "opioid_use",
        "prior_spine_surgery",
        "asa_class",
        "symptom_duration_weeks",
        "baseline_odi",
        "back_pain_nrs",
        "leg_pain_nrs",
        "diagnosis",
    ]
    cohort = pd.read_parquet(cohort_dir / "cohort.parquet")
    missing = cohort.isna().mean()  # in the data itself; the card must report the same
    assert card["missingness"] == {col: pytest.approx(missing[col], abs=1e-4) for col in cohort}
    for col in optional:
        assert 0.07 <= missing[col] <= 0.33, col
    assert missing["age"] == 0 and missing["treatment"] == 0
    assert 0.05 <= missing["imaging_report"] <= 0.35  # no MRI for some patients
    assert missing["mri_image"] > missing["imaging_report"]


def test_notes_have_realistic_length_and_variety(cohort_dir):
    notes = pd.read_parquet(cohort_dir / "cohort.parquet")["clinical_note"].dropna()
    words = notes.str.split().str.len()
    assert words.min() >= 80 and words.max() <= 400 and words.std() > 30
    first_sentences = notes.str.split(".").str[0]
    assert first_sentences.nunique() > 0.5 * len(notes)


def test_herniation_benefit_needs_concordant_compression(world):
    h = world[world["diagnosis"] == "disc_herniation"]
    for metric in ("odi_gain", "p_satisfied"):
        benefit = h[f"{metric}_decompression"] - h[f"{metric}_physical_therapy"]
        assert benefit[h["concordant"]].mean() > benefit[~h["concordant"]].mean() + (
            5 if metric == "odi_gain" else 0.05
        )
    benefit = h["odi_gain_decompression"] - h["odi_gain_physical_therapy"]
    assert 9 <= benefit[h["concordant"] & h["leg_dominant"]].mean() <= 15  # CLINICAL.md: ~11 to 14


def test_stenosis_benefit_is_smaller_in_smokers_and_severe_disability(world):
    s = world[world["diagnosis"] == "spinal_stenosis"]
    benefit = s["odi_gain_decompression"] - s["odi_gain_physical_therapy"]
    smoker = s["smoking"] == "current"
    severe = s["baseline_odi"] > 56
    assert benefit[smoker].mean() < benefit[~smoker].mean() - 5
    assert benefit[severe].mean() < benefit[~severe].mean() - 5


def test_physical_therapy_is_best_for_nonspecific_low_back_pain(world):
    lbp = world[world["diagnosis"] == "nonspecific_low_back_pain"]
    for metric in ("p_satisfied", "odi_gain"):
        means = {t: lbp[f"{metric}_{t}"].mean() for t in TREATMENTS}
        assert max(means, key=means.get) == "physical_therapy", (metric, means)


def test_spondylolisthesis_does_best_with_fusion(world):
    sp = world[world["diagnosis"] == "spondylolisthesis"]
    benefit = sp["odi_gain_fusion"] - sp["odi_gain_physical_therapy"]
    assert 11 <= benefit.mean() <= 17  # CLINICAL.md: fusion better by ~14 points


def test_assignment_is_confounded_but_keeps_positivity(world):
    p = assignment_probabilities(world)
    assert p.min() > 0.02
    surgery = p[:, 2] + p[:, 3]
    dx = world["diagnosis"].to_numpy()
    assert (
        surgery[dx == "nonspecific_low_back_pain"].mean()
        < 0.25
        < surgery[dx == "spinal_stenosis"].mean()
    )


def test_population_matches_the_literature(world):
    mix = world["diagnosis"].value_counts(normalize=True)
    assert 0.29 <= mix["disc_herniation"] <= 0.36 and 0.29 <= mix["spinal_stenosis"] <= 0.36
    h = world[world["diagnosis"] == "disc_herniation"]
    assert 0.48 <= (h["level"] == "L5-S1").mean() <= 0.60
    assert (
        40 <= h["age"].mean() <= 50
        and 60 <= world[world["diagnosis"] == "spinal_stenosis"]["age"].mean() <= 67
    )
    spondy = world[world["diagnosis"] == "spondylolisthesis"]
    assert 0.6 <= (spondy["sex"] == "female").mean() <= 0.74
    assert 0.38 <= world["opioid_use"].mean() <= 0.47 and 0.20 <= world["depression"].mean() <= 0.35
    assert 0.05 <= world["workers_comp"].mean() <= 0.10


def _digest(folder) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def seed11(tmp_path_factory):
    """300 patients, seed 11, today's practice (the defaults)."""
    out = tmp_path_factory.mktemp("seed11")
    generate(300, seed=11, out=out, workers=1)
    return out


def test_same_seed_same_bytes_and_other_seed_differs(seed11, tmp_path):
    main(["synth", "--n", "300", "--seed", "11", "--out", str(tmp_path / "b"), "--workers", "2"])
    generate(300, seed=12, out=tmp_path / "c", workers=1)
    a, b, c = _digest(seed11), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) > 100
    assert a["cohort.parquet"] != c["cohort.parquet"]


# sha256 of the treatment column of `seed11`, recorded before the practice became a setting.
TODAYS_TREATMENTS_SEED11 = "581d672c2d0b374341f26b4c930ef66291d7811e5d80aad6241aec30628d0a27"


def test_defaults_are_todays_practice(seed11, tmp_path):
    generate(300, seed=11, out=tmp_path / "explicit", workers=1, indication=1.0, positivity=0.10)
    assert _digest(tmp_path / "explicit") == _digest(seed11)
    treatments = pd.read_parquet(seed11 / "cohort.parquet")["treatment"]
    assert hashlib.sha256("\n".join(treatments).encode()).hexdigest() == TODAYS_TREATMENTS_SEED11
    practice = json.loads((seed11 / "card.json").read_text())["practice"]
    assert practice["indication"] == 1.0 and practice["positivity"] == POSITIVITY == 0.10
    assert practice["positivity_guaranteed"] and practice["guaranteed_min_probability"] == 0.025


def test_stronger_indication_concentrates_treatment(world):
    dx = world["diagnosis"].to_numpy()
    lbp, spondy = dx == "nonspecific_low_back_pain", dx == "spondylolisthesis"
    today, strong = assignment_probabilities(world), assignment_probabilities(world, indication=2.0)
    assert strong[lbp, 2:].sum(axis=1).mean() < today[lbp, 2:].sum(axis=1).mean() - 0.02
    assert strong[spondy, 3].mean() > today[spondy, 3].mean() + 0.05
    weak = assignment_probabilities(world, indication=0.5)
    assert weak[lbp, 2:].sum(axis=1).mean() > today[lbp, 2:].sum(axis=1).mean() + 0.05
    np.testing.assert_allclose(
        assignment_probabilities(world, indication=0.0), 0.25
    )  # the chart plays no part


@pytest.mark.parametrize(
    "indication, positivity", [(1.0, 0.10), (3.0, 0.10), (5.0, 0.02), (2.0, 0.5), (1.0, 1.0)]
)
def test_positivity_floor_is_respected(world, indication, positivity):
    p = assignment_probabilities(world, indication, positivity)
    assert p.min() >= positivity / len(TREATMENTS)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"indication": -0.5}, "indication must be a finite number >= 0"),
        ({"indication": float("nan")}, "indication must be a finite number >= 0"),
        ({"indication": "strong"}, "indication must be a finite number >= 0"),
        ({"positivity": 1.5}, "positivity must be a number in [0, 1]"),
        ({"positivity": -0.1}, "positivity must be a number in [0, 1]"),
    ],
)
def test_invalid_practice_names_the_argument(world, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        assignment_probabilities(world.head(5), **kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        generate(10, seed=0, out=tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()  # nothing written before the check


def test_synth_cli_sets_the_practice(seed11, tmp_path, capsys):
    out = tmp_path / "shifted"
    assert (
        main(
            [
                "synth",
                "--n",
                "300",
                "--seed",
                "11",
                "--out",
                str(out),
                "--workers",
                "1",
                "--indication",
                "2.5",
                "--positivity",
                "0",
            ]
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    practice = card["practice"]
    assert practice["indication"] == 2.5 and practice["positivity"] == 0.0
    assert not practice["positivity_guaranteed"]
    assert "Positivity is not guaranteed" in (out / "card.md").read_text()
    assert sum(practice["treatment_mix"].values()) == pytest.approx(1.0, abs=1e-3)
    assert (
        0 <= practice["assigned_propensity"]["min"] <= practice["assigned_propensity"]["p01"] <= 1
    )
    # A change of practice changes who got what, not the patients or their truth.
    assert (out / "truth.parquet").read_bytes() == (seed11 / "truth.parquet").read_bytes()
    shifted, today = (pd.read_parquet(d / "cohort.parquet") for d in (out, seed11))
    assert (shifted["treatment"] != today["treatment"]).any()
    pd.testing.assert_frame_equal(
        shifted.drop(columns=["treatment", "satisfied", "odi_12m"]),
        today.drop(columns=["treatment", "satisfied", "odi_12m"]),
    )
    capsys.readouterr()
    assert main(["synth", "--n", "10", "--out", str(tmp_path / "bad"), "--positivity", "1.5"]) == 2
    assert "--positivity must be a number in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_validate_command(cohort_dir, capsys, tmp_path):
    assert main(["validate", str(cohort_dir / "cohort.parquet"), "--training"]) == 0
    assert f"{N:,} rows, all valid" in capsys.readouterr().out
    bad = pd.read_parquet(cohort_dir / "cohort.parquet").head(5)
    bad.loc[2, "age"] = 140
    bad.to_parquet(tmp_path / "bad.parquet")
    assert main(["validate", str(tmp_path / "bad.parquet")]) == 1
    err = capsys.readouterr().err
    assert "bad.parquet:3:age: must be an integer in [18, 110] (got 140)" in err

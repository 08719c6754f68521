"""Assemble a synthetic cohort: hidden state -> chart views (fields, note, report, image) + truth.

    spinecast synth --n 10000 --seed 0 --out data/synth
    spinecast synth --n 2000 --seed 101 --out data/strong --indication 2.0   # another practice

writes `cohort.parquet` (contract columns), `truth.parquet` (potential outcomes), `images/` and the
data card (`card.md`, `card.json`). Same seed and practice, same bytes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..schema import COLUMNS, DIAGNOSES
from .card import write_card
from .image import render_mri, save_png
from .outcomes import INDICATION, POSITIVITY, check_practice, observe, potential_outcomes
from .state import sample_state
from .text import write_note, write_report

# Structured fields go missing at realistic rates (CLINICAL.md: 10 to 30 %); the note may still
# mention the fact. Psychosocial and claim fields are the worst coded in real registries.
MISSING_RATE = {
    "bmi": 0.15,
    "smoking": 0.12,
    "diabetes": 0.10,
    "depression": 0.22,
    "anxiety": 0.28,
    "workers_comp": 0.25,
    "opioid_use": 0.18,
    "prior_spine_surgery": 0.12,
    "asa_class": 0.28,
    "symptom_duration_weeks": 0.15,
    "baseline_odi": 0.18,
    "back_pain_nrs": 0.10,
    "leg_pain_nrs": 0.12,
    "diagnosis": 0.10,
    "odi_12m": 0.12,
    "satisfied": 0.03,
}
MISCODED_DIAGNOSIS = 0.04
NOTE_MISSING = 0.03
REPORT_MISSING = 0.05  # MRI done but the report is not in the chart
IMAGE_MISSING = 0.10  # MRI done but no key image was exported
_ARROW_TYPE = {
    "string": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}
COHORT_SCHEMA = pa.schema([pa.field(c.name, _ARROW_TYPE[c.dtype]) for c in COLUMNS])


def generate(
    n: int,
    seed: int,
    out: str | Path,
    workers: int | None = None,
    indication: float = INDICATION,
    positivity: float = POSITIVITY,
) -> dict:
    """Write a synthetic cohort of `n` patients to `out`; return the data card as a dict.

    `indication` and `positivity` set the clinicians' practice
    (`outcomes.assignment_probabilities`): only the treatment given and its labels change; the
    patients and their truth do not.
    """
    check_practice(indication, positivity)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    state = sample_state(n, rng)
    truth = potential_outcomes(state)
    observed = observe(state, truth, rng, indication, positivity)
    cohort = structured_view(state, observed, rng)
    records = state.to_dict("records")
    notes = [write_note(r, _rng(seed, i, 1)) for i, r in enumerate(records)]
    reports = [write_report(r, _rng(seed, i, 2)) for i, r in enumerate(records)]
    cohort["clinical_note"] = _drop([t for t, _ in notes], NOTE_MISSING, rng)
    cohort["imaging_report"] = _drop([t for t, _ in reports], REPORT_MISSING, rng)
    with_image = state["has_mri"].to_numpy() & (rng.random(n) < 1 - IMAGE_MISSING)
    cohort["mri_image"] = np.where(with_image, "images/" + state["patient_id"] + ".png", None)
    _render_images(state, np.flatnonzero(with_image), seed, out / "images", workers)

    cohort_table = pa.Table.from_pandas(cohort, schema=COHORT_SCHEMA, preserve_index=False)
    pq.write_table(cohort_table, out / "cohort.parquet", compression="zstd")
    truth_table = pa.Table.from_pandas(truth, preserve_index=False)
    pq.write_table(truth_table, out / "truth.parquet", compression="zstd")
    in_text = {"clinical_note": [f for _, f in notes], "imaging_report": [f for _, f in reports]}
    return write_card(out, cohort, truth, state, observed, in_text, seed, indication, positivity)


def _drop(texts: list, rate: float, rng: np.random.Generator) -> pd.Series:
    return pd.Series(texts, dtype=object).where(rng.random(len(texts)) >= rate, None)


def _rng(seed: int, i: int, stream: int) -> np.random.Generator:
    """One generator per patient and view: output does not depend on chunking or workers."""
    return np.random.default_rng((seed, stream, i))


def structured_view(
    state: pd.DataFrame, observed: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """The chart's structured fields and labels: rounded as charted, with missing values."""
    n = len(state)
    df = pd.DataFrame({c.name: pd.Series([None] * n, dtype=object) for c in COLUMNS})
    for col in (
        "patient_id",
        "age",
        "sex",
        "bmi",
        "smoking",
        "diabetes",
        "depression",
        "anxiety",
        "workers_comp",
        "opioid_use",
        "prior_spine_surgery",
        "asa_class",
        "back_pain_nrs",
        "leg_pain_nrs",
        "diagnosis",
    ):
        df[col] = state[col].to_numpy()
    df["symptom_duration_weeks"] = state["symptom_duration_weeks"].round().clip(1, None)
    df["baseline_odi"] = (state["baseline_odi"] / 2).round() * 2  # ODI is scored in 2-point steps
    miscoded = rng.random(n) < MISCODED_DIAGNOSIS
    shifted = (state["diagnosis"].map(DIAGNOSES.index) + rng.integers(1, 4, n)) % 4
    df["diagnosis"] = np.where(
        miscoded, np.asarray(DIAGNOSES, dtype=object)[shifted], df["diagnosis"]
    )
    df["treatment"] = observed["treatment"].to_numpy()
    df["satisfied"] = observed["satisfied"].to_numpy()
    df["odi_12m"] = observed["odi_12m"].to_numpy()
    for col, rate in MISSING_RATE.items():
        gone = rng.random(n) < rate
        df[col] = df[col].astype(object).where(~gone, None)
    return df


def _render_images(
    state: pd.DataFrame, rows: np.ndarray, seed: int, folder: Path, workers: int | None
) -> None:
    records = state.iloc[rows].to_dict("records")
    jobs = [(r, seed, int(i), folder) for r, i in zip(records, rows)]
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < 200:
        for job in jobs:
            _render_one(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_render_one, jobs, chunksize=256))


def _render_one(job) -> None:
    record, seed, i, folder = job
    save_png(render_mri(record, _rng(seed, i, 3)), folder / f"{record['patient_id']}.png")

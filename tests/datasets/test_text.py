"""Tests for the synthetic clinic note and MRI report writers (spinecast.datasets.synth.text)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from spinecast.datasets.synth.text import NOTE_FACTS, REPORT_FACTS, write_note, write_report

LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
ROOT = {"L3-L4": "L4", "L4-L5": "L5", "L5-S1": "S1"}
FULL = {"L1-2": "L1-L2", "L2-3": "L2-L3", "L3-4": "L3-L4", "L4-5": "L4-L5"}  # short level names
SIDE_WORDS = {
    "left": r"\bleft\b|\bL\b|LLE",
    "right": r"\bright\b|\bR\b|RLE",
    "bilateral": r"bilateral|\bb/l\b|both|BLE",
}


def make_state(rng: np.random.Generator, **overrides) -> dict:
    """One hidden-state row with every STATE.md key, plausible and internally consistent."""

    def flip(p: float) -> bool:
        return bool(rng.random() < p)

    def pick(options, p=None) -> str:
        return str(rng.choice(options, p=p))

    dx = pick(
        ["disc_herniation", "spinal_stenosis", "spondylolisthesis", "nonspecific_low_back_pain"]
    )
    level = pick(["L3-L4", "L4-L5", "L5-S1"], p=[0.1, 0.45, 0.45])
    axial = dx == "nonspecific_low_back_pain"
    leg_side = (
        "none" if axial else pick(["left", "right", "bilateral", "none"], p=[0.4, 0.4, 0.15, 0.05])
    )
    herniation = pick(["none", "bulge", "protrusion", "extrusion"])
    compression = flip(0.5) and not axial
    cside = (leg_side if leg_side != "none" else "left") if compression else ""
    slr, motor, foraminal, prior = flip(0.5), flip(0.3), flip(0.3), flip(0.15)
    unstable = dx == "spondylolisthesis" and flip(0.4)
    state = {
        "patient_id": f"P-{int(rng.integers(1, 999999)):06d}",
        "age": int(rng.integers(18, 96)),
        "sex": pick(["female", "male"]),
        "bmi": float(rng.uniform(16, 55)),
        "smoking": pick(["never", "former", "current"]),
        "diabetes": flip(0.2),
        "depression": flip(0.3),
        "anxiety": flip(0.25),
        "workers_comp": flip(0.1),
        "opioid_use": flip(0.4),
        "prior_spine_surgery": prior,
        "prior_surgery_level": pick(["L4-L5", "L5-S1"]) if prior else "",
        "asa_class": int(rng.integers(1, 5)),
        "symptom_duration_weeks": float(rng.uniform(1, 800)),
        "baseline_odi": float(rng.uniform(4, 96)),
        "back_pain_nrs": int(rng.integers(0, 11)),
        "leg_pain_nrs": int(rng.integers(0, 11)),
        "diagnosis": dx,
        "level": level,
        "root": ROOT[level],
        "leg_side": leg_side,
        "leg_dominant": leg_side != "none" and flip(0.6),
        "claudication": dx in ("spinal_stenosis", "spondylolisthesis") and flip(0.6),
        "slr_positive": slr,
        "slr_angle": int(rng.integers(20, 81)) if slr else 0,
        "motor_deficit": motor,
        "motor_grade": int(rng.integers(3, 5)) if motor else 5,
        "sensory_deficit": flip(0.3),
        "reflex_diminished": flip(0.2),
        "fear_avoidance": flip(0.3),
        "unrealistic_expectations": flip(0.2),
        "tried_pt": flip(0.5),
        "tried_esi": flip(0.3),
        "tried_nsaids": flip(0.7),
        "unstable_slip": unstable,
        "translation_mm": float(rng.uniform(4, 8) if unstable else rng.uniform(0, 3)),
        "has_mri": flip(0.8),
        "herniation": herniation,
        "herniation_side": ""
        if herniation in ("none", "bulge")
        else pick(["left", "right", "central"]),
        "root_compression": compression,
        "compression_side": cside,
        "concordant": compression and cside == leg_side,
        "central_stenosis": pick(["none", "mild", "moderate", "severe"]),
        "foraminal_stenosis": foraminal,
        "foraminal_side": pick(["left", "right", "bilateral"]) if foraminal else "",
        "listhesis_grade": int(rng.integers(1, 3)) if dx == "spondylolisthesis" else 0,
        "modic": int(rng.integers(0, 3)),
        "degeneration": [int(g) for g in rng.integers(0, 4, size=5)],
        "incidental_bulges": [lvl for lvl in LEVELS if lvl != level and flip(0.25)],
    }
    return state | overrides


def states(n: int, seed: int = 0, **overrides) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [make_state(rng, **overrides) for _ in range(n)]


def holds(s: dict, fact: str) -> bool:
    """The truth of each fact-vocabulary name in the hidden state."""
    return {
        "current_smoker": s["smoking"] == "current",
        "chronic_symptoms": s["symptom_duration_weeks"] > 52,
        "severe_disability": s["baseline_odi"] > 56,
        "leg_dominant_pain": s["leg_dominant"],
        "positive_slr": s["slr_positive"],
        "leg_side": s["leg_side"] != "none",
        "compression_side": s["compression_side"] != "",
        "central_stenosis": s["central_stenosis"] in ("moderate", "severe"),
        "foraminal_stenosis": s["foraminal_stenosis"],
        "listhesis": s["listhesis_grade"] > 0,
    }.get(fact, s.get(fact))


def notes_for(sts, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [write_note(s, rng, **kw) for s in sts]


def reports_for(sts, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [write_report(s, rng, **kw) for s in sts]


# --- determinism -----------------------------------------------------------------------------

_CHILD = """
import json, sys
import numpy as np
from spinecast.datasets.synth.text import write_note, write_report
s = json.loads(sys.stdin.read())
rng = np.random.default_rng(42)
print(write_note(s, rng)); print(write_report(s, rng))
"""


def test_same_seed_same_text_in_process():
    s = states(1, seed=1, has_mri=True)[0]
    a = (write_note(s, np.random.default_rng(5)), write_report(s, np.random.default_rng(6)))
    b = (write_note(s, np.random.default_rng(5)), write_report(s, np.random.default_rng(6)))
    assert a == b
    assert write_note(s, np.random.default_rng(7)) != a[0]


def test_same_seed_same_text_across_processes_and_hash_seeds():
    s = states(1, seed=2, has_mri=True)[0]
    rng = np.random.default_rng(42)
    expected = f"{write_note(s, rng)}\n{write_report(s, rng)}\n"
    for hash_seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(s),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == expected


# --- length and variety ----------------------------------------------------------------------


def test_note_word_counts_within_bounds_and_varied():
    counts = [len(t.split()) for t, _ in notes_for(states(400, seed=3), seed=3)]
    assert min(counts) >= 80 and max(counts) <= 400
    assert sum(c < 120 for c in counts) > 20  # terse notes exist
    assert sum(c > 250 for c in counts) > 20  # and long ones


def test_trimming_keeps_limit_and_exact_facts(monkeypatch):
    from spinecast.datasets.synth import notes

    monkeypatch.setattr(notes, "MAX_WORDS", 110)
    sts = states(200, seed=4)
    for s, (text, facts) in zip(sts, notes_for(sts, seed=4)):
        assert len(text.split()) <= 110
        assert all(holds(s, f) for f in facts)


def test_identical_states_give_varied_notes():
    s = states(1, seed=5)[0]
    out = [write_note(s, np.random.default_rng(i))[0] for i in range(200)]
    assert len(set(out)) == 200
    bodies = [re.sub(r"^[A-Za-z ]+:\s*", "", t) for t in out]  # drop a leading "HPI:" header
    first = {re.split(r"(?<=\.)\s", body)[0] for body in bodies}
    assert len(first) >= 15
    assert any(
        t.startswith(("HPI:", "History:", "HISTORY OF PRESENT ILLNESS:", "Subjective:"))
        for t in out
    )
    assert any(re.match(r"\d+|Pt|This|The|Patient", t) for t in out)  # prose, no header


# --- facts -----------------------------------------------------------------------------------


def test_listed_facts_are_in_vocabulary_and_hold():
    sts = states(600, seed=6)
    for s, (_, facts) in zip(sts, notes_for(sts, seed=6)):
        assert facts == sorted(facts) and set(facts) <= set(NOTE_FACTS)
        assert all(holds(s, f) for f in facts), facts
    for s, (_, facts) in zip(sts, reports_for(sts, seed=6)):
        assert facts == sorted(facts) and set(facts) <= set(REPORT_FACTS)
        assert all(holds(s, f) for f in facts), facts


def test_facts_that_hold_are_usually_but_not_always_listed():
    sts = states(1500, seed=7)
    listed = notes_for(sts, seed=7)
    for fact in (
        "workers_comp",
        "depression",
        "opioid_use",
        "positive_slr",
        "current_smoker",
        "fear_avoidance",
        "leg_side",
    ):
        hits = [fact in facts for s, (_, facts) in zip(sts, listed) if holds(s, fact)]
        assert 0.6 < np.mean(hits) < 0.98, (fact, np.mean(hits))


_KEYWORDS = {
    "workers_comp": r"workers' comp|\bWC\b",
    "depression": r"depress|MDD",
    "anxiety": r"anxiety",
    "opioid_use": r"oxycodone|hydrocodone|tramadol|hydromorphone|tapentadol|opioid",
    "current_smoker": r"(?i)smok|tobacco",
    "prior_spine_surgery": r"s/p|h/o|[Pp]rior spine surgery|Had an?",
    "positive_slr": r"SLR|[Ss]traight-leg raise",
    "motor_deficit": r"\b[34]/5",
    "fear_avoidance": r"fear|afraid",
    "unrealistic_expectations": r"pain-free|zero pain|cure|never to have",
    "listhesis": r"spondylolisthesis|\bDS\b",
}


def test_listed_note_facts_are_visible_in_text():
    sts = states(800, seed=8)
    for s, (text, facts) in zip(sts, notes_for(sts, seed=8, typo_rate=0)):
        for fact in facts:
            if fact in _KEYWORDS:
                assert re.search(_KEYWORDS[fact], text, re.IGNORECASE), (fact, text)
        if "leg_side" in facts:
            assert re.search(SIDE_WORDS[s["leg_side"]], text)
        if "unstable_slip" in facts:
            t = s["translation_mm"]
            assert f"{t:.0f} mm" in text or f"{t:.1f} mm" in text


@pytest.mark.parametrize(
    "odi, severe, bound", [(56.3, True, 57), (56.0, False, 56), (80.0, True, 80)]
)
def test_odi_statement_never_crosses_the_severity_line(odi, severe, bound):
    sts = states(300, seed=9, baseline_odi=odi)
    for text, facts in notes_for(sts, seed=9, typo_rate=0):
        m = re.search(r"(?:ODI|Oswestry)\D{0,25}(\d+)", text)
        assert ("severe_disability" in facts) == (severe and m is not None)
        if m:
            assert int(m.group(1)) == bound


@pytest.mark.parametrize(
    "weeks, chronic", [(54.0, True), (300.0, True), (50.0, False), (20.0, False)]
)
def test_duration_statement_matches_chronicity(weeks, chronic):
    long_form = r"(?i)more than a year|\b(1[3-9]|2\d)[- ]month|\b([2-9]|1\d)[- ]year"
    sts = states(300, seed=10, symptom_duration_weeks=weeks)
    stated = 0
    for text, facts in notes_for(sts, seed=10, typo_rate=0):
        assert ("chronic_symptoms" in facts) <= chronic
        if "chronic_symptoms" in facts:
            stated += 1
            assert re.search(long_form, text)
        if not chronic:
            assert not re.search(r"(?i)more than a year|\b(1[3-9]|2\d)[- ]month", text)
    assert (stated > 200) == chronic


def test_listed_report_findings_name_root_side_and_grade():
    sts = states(800, seed=11, has_mri=True)
    for s, (text, facts) in zip(sts, reports_for(sts, seed=11, typo_rate=0)):
        root, side = s["root"], s["compression_side"]
        if "root_compression" in facts:
            assert re.search(rf"{root} nerve root", text)
        if "compression_side" in facts:
            named = (
                rf"{side} {root} nerve root"
                if side != "bilateral"
                else rf"(bilateral|both) traversing {root}"
            )
            assert re.search(named, text), text
        if "central_stenosis" in facts:
            assert re.search(
                rf"{s['central_stenosis'].capitalize()} spinal canal stenosis|"
                rf"{s['central_stenosis']} (central canal stenosis|narrowing of the central canal)",
                text,
                re.IGNORECASE,
            )
        if "listhesis" in facts:
            upper, lower = s["level"].split("-")
            assert f"anterolisthesis of {upper} on {lower}" in text or "spondylolisthesis" in text


def test_report_is_none_without_mri():
    s = states(1, seed=12, has_mri=False)[0]
    assert write_report(s, np.random.default_rng(0)) == (None, [])


def test_report_structure_and_incidental_findings_always_present():
    sts = states(300, seed=13, has_mri=True)
    for s, (text, _) in zip(sts, reports_for(sts, seed=13, typo_rate=0)):
        assert "TECHNIQUE:" in text and re.search(r"IMPRESSION:|Impression:", text)
        assert "\n1. " in text and "conus" in text.lower()
        rows = {FULL.get(ln.split(":")[0], ln.split(":")[0]): ln for ln in text.splitlines()}
        assert all(lvl in rows for lvl in LEVELS)
        for i, lvl in enumerate(LEVELS):
            row = rows[lvl]
            if lvl != s["level"] and lvl in s["incidental_bulges"]:
                assert "bulge" in row
            if lvl != s["level"] and s["degeneration"][i] > 0:
                assert re.search(r"desiccat|degenera|height loss", row, re.IGNORECASE)


# --- negation, plan, typos, speed ------------------------------------------------------------


def test_negations_are_common():
    sts = states(300, seed=14, has_mri=True)
    note_texts = [t for t, _ in notes_for(sts, seed=14, typo_rate=0)]
    flags = (
        r"[Dd]enies bowel|[Nn]o bowel|B/B|saddle|[Nn]o fever|[Nn]o h/o cancer|malignancy|Red flags"
    )
    assert np.mean([bool(re.search(flags, t)) for t in note_texts]) > 0.8
    assert (
        np.mean(
            [bool(re.search(r"\b(No|no|Denies|denies|[Nn]egative|neg)\b", t)) for t in note_texts]
        )
        > 0.95
    )
    for text, _ in reports_for(sts, seed=14, typo_rate=0):
        assert re.search(
            r"\bNo (spinal canal|stenosis|neural|disc|significant|fracture|listhesis|canal)|patent",
            text,
        )


def test_plan_discusses_several_options_without_choosing():
    sts = states(300, seed=15)
    for text, _ in notes_for(sts, seed=15, typo_rate=0):
        assert re.search(r"\bPT\b|physical therapy", text)
        assert re.search(r"ESI|injection", text)
        assert not re.search(
            r"scheduled for|will proceed with|booked for|consent signed", text, re.IGNORECASE
        )


def test_typos_are_rare_keep_word_count_and_spare_numbers():
    sts = states(300, seed=16, has_mri=True)
    changed = total = 0
    for with_typos, clean in [
        (notes_for(sts, seed=16), notes_for(sts, seed=16, typo_rate=0)),
        (reports_for(sts, seed=16), reports_for(sts, seed=16, typo_rate=0)),
    ]:
        for (a, fa), (b, fb) in zip(with_typos, clean):
            assert fa == fb
            wa, wb = a.split(), b.split()
            assert len(wa) == len(wb)
            for x, y in zip(wa, wb):
                if any(ch.isdigit() for ch in y):
                    assert x == y
                changed += x != y
                total += 1
    assert 0.002 < changed / total < 0.01

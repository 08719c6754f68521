"""The synthetic spine clinic note: history, exam, assessment and plan written from the true state.

Sentences come from the builders in `note_history`, `note_social`, `note_exam` and `note_plan`;
this module orders them, picks a layout (headers, prose or a mix), fits the length into
[MIN_WORDS, MAX_WORDS] and adds typos. Facts are collected from the sentences that survive.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import note_exam, note_history, note_plan, note_social
from .phrasing import TYPO_RATE, Chart, Dice, Line, add_typos, facts_of, line, word_count

NOTE_FACTS: tuple[str, ...] = (
    "workers_comp",
    "depression",
    "anxiety",
    "opioid_use",
    "prior_spine_surgery",
    "current_smoker",
    "chronic_symptoms",
    "severe_disability",
    "fear_avoidance",
    "unrealistic_expectations",
    "leg_dominant_pain",
    "positive_slr",
    "motor_deficit",
    "leg_side",
    "unstable_slip",
    "listhesis",
)
MIN_WORDS, MAX_WORDS = 80, 400

_HEADERS = {
    "hpi": ("HPI:", "History:", "HISTORY OF PRESENT ILLNESS:", "Subjective:"),
    "pmh": ("PMH:", "Past medical history:", "PMHx:"),
    "meds": ("Meds:", "Medications:"),
    "social": ("SH:", "Social:", "Social history:"),
    "ros": ("ROS:", "Review of systems:"),
    "exam": ("Exam:", "PE:", "Physical exam:", "EXAM:"),
    "imaging": ("Imaging:", "Studies:"),
    "ap": ("A/P:", "Assessment/Plan:", "ASSESSMENT AND PLAN:", "Impression/Plan:"),
}


class Layout(NamedTuple):
    blocks: list[tuple[str, tuple[str, ...]]]  # (header or "", sections rendered in that block)
    sep: str  # between a header and its text
    joiner: str  # between blocks


def write_note(
    s: dict, rng: np.random.Generator, *, typo_rate: float = TYPO_RATE
) -> tuple[str, list[str]]:
    """Return (note text, sorted outcome-relevant facts the note states) for one hidden state."""
    d = Dice(rng)
    c = Chart(s, d)
    layout = _layout(d)
    headed_ap = bool(layout.blocks[-1][0])  # without an "A/P:" header the A/P needs a lead-in
    sections = _gather(c, lead_in=not headed_ap)
    fillers = list(note_plan.FILLER)
    _vary_length(sections, fillers, d)
    text = add_typos(_fit_length(sections, fillers, layout, d), d, typo_rate)
    return text, facts_of(ln for lines in sections.values() for ln in lines)


def _gather(c: Chart, lead_in: bool) -> dict[str, list[Line]]:
    d = c.d
    hpi = (
        note_history.onset(c)
        + note_history.proportion(c)
        + note_history.radiation(c)
        + note_history.claudication(c)
        + note_history.scores(c)
        + note_history.treatments(c)
    )
    exam = (
        note_exam.straight_leg_raise(c)
        + note_exam.motor(c)
        + note_exam.sensation(c)
        + note_exam.reflexes(c)
        + note_exam.exam_extras(c)
    )
    return {
        "hpi": [note_history.opening(c)] + d.shuffle(hpi),
        "pmh": d.shuffle(note_social.past_history(c)),
        "meds": note_history.medications(c),
        "social": d.shuffle(note_social.work(c) + note_social.smoking(c) + note_social.psych(c)),
        "ros": note_social.red_flags(c),
        "exam": d.shuffle(exam),
        "imaging": note_exam.imaging(c),
        "ap": note_plan.assessment(c, lead_in=lead_in) + note_plan.plan(c),
    }


def _layout(d: Dice) -> Layout:
    middle = d.shuffle(["pmh", "meds", "social", "ros"])
    history = tuple(["hpi"] + middle)
    style = d.u()
    if style < 0.5:  # every section under its own header
        blocks = [(d.pick(_HEADERS[k]), (k,)) for k in history + ("exam", "imaging", "ap")]
    elif style < 0.75:  # prose history, headed exam and assessment/plan
        blocks = [
            ("", history),
            (d.pick(_HEADERS["exam"]), ("exam", "imaging")),
            (d.pick(_HEADERS["ap"]), ("ap",)),
        ]
    else:  # all prose; the assessment then carries its own "Impression:" lead-in
        blocks = [
            ("", history),
            (d.pick(("", "On exam:", "Exam:")), ("exam", "imaging")),
            ("", ("ap",)),
        ]
    return Layout(blocks, d.pick((" ", " ", "\n")), d.pick(("\n", "\n\n")))


def _render(sections: dict[str, list[Line]], layout: Layout) -> str:
    blocks = []
    for header, keys in layout.blocks:
        body = " ".join(ln.text for k in keys for ln in sections[k])
        if body:
            blocks.append(f"{header}{layout.sep}{body}" if header else body)
    return layout.joiner.join(blocks)


def _vary_length(sections: dict[str, list[Line]], fillers: list, d: Dice) -> None:
    """Terse notes drop optional sentences; verbose ones add extra history."""
    mode = d.u()
    if mode < 0.3:
        for key, lines in sections.items():
            sections[key] = [ln for ln in lines if ln.keep >= 2 or d.chance(0.5)]
    elif mode > 0.75:
        for _ in range(d.int(6, 20)):
            _add_filler(sections, fillers, d)


def _fit_length(sections: dict[str, list[Line]], fillers: list, layout: Layout, d: Dice) -> str:
    """Pad with neutral sentences or trim the least important ones until the note fits."""
    text = _render(sections, layout)
    while word_count(text) < MIN_WORDS and fillers:
        _add_filler(sections, fillers, d)
        text = _render(sections, layout)
    while word_count(text) > MAX_WORDS:
        spots = [
            (ln.keep, k, i)
            for k, lines in sections.items()
            for i, ln in enumerate(lines)
            if ln.keep < 3
        ]
        lowest = min(spot[0] for spot in spots)
        _, key, i = d.pick([spot for spot in spots if spot[0] == lowest])
        del sections[key][i]
        text = _render(sections, layout)
    return text


def _add_filler(sections: dict[str, list[Line]], fillers: list, d: Dice) -> None:
    if not fillers:
        return
    key, text = fillers.pop(d.int(0, len(fillers) - 1))
    lines = sections[key]
    first = 1 if key in ("hpi", "ap") else 0  # the opening and the assessment stay first
    lines.insert(d.int(first, len(lines)), line(text, keep=0))

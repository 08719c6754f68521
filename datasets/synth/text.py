"""Free text of the synthetic cohort: the clinic note and the lumbar MRI report.

    from spinecast.datasets.synth.text import write_note, write_report
    note, note_facts = write_note(state_row, rng)
    report, report_facts = write_report(state_row, rng)   # (None, []) without MRI

Both are written from the patient's true hidden state (STATE.md), using only the given Generator
for randomness, so the same seed gives the same bytes in any process. The facts lists (sorted)
name the outcome-relevant facts that hold for the patient AND that the text states positively,
so that a benchmark can count what is known only from text. Each fact that holds is left out of a
document with probability ~0.10 to 0.15, and then out of every sentence of it. A fact counts as
stated only when a sentence says it in words: leg_dominant_pain needs an explicit back-versus-leg
statement (pain scores alone do not count), chronic_symptoms a duration over a year,
severe_disability an ODI value over 56, leg_side and compression_side a named side.
Negations ("denies depression", "SLR negative bilaterally") are never listed.
"""

from .notes import NOTE_FACTS, write_note
from .reports import REPORT_FACTS, write_report

FACTS: tuple[str, ...] = tuple(dict.fromkeys(NOTE_FACTS + REPORT_FACTS))

__all__ = ["FACTS", "NOTE_FACTS", "REPORT_FACTS", "write_note", "write_report"]

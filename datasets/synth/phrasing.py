"""Shared machinery for the synthetic clinic notes and MRI reports.

`Dice` hands out pre-drawn uniforms from the caller's Generator: one numpy call per few hundred
decisions instead of one per decision is what keeps 10,000 note + report pairs within seconds.
Everything here is deterministic given the Generator (no `random`, no iteration over sets).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

TYPO_RATE = 0.005  # fraction of words with a typo, as in hurried real notes
_BATCH = 256


class Dice:
    """Random choices for text, drawn from a `numpy.random.Generator` in batches."""

    def __init__(self, rng: np.random.Generator):
        self.u = _uniforms(rng).__next__  # u() -> float in [0, 1)

    def chance(self, p: float) -> bool:
        return self.u() < p

    def pick(self, options):
        return options[int(self.u() * len(options))]

    def int(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both ends included."""
        return lo + int(self.u() * (hi - lo + 1))

    def shuffle(self, items: list) -> list:
        for i in range(len(items) - 1, 0, -1):
            j = int(self.u() * (i + 1))
            items[i], items[j] = items[j], items[i]
        return items


def _uniforms(rng: np.random.Generator):
    while True:
        yield from rng.random(_BATCH).tolist()


class Line(NamedTuple):
    """One sentence of a note or report and the outcome-relevant facts it states."""

    text: str
    facts: tuple[str, ...] = ()
    keep: int = 1  # trimming order: 0 filler, 1 optional, 2 carries a fact, 3 never trimmed


def line(text: str, *facts: str, keep: int | None = None) -> Line:
    if keep is None:
        keep = 2 if facts else 1
    return Line(text, tuple(facts), keep)


def say(dice: Dice, forms: tuple[str, ...], *facts: str, keep: int | None = None, **fields) -> Line:
    """A `Line` from one of several phrasings; `fields` fill the `{name}` slots of the template."""
    text = dice.pick(forms)
    return line(text.format(**fields) if fields else text, *facts, keep=keep)


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def join_words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b, and c'."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def word_count(text: str) -> int:
    return len(text.split())


def facts_of(lines) -> list[str]:
    # sorted() makes the order independent of set iteration order
    return sorted({f for ln in lines for f in ln.facts})


# --- sides, levels, roots -------------------------------------------------------------------

_SIDE = {
    "left": ("left", "left", "L"),
    "right": ("right", "right", "R"),
    "bilateral": ("bilateral", "bilateral", "b/l"),
}
_LIMB = {  # with the article, since "both legs" takes none
    "left": ("the left leg", "the left lower extremity", "the LLE", "the L leg"),
    "right": ("the right leg", "the right lower extremity", "the RLE", "the R leg"),
    "bilateral": ("both legs", "both lower extremities", "BLE", "the legs bilaterally"),
}
_ON_SIDE = {
    "left": ("on the left", "on the L", "L", "left"),
    "right": ("on the right", "on the R", "R", "right"),
    "bilateral": ("bilaterally", "bilaterally", "b/l", "bilaterally"),
}


def side_word(side: str, dice: Dice) -> str:
    return dice.pick(_SIDE[side])


def limb(side: str, dice: Dice) -> str:
    return dice.pick(_LIMB[side])


def on_side(side: str, dice: Dice) -> str:
    return dice.pick(_ON_SIDE[side])


_LEVEL_SHORT = {
    "L1-L2": "L1-2",
    "L2-L3": "L2-3",
    "L3-L4": "L3-4",
    "L4-L5": "L4-5",
    "L5-S1": "L5-S1",
}


def level_name(level: str, dice: Dice) -> str:
    """'L4-L5', 'L4-5' or 'L4/5' (clinicians write all three)."""
    form = dice.u()
    if form < 0.45:
        return level
    if form < 0.85:
        return _LEVEL_SHORT.get(level, level)
    return level.replace("-", "/")


# --- durations -------------------------------------------------------------------------------


def duration_phrase(weeks: float, dice: Dice) -> tuple[str, str]:
    """('3 months', '3-month') for a symptom duration.

    Rounded so that the stated value never crosses the one-year line the outcome model uses:
    a duration over 52 weeks always reads as at least 13 months, 52 weeks or less as at most 12.
    """
    if weeks < 8:
        n = max(1, round(weeks))
        return (f"{n} week" if n == 1 else f"{n} weeks"), f"{n}-week"
    if weeks <= 52:
        n = min(12, max(2, round(weeks / 4.345)))
        if n == 12 and dice.chance(0.5):
            return "a year", "1-year"
        return f"{n} months", f"{n}-month"
    if weeks < 104:
        if dice.chance(0.25):
            return "more than a year", "more than 1-year"
        n = max(13, round(weeks / 4.345))
        return f"{n} months", f"{n}-month"
    n = max(2, round(weeks / 52.18))
    return f"{n} years", f"{n}-year"


# --- typos -----------------------------------------------------------------------------------

_PUNCT = ".,;:)("


def add_typos(text: str, dice: Dice, rate: float = TYPO_RATE) -> str:
    """Swap or drop one letter in about `rate` of the words; numbers and short words are spared.

    Never adds or removes a whole word, so word counts are unchanged. Word positions are drawn
    by geometric skips (one uniform per typo, not per word).
    """
    if rate <= 0:
        return text
    words = text.split(" ")
    log_q = math.log1p(-rate)
    i = int(math.log(1.0 - dice.u()) / log_q)
    while i < len(words):
        # a hit on a number or short word moves to the next word that can take a typo,
        # so that the overall rate stays near `rate`
        while i < len(words) and not _can_typo(words[i]):
            i += 1
        if i < len(words):
            words[i] = _typo(words[i], dice)
        i += 1 + int(math.log(1.0 - dice.u()) / log_q)
    return " ".join(words)


def _can_typo(word: str) -> bool:
    core = word.strip(_PUNCT)
    return len(core) >= 4 and core.isalpha()


def _typo(word: str, dice: Dice) -> str:
    core = word.strip(_PUNCT)
    start = word.index(core)
    k = dice.int(1, len(core) - 2)  # keep the first letter, as real typos mostly do
    if dice.chance(0.5):
        typo = core[:k] + core[k + 1] + core[k] + core[k + 2 :]
    else:
        typo = core[:k] + core[k + 1 :]
    return word[:start] + typo + word[start + len(core) :]


# --- per-patient context ---------------------------------------------------------------------

MENTION_P = 0.85  # each outcome-relevant fact that holds is written down with this probability


class Chart:
    """One patient's hidden state plus the per-document decisions every sentence must respect.

    Whether a fact is mentioned is decided once per document (`says`), so that a fact left out
    is left out of every sentence, and the facts list stays exact.
    """

    def __init__(self, s: dict, dice: Dice):
        self.s = s
        self.d = dice
        self._says: dict[str, bool] = {}
        self._once: dict[str, object] = {}
        side = s["leg_side"]
        self.side = side if side in _SIDE else ""
        self.female = s["sex"] == "female"

    def says(self, fact: str, p: float = MENTION_P) -> bool:
        if fact not in self._says:
            self._says[fact] = self.d.chance(p)
        return self._says[fact]

    def once(self, key: str, draw):
        """A wording drawn on first use and reused, so that repeated mentions agree."""
        if key not in self._once:
            self._once[key] = draw()
        return self._once[key]

    @property
    def show_side(self) -> bool:
        return bool(self.side) and self.says("leg_side", 0.88)

    def he(self) -> str:
        return "she" if self.female else "he"

    def his(self) -> str:
        return "her" if self.female else "his"

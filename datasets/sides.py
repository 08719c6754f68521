"""The side of the leg symptoms in the note and of the compressed nerve root in the report, read
from the text, and whether the two agree: the agreement decides who benefits from decompression
(CLINICAL.md), and a frozen sentence encoder barely tells "left" from "right" (the two embed
alike), so the network is given these facts as numbers beside the structured fields.

A small lexicon, not a model, so that it reads other sites' notes for the reason a clinician
would: side words and their usual abbreviations (L, R, lt, rt, LLE, b/l, ...) in English, German,
French, Spanish, Italian, Portuguese and Dutch. A mention in a negated clause ("SLR negative on
the left", "denies right leg pain") does not count. In the report, the sides named in a clause
about a nerve root or what touches it (contact, displacement, compression) count; "contacting the
left L5 root without displacement" keeps the left. A document that states no side gives NaN (the
missing indicator), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from .schema import TEXT_COLUMNS  # (clinical_note, imaging_report)

SIDE_FEATURES = (
    "note_side_left",  # share of the note's side mentions naming the left (bilateral: both sides)
    "note_side_right",
    "report_side_left",  # ... of the report's compression sentences
    "report_side_right",
    "side_agreement",  # note_left * report_left + note_right * report_right, in [0, 1]
)

_LEFT = {
    *("left", "lt", "l", "lle", "sinistral"),
    *("links", "linke", "linken", "linker", "linkes", "linksseitig", "li", "linkerzijde"),
    *("gauche", "gauches", "izquierda", "izquierdo", "izq", "izda", "izdo"),
    *("sinistra", "sinistro", "esquerda", "esquerdo", "esq"),
}
_RIGHT = {
    *("right", "rt", "r", "rle", "dextral"),
    *("rechts", "rechte", "rechten", "rechter", "rechtes", "rechtsseitig", "re", "rechterzijde"),
    *("droite", "droit", "droits", "droites", "derecha", "derecho", "dcha", "dcho"),
    *("destra", "destro", "direita", "direito", "dta"),
}
_BOTH = {
    *("bilateral", "bilaterally", "bilat", "ble", "beidseits", "beidseitig", "bds", "beiderseits"),
    *("bilatéral", "bilatérale", "bilatéraux", "bilateralmente", "bilaterale", "bilaterali"),
    *("tweezijdig", "dubbelzijdig", "beiderzijds"),
}
# A negation before a side negates it ("denies right leg pain", but "contacting the left L5 root
# without displacement" keeps the left); a negative result negates its whole clause ("SLR neg b/l").
_NEGATION = {
    *("no", "not", "denies", "denied", "deny", "without", "nil", "free", "never", "nor"),
    *("kein", "keine", "keinen", "keiner", "nicht", "ohne", "sans", "pas", "aucun", "aucune"),
    *("niega", "niegan", "non", "nessun", "nessuna", "senza", "geen", "zonder", "nega", "sem"),
    *("nao", "não", "sin", "ni"),
}
_NEGATIVE = {
    *("negative", "neg", "absent", "none", "negativ", "négatif", "négative", "negativo"),
    *("negativa", "negatief", "assente", "ausente", "fehlend"),
}
_NORMAL = {  # a normal finding names a side without a symptom there ("SILT bilaterally")
    *("normal", "normally", "intact", "silt", "symmetric", "symmetrical", "painless", "full"),
    *("unremarkable", "wnl", "palpable", "intakt", "unauffällig", "seitengleich", "symmetrisch"),
    *("normale", "normaux", "normales", "intacte", "symétrique", "normali", "simmetrici"),
    *("normales", "intacto", "intacta", "simétrico", "simétricos", "normaal", "symmetrisch"),
}
_ROOT_STEMS = (  # a clause about a nerve root: the root, or what touches, displaces, compresses it
    *("root", "nerve", "radic", "recess", "wurzel", "racine", "raíz", "raiz", "wortel"),
    *("contact", "abut", "touch", "kontakt", "tangier", "berühr", "contatt", "toca", "conflit"),
    *("displac", "deflect", "deviat", "shift", "effac", "encroach", "verlager", "verdräng"),
    *("pelotier", "refoul", "déplac", "deplac", "desplaz", "spost", "dislocat", "verplaats"),
    *("compress", "imping", "entrap", "pinch", "flatten", "strangul", "kompri", "kompress"),
    *("bedräng", "comprim", "compres", "schiacc", "aplast", "écras", "ecras", "tether"),
)
_WORD = re.compile(r"\w+")
# Sentences, cut again where a contrast starts ("5/5 except EHL 4/5 on the left"); a normal
# finding drops the rest of its segment, a negative result only its comma-separated clause ("SLR
# positive on the left, negative on the right").
_SEGMENT = re.compile(
    r"[.;!?\n]+|\b(?:but|however|except|otherwise|aber|jedoch|sonst|außer|ausser|mais|sauf"
    r"|sinon|pero|excepto|salvo|ma|tranne|maar|behalve|exceto)\b"
)
_PHRASES = {  # on the lowercased text, before the split into words: one pass, by group
    "bilateral": r"\bb\s*/\s*l\b|\bboth\s+(?:legs|sides|lower)|\b[lr]\s*[>=<]\s*[lr]\b",
    "rule_out": r"\br\s*/\s*o\b",
    "level": r"\b[lr]\s*-\s*(?=[^\W\d_])",  # "L-spine": the lumbar spine
    "normal": r"\b5\s*/\s*5\b|\b2\s*\+",  # full strength, a normal reflex
}
_PHRASE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PHRASES.items()))
_AS = {"bilateral": " bilateral ", "rule_out": " rule out ", "level": " ", "normal": " normal "}


def side_features(notes: Iterable, reports: Iterable) -> np.ndarray:
    """Note and report texts (None where absent) -> (N, len(SIDE_FEATURES)) float64, NaN where a
    document states no side."""
    rows = [_row(_read(n), _read(r)) for n, r in zip(notes, reports)]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SIDE_FEATURES))


def frame_side_features(frame: pd.DataFrame) -> np.ndarray:
    """`side_features` of a cohort frame's (or `records.Records`') note and report (an absent
    column: all absent)."""
    n = len(frame)
    return side_features(*(list(frame[c]) if c in frame else [None] * n for c in TEXT_COLUMNS))


def _row(note: Reading | None, report: Reading | None) -> list[float]:
    symptoms = _shares(note.sides) if note else None
    compression = _shares(report.root_sides) if report else None
    agreement = (
        min(1.0, symptoms[0] * compression[0] + symptoms[1] * compression[1])
        if symptoms and compression
        else np.nan
    )
    nan = (np.nan, np.nan)
    return [*(symptoms or nan), *(compression or nan), agreement]


def _shares(mentions: list[str]) -> tuple[float, float] | None:
    """(share naming the left, share naming the right) of side mentions, or None."""
    if not mentions:
        return None
    left = sum(s in ("left", "both") for s in mentions) / len(mentions)
    right = sum(s in ("right", "both") for s in mentions) / len(mentions)
    return left, right


class Reading(NamedTuple):
    sides: list[str]  # every side mentioned, not negated, not in a normal finding
    root_sides: list[str]  # those in clauses about a nerve root


def _read(text) -> Reading | None:
    if not isinstance(text, str) or not text:
        return None
    text = _PHRASE.sub(lambda m: _AS[m.lastgroup], text.lower())
    every, about_roots = [], []
    for segment in _SEGMENT.split(text):
        for clause in segment.split(","):
            words = _WORD.findall(clause)
            if not _NORMAL.isdisjoint(words):
                break  # this clause and the rest of its segment: "5/5 in A, B and C bilaterally"
            if not _NEGATIVE.isdisjoint(words):
                continue
            if not _NEGATION.isdisjoint(words):
                words = words[: next(i for i, w in enumerate(words) if w in _NEGATION)]
            sides = [_SIDE_OF[w] for w in words if w in _SIDE_OF]
            every += sides
            if sides and _ROOT.search(" ".join(words)):
                about_roots += sides
    return Reading(every, about_roots)


def _typos(word: str) -> set[str]:
    """One letter left out or two swapped ("rght", "lfet"): a typo, not another word."""
    cut = {word[:i] + word[i + 1 :] for i in range(len(word))}
    swapped = {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)}
    return (cut | swapped) - {word, "let", "ight", "lft"}


def _stems(stems) -> re.Pattern:
    """Words that start with one of `stems`."""
    return re.compile(r"\b(?:" + "|".join(map(re.escape, stems)) + ")")


_SIDE_OF = {
    **{w: "right" for w in _RIGHT | _typos("right")},
    **{w: "left" for w in _LEFT | _typos("left")},
    **{w: "both" for w in _BOTH | _typos("bilateral") | _typos("bilaterally")},
}
_ROOT = _stems(_ROOT_STEMS)

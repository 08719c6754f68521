"""The synthetic lumbar MRI report: technique, alignment, conus, one line per level, impression.

The level lines come from `report_levels`; this module writes the header, the general findings
and the numbered impression, which repeats the key findings as the findings section stated them.
"""

from __future__ import annotations

import numpy as np

from .phrasing import TYPO_RATE, Chart, Dice, Line, add_typos, cap, facts_of, line, say
from .report_levels import LEVELS, SHORT, foramen, main_level, other_level, zone

REPORT_FACTS: tuple[str, ...] = (
    "listhesis",
    "root_compression",
    "compression_side",
    "foraminal_stenosis",
    "central_stenosis",
    "prior_spine_surgery",
)

_TITLE = (
    "MRI LUMBAR SPINE WITHOUT CONTRAST",
    "MRI L-SPINE W/O CONTRAST",
    "EXAM: MRI lumbar spine without contrast",
    "MR LUMBAR SPINE",
)
_TECHNIQUE = (
    "TECHNIQUE: Multiplanar, multisequence MR imaging of the lumbar spine without IV contrast.",
    "TECHNIQUE: Sagittal T1, T2 and STIR and axial T2-weighted images without contrast.",
    "TECHNIQUE: Routine noncontrast MRI of the lumbar spine.",
)
_COMPARISON = ("None.", "None available.", "Lumbar radiographs from {n} months prior.")
_SLIP = (
    "Grade {g} anterolisthesis of {upper} on {lower}.",
    "There is grade {g} anterolisthesis of {upper} on {lower}, measuring {mm} mm.",
    "Grade {g} degenerative spondylolisthesis at {upper}-{lower}.",
)
_ALIGNED = (
    "Normal alignment.",
    "Normal lumbar lordosis.",
    "Vertebral alignment is maintained.",
    "Straightening of the lumbar lordosis. No listhesis.",
)
_BODIES = (
    "Vertebral body heights are maintained. No fracture or marrow replacing lesion.",
    "Vertebral body heights and marrow signal are within normal limits.",
    "No compression fracture. No suspicious marrow lesion.",
)
_CONUS = (
    "Conus: Terminates at L1, normal in signal and morphology.",
    "The conus medullaris terminates at the L1 level and is normal in appearance.",
    "Conus medullaris ends at L1; normal.",
    "The conus terminates at T12-L1 and is normal.",
)
_POSTOP = ("Postsurgical changes of prior laminotomy {where}.", "Postoperative changes {where}.")
_SOFT_TISSUE = ("Paraspinal soft tissues are unremarkable.", "Paraspinal musculature is normal.")
_NOTHING = (
    "No significant spinal canal or neural foraminal stenosis.",
    "No disc herniation or neural impingement.",
    "No high-grade stenosis.",
)


def write_report(s: dict, rng: np.random.Generator, *, typo_rate: float = TYPO_RATE):
    """Return (report text, sorted facts it states), or (None, []) for a patient without MRI."""
    if not s["has_mri"]:
        return None, []
    d = Dice(rng)
    c = Chart(s, d)
    name = (lambda lvl: lvl) if d.chance(0.8) else SHORT.get  # "L4-L5" or "L4-5" throughout
    general = _general(c)
    levels = [
        main_level(c, name) if lvl == s["level"] else other_level(c, lvl, name) for lvl in LEVELS
    ]
    findings = general + [ln for lines in levels for ln in lines]
    impression = _impression(c, findings, name)
    text = "\n".join(
        _header(c)
        + ["", d.pick(("FINDINGS:", "Findings:"))]
        + [ln.text for ln in general]
        + [" ".join(ln.text for ln in lines) for lines in levels]
        + ["", d.pick(("IMPRESSION:", "Impression:"))]
        + [f"{i}. {ln.text}" for i, ln in enumerate(impression, 1)]
    )
    return add_typos(text, d, typo_rate), facts_of(findings + impression)


def _header(c: Chart) -> list[str]:
    d = c.d
    out = [d.pick(_TITLE)]
    if d.chance(0.7):
        reasons = ["Low back pain.", "LBP, failed conservative therapy."]
        if c.side:
            reasons += ["Low back pain with radiculopathy.", "Radiculopathy, lumbar region."]
        if c.s["claudication"]:
            reasons.append("Evaluate for stenosis.")
        out.append(d.pick(("CLINICAL INDICATION: ", "HISTORY: ", "INDICATION: ")) + d.pick(reasons))
    out.append(d.pick(_TECHNIQUE))
    out.append("COMPARISON: " + d.pick(_COMPARISON).format(n=d.int(2, 11)))
    return out


def _general(c: Chart) -> list[Line]:
    """Alignment, vertebral bodies, conus, postoperative change, paraspinal soft tissues."""
    d, s, out = c.d, c.s, []
    g = int(s["listhesis_grade"])
    label = "Alignment: " if d.chance(0.5) else ""
    upper, lower = s["level"].split("-")
    if g > 0 and c.says("listhesis", 0.95):
        mm = d.int(3, 9) if g == 1 else d.int(10, 18)
        slip = d.pick(_SLIP).format(g=g, upper=upper, lower=lower, mm=mm)
        out.append(line(label + slip, "listhesis"))
    elif g == 0:
        out.append(line(label + d.pick(_ALIGNED)))
    if d.chance(0.8):
        out.append(say(d, _BODIES))
    out.append(say(d, _CONUS))
    if s["prior_spine_surgery"] and c.says("prior_spine_surgery"):
        where = (
            f"at {s['prior_surgery_level']}"
            if s["prior_surgery_level"]
            else "in the lower lumbar spine"
        )
        out.append(say(d, _POSTOP, "prior_spine_surgery", where=where))
    if d.chance(0.5):
        out.append(say(d, _SOFT_TISSUE))
    return out


def _impression(c: Chart, findings: list[Line], name) -> list[Line]:
    """Numbered conclusions; a finding appears here only if the findings section stated it."""
    d, s = c.d, c.s
    stated = {f for ln in findings for f in ln.facts}  # membership tests only, never iterated
    lvl, out = name(s["level"]), []
    if "listhesis" in stated and d.chance(0.9):
        upper, lower = s["level"].split("-")
        out.append(
            line(
                f"Grade {int(s['listhesis_grade'])} anterolisthesis of {upper} on {lower}.",
                "listhesis",
            )
        )
    out += _impression_disc(c, stated, lvl)
    if "central_stenosis" in stated and d.chance(0.9):
        out.append(
            line(
                f"{cap(s['central_stenosis'])} spinal canal stenosis at {lvl}.", "central_stenosis"
            )
        )
    if "foraminal_stenosis" in stated and d.chance(0.7):
        out.append(
            line(cap(f"{foramen(c)} neural foraminal narrowing at {lvl}."), "foraminal_stenosis")
        )
    if not out:
        out.append(say(d, _NOTHING))
    return out + _impression_degeneration(c, name)


def _impression_disc(c: Chart, stated: set, lvl: str) -> list[Line]:
    d, s = c.d, c.s
    kind = s["herniation"]
    disc = f"{lvl} {zone(c, s['herniation_side'])} disc {kind}"
    if "root_compression" in stated and d.chance(0.85):
        root, facts = _root_as_stated(c, stated)
        if kind in ("protrusion", "extrusion"):
            return [line(f"{disc} compressing {root}.", *facts)]
        return [line(f"Compression of {root} at {lvl}.", *facts)]
    if kind in ("protrusion", "extrusion"):
        return [line(f"{disc}.")]
    return []


def _root_as_stated(c: Chart, stated: set) -> tuple[str, tuple[str, ...]]:
    """The compressed root, with its side only if the findings gave the side."""
    root, side = c.s["root"], c.s["compression_side"]
    if "compression_side" not in stated:
        return f"the traversing {root} nerve root", ("root_compression",)
    if side == "bilateral":
        return f"the bilateral traversing {root} nerve roots", (
            "root_compression",
            "compression_side",
        )
    return f"the traversing {side} {root} nerve root", ("root_compression", "compression_side")


def _impression_degeneration(c: Chart, name) -> list[Line]:
    d, s = c.d, c.s
    degs = [int(g) for g in s["degeneration"]]
    worst = max(range(5), key=lambda i: degs[i])
    if degs[worst] >= 2 and d.chance(0.7):
        where = name(LEVELS[worst])
        if sum(g > 0 for g in degs) >= 3:
            return [line(f"Multilevel degenerative disc disease, most pronounced at {where}.")]
        return [line(f"Degenerative disc disease at {where}.")]
    bulges = [name(lvl) for lvl in LEVELS if lvl in s["incidental_bulges"] and lvl != s["level"]]
    if bulges and d.chance(0.5):
        return [line(f"Incidental disc bulge at {' and '.join(bulges)} without stenosis.")]
    return []

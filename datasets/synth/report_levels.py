"""The per-level lines of the synthetic MRI report (L1-L2 .. L5-S1).

Incidental degeneration and bulges at the other levels are always reported: they are common
without pain and carry no prognosis, so a model must learn to look past them. The prognostic
findings at the symptomatic level are occasionally left out, as in real reports.
"""

from __future__ import annotations

from .phrasing import Chart, Line, cap, line, say

LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
SHORT = {"L1-L2": "L1-2", "L2-L3": "L2-3", "L3-L4": "L3-4", "L4-L5": "L4-5", "L5-S1": "L5-S1"}

_DEGENERATION = {  # by grade 1..3
    1: (
        "Mild disc desiccation.",
        "Mild disc desiccation without height loss.",
        "Early disc desiccation.",
    ),
    2: (
        "Disc desiccation with mild disc height loss.",
        "Moderate disc desiccation and height loss.",
        "Moderate degenerative disc disease with desiccation.",
    ),
    3: (
        "Severe disc height loss and desiccation.",
        "Advanced disc degeneration with near-complete height loss.",
        "Collapsed, desiccated disc.",
    ),
}
_BULGE = ("Mild diffuse disc bulge.", "Small broad-based disc bulge.", "Minimal disc bulge.")
_NORMAL = (
    "Unremarkable.",
    "Normal.",
    "No disc herniation.",
    "No disc bulge or herniation. No stenosis.",
)
_NO_STENOSIS = (
    "No spinal canal or neural foraminal stenosis.",
    "No stenosis.",
    "No significant canal or foraminal narrowing.",
)
_POSTERIOR = (
    "Facet arthropathy and ligamentum flavum thickening.",
    "Bilateral facet hypertrophy.",
    "Bilateral facet arthropathy with small effusions.",
)
_MODIC = (
    "Type {m} Modic endplate changes.",
    "Modic type {m} ({kind}) endplate signal change.",
    "{Kind} (Modic type {m}) endplate changes.",
)
_CENTRAL_BULGE = ("Diffuse disc bulge.", "Broad-based disc bulge.")
_RECESS = (
    "Findings compress {root} in the lateral recess.",
    "Lateral recess narrowing compresses {root}.",
)
_MIGRATION = (" with caudal migration", " with cranial migration", " extending {n} mm inferiorly")
_COMPRESSES = (
    "which compresses",
    "with mass effect on",
    "impinging on",
    "that displaces and compresses",
)
_ROOT_ONE = (
    "the traversing {side} {root} nerve root",
    "the descending {side} {root} nerve root",
    "the {side} {root} nerve root",
)
_ROOT_BOTH = ("the bilateral traversing {root} nerve roots", "both traversing {root} nerve roots")
_CONTACT = "{desc} contacting the traversing {side} {root} nerve root without displacement."
_CANAL_AND_FORAMINA_OPEN = (
    "No spinal canal or neural foraminal stenosis.",
    "No canal or foraminal narrowing.",
)
_CANAL_OPEN = ("No spinal canal stenosis.", "The central canal is patent.")
_CANAL = (
    "{Sev} spinal canal stenosis{tail}.",
    "Resultant {sev} central canal stenosis{tail}.",
    "{Sev} narrowing of the central canal{tail}.",
)
_FORAMINA_OPEN = ("No neural foraminal narrowing.", "Neural foramina are patent.")


def other_level(c: Chart, lvl: str, name) -> list[Line]:
    """A level away from the symptomatic one: incidental degeneration and bulges, always said."""
    d, s = c.d, c.s
    parts = []
    deg = int(s["degeneration"][LEVELS.index(lvl)])
    if deg > 0:
        parts.append(d.pick(_DEGENERATION[deg]))
    if lvl in s["incidental_bulges"]:
        parts.append(d.pick(_BULGE))
    if not parts:
        parts.append(d.pick(_NORMAL))
    elif d.chance(0.85):
        parts.append(d.pick(_NO_STENOSIS))
    return [line(f"{name(lvl)}: " + " ".join(parts))]


def main_level(c: Chart, name) -> list[Line]:
    """The symptomatic level: disc, posterior elements, canal, foramina, endplates."""
    d, s = c.d, c.s
    out = [line(f"{name(s['level'])}:")]
    deg = int(s["degeneration"][LEVELS.index(s["level"])])
    if deg > 0:
        out.append(say(d, _DEGENERATION[deg]))
    out += _disc(c)
    if s["diagnosis"] in ("spinal_stenosis", "spondylolisthesis") and d.chance(0.7):
        out.append(say(d, _POSTERIOR))
    out += _canal_and_foramina(c)
    m = int(s["modic"])
    if m > 0 and d.chance(0.9):
        kind = "edematous" if m == 1 else "fatty"
        out.append(say(d, _MODIC, m=m, kind=kind, Kind=cap(kind)))
    return out


def _disc(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    kind, hside = s["herniation"], s["herniation_side"]
    compress = bool(s["root_compression"]) and c.says("root_compression", 0.95)
    if kind in ("none", "bulge"):  # any compression comes from the stenosis, in the lateral recess
        out = [say(d, _CENTRAL_BULGE)] if kind == "bulge" else []
        if compress:
            root, facts = _root(c)
            out.append(say(d, _RECESS, *facts, root=root))
        return out
    desc = f"{zone(c, hside)} disc {kind}"
    if kind == "extrusion" and d.chance(0.4):
        desc += d.pick(_MIGRATION).format(n=d.int(4, 9))
    if compress:
        root, facts = _root(c)
        there = d.pick(("There is a ", ""))
        return [line(cap(f"{there}{desc} {d.pick(_COMPRESSES)} {root}."), *facts)]
    if hside in ("left", "right") and d.chance(0.35):
        return [line(cap(_CONTACT.format(desc=desc, side=hside, root=s["root"])))]
    return [line(cap(desc + (". No nerve root compression." if d.chance(0.3) else ".")))]


def zone(c: Chart, hside: str) -> str:
    """'left paracentral': drawn once per report, so findings and impression agree."""
    return c.once("zone", lambda: _draw_zone(c, hside))


def _draw_zone(c: Chart, hside: str) -> str:
    d, s = c.d, c.s
    if hside not in ("left", "right"):
        return "central" if hside == "central" else "broad-based"
    reaches_foramen = s["foraminal_stenosis"] and s["foraminal_side"] in (hside, "bilateral")
    if reaches_foramen and d.chance(0.3):
        return f"{hside} paracentral and foraminal"
    return d.pick((f"{hside} paracentral", f"{hside} paracentral", f"{hside} subarticular"))


def _root(c: Chart) -> tuple[str, tuple[str, ...]]:
    """'the traversing left L5 nerve root', with the side left out about one time in ten."""
    d, s = c.d, c.s
    root, side = s["root"], s["compression_side"]
    if not side or not c.says("compression_side", 0.9):
        return f"the traversing {root} nerve root", ("root_compression",)
    forms = _ROOT_BOTH if side == "bilateral" else _ROOT_ONE
    return d.pick(forms).format(side=side, root=root), ("root_compression", "compression_side")


def _canal_and_foramina(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    sev, foraminal = s["central_stenosis"], bool(s["foraminal_stenosis"])
    if sev == "none" and not foraminal and d.chance(0.6):
        return [say(d, _CANAL_AND_FORAMINA_OPEN)]
    out = []
    if sev == "none" and d.chance(0.8):
        out.append(say(d, _CANAL_OPEN))
    elif sev != "none" and c.says("central_stenosis", 0.95):
        tail = " with crowding of the cauda equina" if sev == "severe" and d.chance(0.4) else ""
        facts = ("central_stenosis",) if sev in ("moderate", "severe") else ()
        out.append(say(d, _CANAL, *facts, sev=sev, Sev=cap(sev), tail=tail))
    if foraminal and c.says("foraminal_stenosis"):
        out.append(line(cap(f"{foramen(c)} neural foraminal narrowing."), "foraminal_stenosis"))
    elif not foraminal and d.chance(0.8):
        out.append(say(d, _FORAMINA_OPEN))
    return out


def foramen(c: Chart) -> str:
    """'moderate left': drawn once per report, so findings and impression agree on the grade."""
    side = c.s["foraminal_side"]
    grade = c.once("foramen_grade", lambda: c.d.pick(("mild", "moderate", "moderate", "severe")))
    return f"{grade} {side}" if side else grade

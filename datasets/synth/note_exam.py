"""Exam and imaging sentences of the clinic note.

Motor grades follow the myotome of the compressed root (L4 ankle dorsiflexion, L5 great-toe
extension, S1 plantar flexion), sensation its dermatome, reflexes the patellar (L4) or Achilles
(S1) reflex; L5 has no reliable reflex.
"""

from __future__ import annotations

from .phrasing import Chart, Line, cap, level_name, limb, on_side, say, side_word

_MYOTOME = {
    "L4": ("ankle dorsiflexion", "tibialis anterior", "ankle DF"),
    "L5": ("EHL", "great toe extension", "EHL/great toe extension"),
    "S1": ("plantar flexion", "gastrocnemius", "ankle plantarflexion"),
}
_SENSORY = {
    "L4": ("medial shin", "medial lower leg"),
    "L5": ("dorsum of the foot", "first web space"),
    "S1": ("lateral foot", "sole of the foot"),
}
_REFLEX = {"L4": ("patellar", "knee jerk"), "S1": ("Achilles", "ankle jerk")}

_SLR_SIDE = (
    "SLR positive {on} at {a} degrees.",
    "+SLR {s} at {a} deg.",
    "Straight-leg raise reproduces pain in {limb} at {a} degrees.",
    "Positive SLR {on} ({a} deg).",
)
_SLR = (
    "SLR positive at {a} degrees.",
    "Positive straight-leg raise at {a} deg.",
    "+SLR at {a} deg.",
)
_SLR_NEG = (
    "SLR negative bilaterally.",
    "Negative straight-leg raise.",
    "SLR neg b/l.",
    "Straight-leg raise negative.",
)
_WEAK_SIDE = (
    "{Myo} {g}/5 {on}.",
    "Weakness of {s} {myo} ({g}/5).",
    "Motor: {myo} {g}/5 {on}, otherwise 5/5.",
)
_WEAK = ("{Myo} {g}/5.", "Weakness of {myo} ({g}/5), otherwise 5/5.")
_STRONG = (
    "Strength 5/5 throughout BLE.",
    "Motor 5/5 in all lower extremity myotomes.",
    "No weakness.",
    "Full strength in hip flexion, knee extension, ankle DF/PF and EHL bilaterally.",
)
_NUMB_SIDE = (
    "Decreased sensation to light touch over the {s} {area}.",
    "Diminished LT sensation in the {s} {root} dermatome ({area}).",
    "Hypoesthesia {on} over the {area}.",
)
_NUMB = ("Decreased sensation over the {area}.", "Diminished LT in the {root} dermatome.")
_SENSATION_OK = (
    "Sensation intact to light touch.",
    "SILT bilaterally.",
    "Sensation grossly intact in all dermatomes.",
)
_REFLEX_LOW_SIDE = (
    "{Name} reflex 1+ {on}, 2+ contralateral.",
    "Diminished {s} {name} reflex.",
    "DTRs: {name} 1+ {on}, otherwise 2+.",
)
_REFLEX_LOW = ("Diminished {name} reflex.", "{Name} reflex 1+.")
_REFLEX_OK = (
    "DTRs 2+ and symmetric at patella and Achilles.",
    "Reflexes 2+ and symmetric.",
    "Patellar and Achilles reflexes 2+ bilaterally.",
)
_GENERAL = ("Well-appearing, in no acute distress.", "NAD.", "Pleasant, cooperative.")
_LUMBAR = (
    "Lumbar flexion limited by pain.",
    "Tender over the lumbar paraspinals.",
    "No midline spinous process tenderness.",
    "Decreased lumbar ROM.",
)
_GAIT = ("Gait normal; able to heel and toe walk.", "Normal gait.", "Antalgic gait.")
_UMN = ("No clonus; Babinski downgoing.", "Negative Hoffmann and Babinski.")

_UNSTABLE = (
    "Flexion-extension radiographs show {mm} mm of translation at {lvl}, c/w dynamic instability.",
    "Flex/ex films: {mm} mm translation at {lvl} (unstable).",
    "Dynamic films demonstrate {mm} mm of motion at {lvl}, consistent with instability.",
)
_STABLE = (
    "Flexion-extension films without abnormal motion ({mm} mm).",
    "No dynamic instability on flex/ex XR ({mm} mm translation).",
)
_MRI = (
    "MRI L-spine reviewed; see separate radiology report.",
    "MRI obtained and images reviewed with the pt.",
    "Recent MRI reviewed today.",
)
_NO_MRI = ("No MRI on file.", "Has not had an MRI.")


def _sides(c: Chart) -> dict[str, str]:
    """The ways of naming the symptomatic side, for templates with {s}, {on} and {limb}."""
    d = c.d
    return {"s": side_word(c.side, d), "on": on_side(c.side, d), "limb": limb(c.side, d)}


def straight_leg_raise(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if not s["slr_positive"]:
        return [say(d, _SLR_NEG)] if d.chance(0.7) else []
    if not c.says("positive_slr", 0.88):
        return []
    a = int(s["slr_angle"]) or 45
    if c.show_side:
        return [say(d, _SLR_SIDE, "positive_slr", "leg_side", a=a, **_sides(c))]
    return [say(d, _SLR, "positive_slr", a=a)]


def motor(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if not s["motor_deficit"]:
        return [say(d, _STRONG)] if d.chance(0.7) else []
    if not c.says("motor_deficit", 0.88):
        return []
    g = int(s["motor_grade"]) if int(s["motor_grade"]) in (3, 4) else 4
    myo = d.pick(_MYOTOME[s["root"]])
    if c.show_side:
        return [
            say(d, _WEAK_SIDE, "motor_deficit", "leg_side", g=g, myo=myo, Myo=cap(myo), **_sides(c))
        ]
    return [say(d, _WEAK, "motor_deficit", g=g, myo=myo, Myo=cap(myo))]


def sensation(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if not d.chance(0.75):
        return []
    if not s["sensory_deficit"]:
        return [say(d, _SENSATION_OK)]
    area, root = d.pick(_SENSORY[s["root"]]), s["root"]
    if c.show_side:
        return [say(d, _NUMB_SIDE, "leg_side", area=area, root=root, **_sides(c))]
    return [say(d, _NUMB, area=area, root=root)]


def reflexes(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if not d.chance(0.7):
        return []
    if not s["reflex_diminished"]:
        return [say(d, _REFLEX_OK)]
    if s["root"] not in _REFLEX:
        return []  # L5 has no reliable reflex to report
    name = d.pick(_REFLEX[s["root"]])
    if c.show_side:
        return [say(d, _REFLEX_LOW_SIDE, "leg_side", name=name, Name=cap(name), **_sides(c))]
    return [say(d, _REFLEX_LOW, name=name, Name=cap(name))]


def exam_extras(c: Chart) -> list[Line]:
    """General appearance, lumbar exam, gait, upper motor neuron signs: trimmed first."""
    d, out = c.d, []
    if d.chance(0.4):
        out.append(say(d, _GENERAL, keep=0))
    if d.chance(0.5):
        out.append(say(d, _LUMBAR, keep=0))
    if d.chance(0.4):
        out.append(say(d, _GAIT[2:] if c.s["motor_deficit"] else _GAIT, keep=0))
    if d.chance(0.25):
        out.append(say(d, _UMN, keep=0))
    return out


def imaging(c: Chart) -> list[Line]:
    d, s, out = c.d, c.s, []
    lvl = level_name(s["level"], d)
    t = float(s["translation_mm"])
    mm = f"{t:.0f}" if d.chance(0.5) else f"{t:.1f}"
    if s["diagnosis"] == "spondylolisthesis":
        if s["unstable_slip"] and c.says("unstable_slip", 0.9):
            out.append(say(d, _UNSTABLE, "unstable_slip", mm=mm, lvl=lvl))
        elif not s["unstable_slip"] and d.chance(0.6):
            out.append(say(d, _STABLE, mm=mm))
    if d.chance(0.5):
        out.append(say(d, _MRI if s["has_mri"] else _NO_MRI, keep=0))
    return out

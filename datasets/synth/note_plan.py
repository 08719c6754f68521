"""Assessment and plan of the clinic note, and neutral filler sentences used to vary length.

The plan discusses options and never says which treatment the patient will get: the chosen
treatment is confounded with the outcome, and a note that announced it would leak the label.
"""

from __future__ import annotations

from .phrasing import Chart, Line, cap, join_words, level_name, line, say, side_word

_YELLOW_FLAGS = (
    ("workers_comp", "workers' comp claim"),
    ("depression", "depression"),
    ("anxiety", "anxiety"),
    ("opioid_use", "daily opioid use"),
    ("fear_avoidance", "fear-avoidance"),
    ("current_smoker", "active smoking"),
    ("unrealistic_expectations", "high expectations of a complete cure"),
)
_LEAD_IN = ("Impression: {dx}.", "Assessment: {dx}.", "Dx: {dx}.", "Most consistent with {dx}.")
_FLAGS = ("Yellow flags: {words}.", "Psychosocial factors noted ({words}).")

_HNP_AXIAL = ("{lvl} disc herniation with axial back pain", "LBP, {lvl} disc herniation")
_HNP = (
    "{side}{root} radiculopathy secondary to {lvl} disc herniation",
    "{lvl} HNP with {side}{root} radiculopathy",
    "lumbar disc herniation at {lvl} with {side}{root} radicular pain",
)
_LSS = (
    "lumbar spinal stenosis at {lvl}{tail}",
    "LSS {lvl}{tail}",
    "degenerative lumbar stenosis, {lvl}{tail}",
)
_DS_GRADE = (
    "grade {g} degenerative spondylolisthesis at {lvl}",
    "{lvl} grade {g} DS",
    "degenerative spondylolisthesis {lvl}, Meyerding grade {g}",
)
_NSLBP = (
    "nonspecific low back pain",
    "mechanical LBP without radiculopathy",
    "axial low back pain, likely discogenic ({lvl} degeneration)",
    "lumbar strain",
)

# each treatment once, named one of two ways; shuffled so the order hints at nothing
_OPTIONS = {
    "disc_herniation": (
        ("continued PT", "physical therapy"),
        ("a transforaminal ESI", "ESI"),
        ("microdiscectomy", "discectomy"),
    ),
    "spinal_stenosis": (
        ("a structured PT program", "PT"),
        ("epidural steroid injection", "ESI"),
        ("decompressive laminectomy", "lumbar decompression"),
    ),
    "spondylolisthesis": (
        ("PT", "physical therapy"),
        ("ESI", "an epidural injection"),
        ("decompression alone", "laminectomy"),
        ("decompression and fusion", "TLIF"),
    ),
    "nonspecific_low_back_pain": (
        ("a structured PT program", "core stabilization PT"),
        ("injections", "ESI"),
        ("surgical consultation", "surgical options"),
    ),
}
_DISCUSSED = (
    "Discussed options including {listed}; risks and benefits reviewed.",
    "Options reviewed: {versus}.",
    "We discussed non-operative and operative management ({listed}).",
    "Reviewed treatment options, {listed}, and their expected benefits.",
)
_UNDECIDED = (
    "Pt will consider options and f/u in {n} weeks.",
    "Shared decision-making; no decision made today.",
    "{He} will think it over and call with a decision.",
    "Will follow up after considering options.",
)
_PRECAUTIONS = ("Return precautions reviewed (bowel/bladder change, progressive weakness).",)
_QUIT = ("Smoking cessation counseled.", "Advised to quit smoking.")


def assessment(c: Chart, lead_in: bool) -> list[Line]:
    """The working diagnosis, first line of the A/P; then, sometimes, a list of yellow flags."""
    d = c.d
    dx, facts = _diagnosis(c)
    out = [
        say(d, _LEAD_IN, *facts, keep=3, dx=dx) if lead_in else line(cap(dx) + ".", *facts, keep=3)
    ]
    flags = [(f, words) for f, words in _YELLOW_FLAGS if _holds(c.s, f) and c.says(f)]
    if flags and d.chance(0.3):
        words = join_words([w for _, w in flags])
        out.append(say(d, _FLAGS, *[f for f, _ in flags], words=words))
    return out


def _holds(s: dict, fact: str) -> bool:
    return s["smoking"] == "current" if fact == "current_smoker" else bool(s[fact])


def _diagnosis(c: Chart) -> tuple[str, tuple[str, ...]]:
    d, s = c.d, c.s
    lvl, root, dx = level_name(s["level"], d), s["root"], s["diagnosis"]
    side = side_word(c.side, d) + " " if c.show_side else ""
    facts = ("leg_side",) if side else ()
    if dx == "disc_herniation":
        if not c.side:
            return d.pick(_HNP_AXIAL).format(lvl=lvl), ()
        return d.pick(_HNP).format(lvl=lvl, side=side, root=root), facts
    if dx == "spinal_stenosis":
        if c.side and not s["claudication"]:
            return d.pick(_LSS).format(lvl=lvl, tail=f" with {side}{root} radiculopathy"), facts
        tail = d.pick((" with neurogenic claudication", " w/ NC")) if s["claudication"] else ""
        return d.pick(_LSS).format(lvl=lvl, tail=tail), ()
    if dx == "spondylolisthesis":
        return _spondylolisthesis(c, lvl)
    return d.pick(_NSLBP).format(lvl=lvl), ()


def _spondylolisthesis(c: Chart, lvl: str) -> tuple[str, tuple[str, ...]]:
    d, s = c.d, c.s
    g = int(s["listhesis_grade"])
    facts = ["listhesis"] if g > 0 else []
    text = (
        d.pick(_DS_GRADE).format(g=g, lvl=lvl)
        if g > 0
        else f"degenerative spondylolisthesis at {lvl}"
    )
    if s["claudication"]:
        text += d.pick((" with stenosis and neurogenic claudication", " w/ NC"))
    if s["unstable_slip"] and c.says("unstable_slip", 0.9) and d.chance(0.4):
        text += " with dynamic instability"
        facts.append("unstable_slip")
    return text, tuple(facts)


def plan(c: Chart) -> list[Line]:
    d = c.d
    opts = d.shuffle([d.pick(names) for names in _OPTIONS[c.s["diagnosis"]]])
    out = [
        say(d, _DISCUSSED, keep=3, listed=join_words(opts), versus=" vs ".join(opts)),
        say(d, _UNDECIDED, n=d.int(2, 8), He=cap(c.he())),
    ]
    return out + _plan_extras(c)


def _plan_extras(c: Chart) -> list[Line]:
    d, s, out = c.d, c.s, []
    if d.chance(0.4):
        out.append(say(d, _PRECAUTIONS, keep=0))
    if s["smoking"] == "current" and c.says("current_smoker") and d.chance(0.4):
        out.append(say(d, _QUIT, "current_smoker"))
    if s["opioid_use"] and c.says("opioid_use") and d.chance(0.3):
        out.append(line("Discussed tapering opioids.", "opioid_use"))
    if float(s["bmi"]) >= 30 and d.chance(0.3):
        out.append(line("Weight loss encouraged.", keep=0))
    return out


# Neutral sentences (no outcome-relevant fact, true of anyone) that lengthen verbose notes.
FILLER = (
    ("hpi", "Pain is worse with prolonged sitting and bending."),
    ("hpi", "Sleep is disrupted by pain."),
    ("hpi", "Has been using heat and ice."),
    ("hpi", "Tried a TENS unit without benefit."),
    ("hpi", "Previously saw a chiropractor with short-lived relief."),
    ("hpi", "No recent trauma."),
    ("hpi", "Pain is worse in the morning and eases as the day goes on."),
    ("hpi", "Coughing and sneezing aggravate the pain."),
    ("hpi", "Has been sleeping in a recliner."),
    (
        "hpi",
        "Symptoms have gradually worsened despite home exercises and over-the-counter analgesics.",
    ),
    ("hpi", "Reports difficulty with household chores and getting in and out of the car."),
    ("hpi", "Was seen in urgent care early on and given a short course of muscle relaxants."),
    ("hpi", "Sitting for long periods is uncomfortable and the pt changes position frequently."),
    ("hpi", "Has also tried topical lidocaine patches and a home stretching program."),
    ("hpi", "Outside records and prior imaging reports were reviewed today."),
    ("social", "Lives with spouse."),
    ("social", "Lives alone in a one-story house."),
    ("social", "Enjoys gardening and walking."),
    ("social", "Drinks alcohol socially."),
    ("social", "Accompanied by a family member today."),
    ("social", "No recreational drug use."),
    ("social", "Has a supportive family and good help at home."),
    ("pmh", "Allergies: NKDA."),
    ("pmh", "Family history noncontributory."),
    ("pmh", "No bleeding disorders; not on anticoagulation."),
    ("pmh", "Surgical history otherwise notable only for an appendectomy."),
    ("ros", "Review of systems otherwise negative."),
    ("ros", "Denies recent infections."),
    ("ros", "Constitutional, cardiac, pulmonary and GU review of systems negative."),
    ("ros", "No IV drug use or immunosuppression."),
    ("exam", "Hip range of motion full and painless bilaterally; FABER negative."),
    ("exam", "Dorsalis pedis pulses 2+ bilaterally."),
    ("exam", "Skin over the lumbar spine is intact."),
    ("exam", "Able to rise from a chair without use of the arms."),
    ("ap", "Questions answered; pt brought a written list."),
    ("ap", "Educational handouts provided."),
    ("ap", "More than half of the 40-minute visit was spent in counseling."),
)

"""History sentences of the clinic note: complaint, onset, pain pattern, treatments, medications.

Every builder takes a `Chart` and returns `Line`s (none when the topic is left out). A `Line`
lists the outcome-relevant facts it states; negations state none.
"""

from __future__ import annotations

from .phrasing import Chart, Line, cap, duration_phrase, level_name, limb, say, side_word

_OPENINGS = (
    "{age} y/o {F} presents with {cc}.",
    "{age}-year-old {woman} presenting for evaluation of {cc}.",
    "Pt is a {age} yo {female} referred by PCP for {cc}.",
    "{age}{F} c/o {cc}.",
    "This is a {age}-year-old {female} seen in spine clinic for {cc}.",
    "{Pt} is a {age}-year-old {woman} who comes in with {cc}.",
)
_AXIAL = ("low back pain", "LBP", "axial low back pain", "axial LBP", "back pain")
_LEG_NO_SIDE = (
    "low back and leg pain",
    "LBP with radiating leg pain",
    "sciatica",
    "back and leg pain",
)
_LEG_BILATERAL = (
    "LBP with bilateral leg pain",
    "back pain and bilateral leg symptoms",
    "BLE pain and LBP",
    "low back pain radiating to both legs",
)
_LEG_ONE_SIDE = (
    "LBP radiating to {limb}",
    "low back and {side} leg pain",
    "{s}-sided sciatica",
    "{side} leg pain and LBP",
)

_TRIGGERS = (
    "",
    "",
    " after lifting a heavy box",
    " without a clear inciting event",
    " after a fall",
    " after yard work",
    " while bending over",
)
_ONSET = (
    "Symptoms began {dur} ago{trig}.",
    "Onset {dur} ago{trig}.",
    "Pain has been present for {dur}.",
    "Sx x {dur}.",
    "{Dur} of symptoms{trig}.",
)
_ONSET_ADJ = _ONSET + ("Reports a {adj} history of pain{trig}.", "{Adj} h/o LBP.")

_LEG_WORSE = (
    "Pain is {leg}% leg and {back}% back.",
    "Leg pain is worse than the back pain.",
    "Leg > back.",
    "Leg pain predominates ({leg}/{back} leg/back).",
    "Describes the leg pain as more bothersome than the back pain.",
)
_BACK_WORSE = (
    "Pain is about {back}% back and {leg}% leg.",
    "Back > leg.",
    "Back pain is worse than the leg pain.",
    "Mostly back pain; leg symptoms are secondary.",
)
_EVEN = ("Back and leg pain are about equal.", "Pain is 50/50 back and leg.")

_DERMATOME = {
    "L4": (
        "the anterior thigh and medial shin",
        "the front of the thigh into the medial lower leg",
        "the anterior thigh and knee to the medial shin",
    ),
    "L5": (
        "the lateral leg and dorsum of the foot",
        "the lateral calf into the great toe",
        "the lateral lower leg to the top of the foot and big toe",
    ),
    "S1": (
        "the posterior calf and lateral foot",
        "the back of the calf into the sole of the foot",
        "the posterior thigh and calf to the lateral foot",
    ),
}
_RADIATES_SIDE = (
    "Pain radiates down {limb} into {derm}{tingle}.",
    "Describes shooting pain from the buttock down {limb} to {derm}.",
    "Radiating pain into {derm} on the {s}{tingle}.",
)
_RADIATES = (
    "Pain radiates down the leg into {derm}{tingle}.",
    "Describes shooting pain into {derm}.",
    "Radicular pain follows {derm}{tingle}.",
)
_NO_RADIATION = (
    "No radiating leg pain.",
    "Denies radiation into the legs.",
    "Pain does not radiate below the knee.",
    "No sciatica.",
)

_CLAUDICATION = (
    "Neurogenic claudication: leg heaviness and cramping after walking {n}, relieved by sitting.",
    "Walking tolerance about {n}, limited by leg pain; better sitting or leaning on a cart.",
    "Endorses neurogenic claudication; can walk {m} minutes before needing to sit.",
    "Leg symptoms come on with standing and walking and ease with forward flexion.",
)
_NO_CLAUDICATION = (
    "No claudication symptoms.",
    "Walking tolerance is not limited.",
    "Denies neurogenic claudication.",
)
_NRS = (
    "Back pain {b}/10, leg pain {l}/10.",
    "NRS back {b}/10, leg {l}/10.",
    "Rates back pain {b}/10 and leg pain {l}/10.",
    "Pain today: back {b}, leg {l} (0-10 NRS).",
)
_ODI = (
    "ODI {v}%.",
    "Oswestry Disability Index {v}.",
    "ODI today {v}.",
    "Baseline ODI: {v}/100.",
    "Oswestry score of {v}%.",
)


def opening(c: Chart) -> Line:
    d = c.d
    facts = ("leg_side",) if c.show_side else ()
    return say(
        d,
        _OPENINGS,
        *facts,
        keep=3,
        age=int(c.s["age"]),
        cc=_complaint(c),
        F="F" if c.female else "M",
        woman="woman" if c.female else "man",
        female="female" if c.female else "male",
        Pt=d.pick(("Pt", "The patient", "Patient")),
    )


def _complaint(c: Chart) -> str:
    d = c.d
    if not c.side:
        return d.pick(_AXIAL)
    if not c.show_side:
        return d.pick(_LEG_NO_SIDE)
    if c.side == "bilateral":
        return d.pick(_LEG_BILATERAL)
    return d.pick(_LEG_ONE_SIDE).format(limb=limb(c.side, d), side=c.side, s=side_word(c.side, d))


def onset(c: Chart) -> list[Line]:
    weeks = float(c.s["symptom_duration_weeks"])
    if not c.says("chronic_symptoms"):
        return []
    dur, adj = duration_phrase(weeks, c.d)
    forms = _ONSET if dur.startswith(("a ", "more")) else _ONSET_ADJ
    facts = ("chronic_symptoms",) if weeks > 52 else ()
    return [
        say(
            c.d,
            forms,
            *facts,
            dur=dur,
            Dur=cap(dur),
            adj=adj,
            Adj=cap(adj),
            trig=c.d.pick(_TRIGGERS),
        )
    ]


def proportion(c: Chart) -> list[Line]:
    d = c.d
    if not c.side or not c.says("leg_dominant_pain"):
        return []
    if c.s["leg_dominant"]:
        leg = d.pick((60, 70, 75, 80, 90))
        return [say(d, _LEG_WORSE, "leg_dominant_pain", leg=leg, back=100 - leg)]
    back = d.pick((50, 60, 70, 80))
    return [say(d, _EVEN) if back == 50 else say(d, _BACK_WORSE, back=back, leg=100 - back)]


def radiation(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if not c.side:
        return [say(d, _NO_RADIATION)] if d.chance(0.5) else []
    if not d.chance(0.85):
        return []
    derm = d.pick(_DERMATOME[s["root"]])
    tingle = (
        d.pick((" with numbness and tingling", " with paresthesias"))
        if s["sensory_deficit"]
        else ""
    )
    if c.show_side:
        return [
            say(
                d,
                _RADIATES_SIDE,
                "leg_side",
                limb=limb(c.side, d),
                s=side_word(c.side, d),
                derm=derm,
                tingle=tingle,
            )
        ]
    return [say(d, _RADIATES, derm=derm, tingle=tingle)]


def claudication(c: Chart) -> list[Line]:
    d = c.d
    if c.s["claudication"] and d.chance(0.85):
        n = d.pick(("1 block", "2 blocks", "3 blocks", "4 blocks", "6 blocks"))
        return [say(d, _CLAUDICATION, n=n, m=d.pick((5, 10, 15, 20)))]
    if not c.s["claudication"] and d.chance(0.35):
        return [say(d, _NO_CLAUDICATION)]
    return []


def scores(c: Chart) -> list[Line]:
    d, s, out = c.d, c.s, []
    if d.chance(0.85):
        out.append(say(d, _NRS, b=int(s["back_pain_nrs"]), l=int(s["leg_pain_nrs"])))
    if c.says("severe_disability"):
        odi = float(s["baseline_odi"])
        # never let rounding move the stated ODI across the >56 line the outcome model uses
        v = max(57, round(odi)) if odi > 56 else min(56, round(odi))
        out.append(say(d, _ODI, *(("severe_disability",) if odi > 56 else ()), v=v))
    return out


_EFFECT = ("minimal relief", "partial relief", "no lasting improvement", "temporary benefit")
_PT = (
    "Completed {n} weeks of PT with {eff}.",
    "Has done physical therapy without lasting benefit.",
    "Tried PT x{n} wks, {eff}.",
    "Prior course of physical therapy ({n} sessions), {eff}.",
)
_NO_PT = ("No PT to date.", "Has not tried physical therapy.")
_ESI = (
    "s/p {lvl} {kind}ESI {n} months ago with {eff}.",
    "Had an epidural steroid injection with {eff}.",
    "Received {k} {kind}ESIs, {eff}.",
)
_NO_ESI = ("No prior injections.", "Has not had an ESI.")
_NSAID = (
    "Tried NSAIDs ({drug}) with {eff}.",
    "Takes {drug} PRN with {eff}.",
    "Failed a trial of {drug}.",
)
_NO_NSAID = ("Has not tried NSAIDs.", "No NSAID trial (GI intolerance).")

_OPIOIDS = (
    "oxycodone 5 mg q6h PRN",
    "hydrocodone-acetaminophen 5/325 mg",
    "tramadol 50 mg BID",
    "oxycodone-acetaminophen (Percocet)",
    "hydromorphone 2 mg PRN",
    "tapentadol 50 mg",
    "hydrocodone",
    "tramadol",
    "oxycodone",
)
_ON_OPIOID = (
    "Currently taking {op}.",
    "On {op} for pain.",
    "Using {op} daily {since}.",
    "Meds include {op}.",
)
_NO_OPIOID = ("No opioid use.", "Not on opioids.", "Denies narcotic use.", "Opioid-naive.")
_OTHER_MEDS = (
    "Also takes gabapentin 300 mg TID.",
    "Uses cyclobenzaprine at night.",
    "Acetaminophen PRN.",
    "Tried a Medrol dosepak early on.",
)


def treatments(c: Chart) -> list[Line]:
    """Physical therapy, injections and NSAIDs already tried (or, sometimes, not yet tried)."""
    d, s = c.d, c.s
    eff, out = d.pick(_EFFECT), []
    if s["tried_pt"] and d.chance(0.85):
        out.append(say(d, _PT, n=d.int(4, 12), eff=eff))
    elif not s["tried_pt"] and d.chance(0.3):
        out.append(say(d, _NO_PT))
    if s["tried_esi"] and d.chance(0.85):
        kind = d.pick(("TF ", "transforaminal ", "interlaminar ", ""))
        out.append(
            say(
                d,
                _ESI,
                lvl=level_name(s["level"], d),
                kind=kind,
                n=d.int(2, 8),
                k=d.int(2, 3),
                eff=eff,
            )
        )
    elif not s["tried_esi"] and d.chance(0.3):
        out.append(say(d, _NO_ESI))
    if s["tried_nsaids"] and d.chance(0.85):
        out.append(
            say(
                d,
                _NSAID,
                drug=d.pick(("ibuprofen", "naproxen", "meloxicam", "diclofenac")),
                eff=eff,
            )
        )
    elif not s["tried_nsaids"] and d.chance(0.2):
        out.append(say(d, _NO_NSAID))
    return out


def medications(c: Chart) -> list[Line]:
    d, out = c.d, []
    if c.s["opioid_use"] and c.says("opioid_use"):
        # no longer than the pain, and never over a year, which would state chronicity in passing
        months = int(float(c.s["symptom_duration_weeks"]) / 4.345)
        since = (
            f"for the past {d.int(2, min(months, 12))} months"
            if months >= 2
            else "since the pain began"
        )
        out.append(say(d, _ON_OPIOID, "opioid_use", op=d.pick(_OPIOIDS), since=since))
    elif not c.s["opioid_use"] and d.chance(0.3):
        out.append(say(d, _NO_OPIOID))
    if d.chance(0.35):
        out.append(say(d, _OTHER_MEDS, keep=0))
    return out

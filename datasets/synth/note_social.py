"""Past history, social and psychosocial sentences of the clinic note, and the negated red flags."""

from __future__ import annotations

from .phrasing import Chart, Line, join_words, level_name, line, say

_JOBS = (
    "teacher", "truck driver", "nurse", "warehouse worker", "accountant", "electrician",
    "retail manager", "software developer", "construction worker", "office administrator",
    "mechanic", "hairdresser", "home health aide", "chef",
)  # fmt: skip
_CLAIM = (
    "Works as a {job}; injured at work, open workers' compensation claim.",
    "WC case, currently off work.",
    "Injured on the job as a {job}; on workers' comp, attorney involved.",
    "Pending litigation related to a work injury (workers' comp claim).",
    "{Job}, off work since the injury, WC claim open.",
)
_RETIRED = ("Retired {job}.", "Retired, previously worked as a {job}.")
_WORKING = (
    "Works as a {job}.",
    "Currently working full duty as a {job}.",
    "Employed as a {job}, missing some work due to pain.",
)
_NO_CLAIM = ("No WC claim or litigation.", "Not a workers' comp case.")

_DEPRESSION = (
    "h/o depression on {drug}.",
    "PMH notable for major depressive disorder.",
    "Depression, PHQ-9 {phq}.",
    "Dx of MDD, on {drug}.",
    "Reports depressed mood; followed by PCP for depression.",
)
_ANXIETY = (
    "h/o anxiety.",
    "Generalized anxiety disorder, on buspirone.",
    "Anxiety (GAD-7 {gad}).",
    "Reports significant anxiety about {his} symptoms.",
)
_NO_MOOD = (
    "Denies depression or anxiety.",
    "PHQ-9 {phq}, negative screen.",
    "No psychiatric history.",
)
_FEAR = (
    "Endorses fear that movement will damage {his} back; has stopped most activity.",
    "High fear-avoidance beliefs (FABQ-PA {fabq}).",
    "Avoids bending and lifting for fear of reinjury.",
    "Pt is afraid exercise will make things worse and rests most of the day.",
)
_NO_FEAR = ("Remains active despite the pain.", "Not fearful of activity.")
_CURE = (
    "Expects to be completely pain-free after treatment.",
    "States {his} goal is zero pain and a return to {sport}.",
    "Hoping for a complete cure.",
    "Wants total resolution of pain and expects never to have back pain again.",
)
_GOAL = ("Goal is to {goal}.", "Expectations are realistic; wants to {goal}.")
_GOALS = (
    "walk the dog without stopping", "return to work", "garden again", "sleep through the night",
    "play with the grandchildren",
)  # fmt: skip

_SMOKER = (
    "Current smoker, {ppd} ppd.",
    "Smokes {cig} cigarettes a day.",
    "Active tobacco use, {py} pack-years.",
    "Tobacco: current smoker.",
)
_FORMER = ("Former smoker, quit {n} years ago.", "Ex-smoker.", "Quit smoking {n} yrs ago.")
_NEVER = ("Never smoker.", "Denies tobacco use.", "Nonsmoker.")

_PMH = (
    "{Body}.",
    "PMH significant for {body}.",
    "Past history: {body}.",
    "Medical history includes {body}.",
)
_SURGERY = (
    "s/p {lvl}{proc} {n} years ago.",
    "h/o {lvl}{proc} ({n} yrs ago).",
    "Prior spine surgery: {lvl}{proc}, {n} years ago, with initial relief.",
    "Had an {lvl}{proc} {n} years ago.",
)
_NO_SURGERY = ("No prior spine surgery.", "No h/o back surgery.")

_RED_FLAGS = (
    ("Denies bowel or bladder change.", "No bowel or bladder dysfunction.", "No B/B changes.",
     "Denies urinary retention or incontinence."),
    ("No saddle anesthesia.", "Denies saddle numbness."),
    ("No fever, chills, or weight loss.", "Denies fever or unintentional weight loss.",
     "No constitutional symptoms."),
    ("No h/o cancer.", "No history of malignancy."),
)  # fmt: skip
_RED_FLAGS_ALL = (
    "Red flags negative (no bowel/bladder dysfunction, saddle anesthesia, fever, or weight loss).",
)


def work(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    job = d.pick(_JOBS)
    if s["workers_comp"]:
        # an unmentioned claim leaves the whole topic out: "working full duty" would be untrue
        return (
            [say(d, _CLAIM, "workers_comp", job=job, Job=job.capitalize())]
            if c.says("workers_comp")
            else []
        )
    out = []
    if d.chance(0.6):
        out.append(say(d, _RETIRED if int(s["age"]) >= 66 else _WORKING, job=job))
    if d.chance(0.2):
        out.append(say(d, _NO_CLAIM))
    return out


def psych(c: Chart) -> list[Line]:
    d, s, out = c.d, c.s, []
    drug = d.pick(("sertraline", "escitalopram", "fluoxetine", "bupropion", "duloxetine"))
    if s["depression"] and c.says("depression"):
        out.append(say(d, _DEPRESSION, "depression", drug=drug, phq=d.int(10, 22)))
    if s["anxiety"] and c.says("anxiety"):
        out.append(say(d, _ANXIETY, "anxiety", gad=d.int(10, 19), his=c.his()))
    if not s["depression"] and not s["anxiety"] and d.chance(0.3):
        out.append(say(d, _NO_MOOD, phq=d.int(0, 4)))
    if s["fear_avoidance"] and c.says("fear_avoidance"):
        out.append(say(d, _FEAR, "fear_avoidance", his=c.his(), fabq=d.int(16, 24)))
    elif not s["fear_avoidance"] and d.chance(0.2):
        out.append(say(d, _NO_FEAR))
    if s["unrealistic_expectations"] and c.says("unrealistic_expectations"):
        sport = d.pick(("marathon running", "competitive tennis", "heavy lifting at the gym"))
        out.append(say(d, _CURE, "unrealistic_expectations", his=c.his(), sport=sport))
    elif not s["unrealistic_expectations"] and d.chance(0.3):
        out.append(say(d, _GOAL, goal=d.pick(_GOALS)))
    return out


def smoking(c: Chart) -> list[Line]:
    d, status = c.d, c.s["smoking"]
    if status == "current":
        if not c.says("current_smoker"):
            return []
        ppd = d.pick(("1/2", "1", "1.5"))
        return [say(d, _SMOKER, "current_smoker", ppd=ppd, cig=d.int(5, 30), py=d.int(5, 40))]
    if not d.chance(0.75):
        return []
    return [say(d, _FORMER, n=d.int(2, 25)) if status == "former" else say(d, _NEVER)]


def past_history(c: Chart) -> list[Line]:
    d, s, items = c.d, c.s, []
    if s["diabetes"] and d.chance(0.85):
        a1c = f"{d.int(60, 95) / 10:.1f}"
        items.append(
            d.pick(("DM2", "type 2 diabetes", "diabetes on metformin", f"T2DM (A1c {a1c})"))
        )
    elif not s["diabetes"] and d.chance(0.2):
        items.append(d.pick(("no DM", "no diabetes")))
    if d.chance(0.8):
        bmi = float(s["bmi"])
        obese = f"obesity (BMI {bmi:.1f})" if bmi >= 30 else f"BMI of {bmi:.1f}"
        items.append(d.pick((f"BMI {bmi:.1f}", f"BMI {round(bmi)}", obese)))
    if d.chance(0.15):
        items.append(f"ASA {int(s['asa_class'])}")
    out = []
    if items:
        body = join_words(items)
        out.append(say(d, _PMH, body=body, Body=body[:1].upper() + body[1:]))
    elif d.chance(0.3):
        out.append(line("PMH otherwise unremarkable."))
    return out + _prior_surgery(c)


def _prior_surgery(c: Chart) -> list[Line]:
    d, s = c.d, c.s
    if s["prior_spine_surgery"] and c.says("prior_spine_surgery"):
        where = s["prior_surgery_level"]
        lvl = level_name(where, d) + " " if where else "lumbar "
        proc = d.pick(("microdiscectomy", "laminectomy", "discectomy", "decompression"))
        forms = _SURGERY if where else _SURGERY[:3]  # "Had an lumbar ..." would not read
        return [say(d, forms, "prior_spine_surgery", lvl=lvl, proc=proc, n=d.int(2, 15))]
    if not s["prior_spine_surgery"] and d.chance(0.3):
        return [say(d, _NO_SURGERY)]
    return []


def red_flags(c: Chart) -> list[Line]:
    d = c.d
    if d.chance(0.25):
        return [say(d, _RED_FLAGS_ALL)]
    return [say(d, group) for group in _RED_FLAGS if d.chance(0.8)]

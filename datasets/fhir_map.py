"""One FHIR R4 resource -> candidate values of contract columns (the mapping of
datasets/README.md, "FHIR R4 in"); `spinecast.datasets.fhir` assembles them into one record.

Each handler reads a validated `fhir.resources` model and either puts a value on the `Chart`
(column, value, the resource's clinical date) or records a `FhirWarning`. A warning names the
resource type, the code system and the code, never a value or text from the chart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from . import fhir_codes as C

PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
SKIPPED_STATUS = {"entered-in-error", "cancelled", "revoked", "not-done", "superseded"}
BASELINE_UNTIL = timedelta(days=14)  # an ODI up to two weeks after the visit is still baseline
FOLLOW_UP = (timedelta(days=270), timedelta(days=455))  # the 12-month ODI: 9 to 15 months later


@dataclass(frozen=True)
class FhirWarning:
    """Something in a bundle SpineCast did not use. Names codes, never patient values."""

    kind: str  # e.g. "unknown code", "status not used"
    resource: str  # the FHIR resource type
    system: str | None = None
    code: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        coded = f" {self.system or '-'}|{self.code or '-'}" if self.system or self.code else ""
        column = f" (column {self.column})" if self.column else ""
        return f"{self.resource}: {self.kind}{coded}{column}"


@dataclass
class Chart:
    """What one patient's resources say: candidate values per column, and the warnings."""

    visit: date  # the reference date (fhir.py)
    find: Callable  # reference -> the resource it names in the bundle, or None
    mri_media: set  # id() of the Media models a lumbar MRI DiagnosticReport links
    values: dict = field(default_factory=dict)  # column -> [(when, order, resource type, value)]
    warnings: list = field(default_factory=list)

    def put(self, column: str, value, when: date | None, resource) -> None:
        found = self.values.setdefault(column, [])
        found.append((when, len(found), resource.get_resource_type(), value))

    def warn(self, kind: str, resource, coding=None, column: str | None = None) -> None:
        system, code = (coding.system, coding.code) if coding is not None else (None, None)
        self.warnings.append(FhirWarning(kind, resource.get_resource_type(), system, code, column))


def day(value) -> date | None:
    """A FHIR date or dateTime as a calendar day (a partial date: its first day)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}(-\d{2}){0,2}.*", value):
        parts = [int(p) for p in value[:10].split("-")]
        return date(*parts, *[1] * (3 - len(parts)))
    return None


def _codings(concepts) -> list:
    concepts = concepts if isinstance(concepts, list) else [concepts]
    return [c for concept in concepts if concept is not None for c in concept.coding or []]


def _first(codings):
    return codings[0] if codings else None


def _status_ok(res, chart: Chart) -> bool:
    status = getattr(res, "status", None)
    if status in SKIPPED_STATUS:
        chart.warnings.append(FhirWarning(f"status {status}: not used", res.get_resource_type()))
        return False
    return True


def _number(res):
    if res.valueInteger is not None:
        return res.valueInteger
    quantity = res.valueQuantity
    if quantity is not None and quantity.value is not None:
        return float(quantity.value)  # integer columns take integral values (fhir.py)
    return None


def _known(res, chart: Chart, table: dict):
    """The first coding of `res.code` the table knows (system, code), else None with a warning."""
    codings = _codings(res.code)
    coding = next((c for c in codings if (c.system, c.code) in table), None)
    if coding is None:
        chart.warn("unknown code", res, _first(codings))
    return coding


def observation(res, chart: Chart) -> None:
    if not _status_ok(res, chart):
        return
    coding = _known(res, chart, C.OBSERVATIONS)
    if coding is None:
        return
    column = C.OBSERVATIONS[(coding.system, coding.code)]
    when = day(res.effectiveDateTime) or day(res.effectivePeriod and res.effectivePeriod.start)
    when = when or day(res.issued)
    _OBSERVATION_VALUES[column](res, chart, column, when)


def _quantity(res, chart: Chart, column: str, when) -> None:
    unit = res.valueQuantity.code if res.valueQuantity is not None else None
    if column == "bmi" and unit not in (None, "kg/m2"):
        chart.warn("unit not used", res, column=column)
        return
    _put_number(res, chart, column, when)


def _put_number(res, chart: Chart, column: str, when) -> None:
    value = _number(res)
    if value is None:
        chart.warn("no numeric value", res, column=column)
    else:
        chart.put(column, value, when, res)


def _odi(res, chart: Chart, column: str, when) -> None:
    if when is None or when <= chart.visit + BASELINE_UNTIL:
        _put_number(res, chart, "baseline_odi", when)
    elif chart.visit + FOLLOW_UP[0] <= when <= chart.visit + FOLLOW_UP[1]:
        _put_number(res, chart, "odi_12m", when)
    else:
        chart.warn("ODI outside the baseline and 12-month windows", res, column="baseline_odi")


def _coded_value(table: dict):
    def read(res, chart: Chart, column: str, when) -> None:
        codings = _codings(res.valueCodeableConcept)
        coding = next((c for c in codings if c.system == C.SNOMED and c.code in table), None)
        if coding is None:
            chart.warn("unknown value code", res, _first(codings), column)
        elif table[coding.code] is not None:  # a code meaning "unknown" records nothing
            chart.put(column, table[coding.code], when, res)

    return read


def _pain(res, chart: Chart, column: str, when) -> None:
    sites = _codings(res.bodySite)
    site = next((c for c in sites if c.system == C.SNOMED and c.code in C.PAIN_SITES), None)
    if site is None:
        chart.warn("pain score without a known body site", res, _first(sites))
    else:
        _put_number(res, chart, C.PAIN_SITES[site.code], when)


def _duration(res, chart: Chart, column: str, when) -> None:
    quantity = res.valueQuantity
    unit = quantity.code if quantity is not None else None
    if unit not in C.WEEKS_PER_UNIT or quantity.value is None:
        chart.warn("duration without a known time unit", res, column=column)
    else:
        chart.put(column, float(quantity.value) * C.WEEKS_PER_UNIT[unit], when, res)


def _boolean(res, chart: Chart, column: str, when) -> None:
    if res.valueBoolean is None:
        chart.warn("value is not a boolean", res, column=column)
    else:
        chart.put(column, bool(res.valueBoolean), when, res)


_OBSERVATION_VALUES = {
    "bmi": _quantity,
    "smoking": _coded_value(C.SMOKING),
    "odi": _odi,
    "pain_nrs": _pain,
    "asa_class": _coded_value(C.ASA),
    "symptom_duration_weeks": _duration,
    "workers_comp": _boolean,
    "prior_spine_surgery": _boolean,
    "satisfied": _boolean,
}


def condition(res, chart: Chart) -> None:
    verification = {c.code for c in _codings(res.verificationStatus)}
    if "entered-in-error" in verification:
        chart.warnings.append(FhirWarning("status entered-in-error: not used", "Condition"))
        return
    codings = _codings(res.code)
    meaning = next((m for c in codings if (m := C.condition_meaning(c.system, c.code))), None)
    if meaning is None:
        chart.warn("unknown code", res, _first(codings))
        return
    column, value = meaning
    refuted = "refuted" in verification
    if column == "diagnosis" and refuted:
        return  # a ruled-out diagnosis is not the working diagnosis
    when = day(res.recordedDate) or day(res.onsetDateTime)
    chart.put(column, False if refuted else value, when, res)


def medication_statement(res, chart: Chart) -> None:
    if res.status not in ("active", "not-taken"):
        chart.warnings.append(FhirWarning(f"status {res.status}: not used", "MedicationStatement"))
        return
    concept = res.medicationCodeableConcept
    if concept is None and res.medicationReference is not None:
        medication = chart.find(res.medicationReference.reference)
        concept = medication.code if medication is not None else None
    codings = _codings(concept)
    if not any(C.is_opioid(c.system, c.code) for c in codings):
        chart.warn("unknown code", res, _first(codings))
        return
    when = day(res.effectiveDateTime) or day(res.effectivePeriod and res.effectivePeriod.start)
    chart.put("opioid_use", res.status == "active", when or day(res.dateAsserted), res)


def procedure(res, chart: Chart) -> None:
    if res.status != "completed":
        chart.warnings.append(FhirWarning(f"status {res.status}: not used", "Procedure"))
        return
    codings = _codings(res.code)
    if not any((c.system, c.code) in C.SURGERY for c in codings):
        chart.warn("unknown code", res, _first(codings))
        return
    when = day(res.performedDateTime) or day(res.performedPeriod and res.performedPeriod.start)
    if when is not None and when > chart.visit:
        chart.warn("surgery after the visit: not prior", res, column="prior_spine_surgery")
        return
    chart.put("prior_spine_surgery", True, when, res)


def service_request(res, chart: Chart) -> None:
    if not _status_ok(res, chart):
        return
    coding = _known(res, chart, C.TREATMENTS)
    if coding is None:
        return
    chart.put("treatment", C.TREATMENTS[(coding.system, coding.code)], day(res.authoredOn), res)


def document_reference(res, chart: Chart) -> None:
    if not _status_ok(res, chart):
        return
    codings = _codings(res.type)
    if not any(c.system == C.LOINC and c.code in C.NOTE_TYPES for c in codings):
        chart.warn("unknown code", res, _first(codings))
        return
    texts = [_text(c.attachment, res, chart) for c in res.content or []]
    text = next((t for t in texts if t is not None), None)
    if text is not None:
        chart.put("clinical_note", text, day(res.date), res)


def diagnostic_report(res, chart: Chart) -> None:
    if not _status_ok(res, chart):
        return
    codings = _codings(res.code)
    if not any(c.system == C.LOINC and c.code in C.MRI_REPORTS for c in codings):
        chart.warn("unknown code", res, _first(codings))
        return
    texts = [_text(a, res, chart) for a in res.presentedForm or []]
    text = next((t for t in texts if t is not None), res.conclusion)
    if text is not None:
        when = day(res.effectiveDateTime) or day(res.issued)
        chart.put("imaging_report", text, when, res)


def _text(attachment, res, chart: Chart) -> str | None:
    kind = (attachment.contentType or "").split(";")[0].strip().lower()
    if kind != "text/plain":
        chart.warn("attachment is not text/plain", res)
        return None
    if attachment.data is None:
        chart.warn("attachment without inline data (a url is not fetched)", res)
        return None
    try:
        return attachment.data.decode("utf-8")
    except UnicodeDecodeError:
        chart.warn("attachment is not UTF-8 text", res)
        return None


def media(res, chart: Chart) -> None:
    if not _status_ok(res, chart):
        return
    is_mr = any((c.system, c.code) == C.MR_MODALITY for c in _codings(res.modality))
    if not is_mr and id(res) not in chart.mri_media:
        chart.warn("Media is not an MR image", res, _first(_codings(res.modality)))
        return
    content = res.content
    data = content.data
    if data is None and content.url is not None:
        binary = chart.find(content.url)
        data = binary.data if binary is not None else None
    if data is None:
        chart.warn("image data not in the bundle", res)
    elif not data.startswith((PNG, JPEG)):
        chart.warn("image is not a PNG or JPEG", res)
    else:
        chart.put("mri_image", bytes(data), day(res.createdDateTime), res)

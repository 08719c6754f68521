"""FHIR R4 in: a Bundle (or a list of resources) -> contract Patient records (CONTRACT.md 1).

    import json
    from spinecast.datasets.fhir import read_bundle, to_bundle

    for converted in read_bundle(json.loads(Path("b.json").read_text()), source="b.json"):
        converted.record    # {"patient_id": "P-000001", "age": 54, ..., "mri_image": b"..."}
        converted.warnings  # [FhirWarning(kind="unknown code", resource="Condition", ...), ...]

One record per FHIR `Patient` in the bundle; the other resources belong to the patient their
`subject` references (in a bundle with one Patient, a resource without a subject is that
patient's). The mapping, every code it reads and how conflicts are settled are in
datasets/README.md ("FHIR R4 in") and `fhir_codes.py`. Unknown codes are ignored with a warning,
never guessed; a resource that breaks FHIR R4 raises `FhirError` naming the resource and the field,
never a value. `mri_image` comes back as the image's bytes (what the predictor takes; base64 them
for the HTTP API); `spinecast fhir-to-cohort` writes them to files beside the cohort.

FHIR version: fhir.resources 8 defaults to R5 and ships no R4 package; its R4B models
(`fhir.resources.R4B`, FHIR 4.3.0) are used. R4B's changes from R4 concern medication definition,
subscription and evidence resources, none of the resources read here, so an R4 bundle validates.
(R5 would not do: it removed `Media` and renamed `MedicationStatement`.)

The reference date (age at the visit, the ODI windows, "prior" surgery) is the latest
`Encounter.period.start` of the patient, else the date of the latest clinic note
(`DocumentReference.date`), else the `as_of` argument, else today.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from . import fhir_codes as C
from . import fhir_map as M
from .fhir_map import FhirWarning, day
from .fhir_write import to_bundle
from .schema import COLUMNS

__all__ = ["Converted", "FhirError", "FhirWarning", "read_bundle", "to_bundle"]

MAX_ERRORS = 5
_HANDLERS = {
    "Observation": M.observation,
    "Condition": M.condition,
    "MedicationStatement": M.medication_statement,
    "Procedure": M.procedure,
    "ServiceRequest": M.service_request,
    "DocumentReference": M.document_reference,
    "DiagnosticReport": M.diagnostic_report,
    "Media": M.media,
}
_READ_THROUGH_OTHERS = {"Patient", "Encounter", "Binary", "Medication"}


class FhirError(ValueError):
    """A bundle or resource that is not valid FHIR R4, or holds no Patient."""


@dataclass
class Converted:
    record: dict  # contract columns present in the bundle; `mri_image` holds bytes
    warnings: list[FhirWarning]
    visit: date  # the reference date used (see the module docstring)
    visit_from: str  # "encounter", "note", "as_of" or "today"


@dataclass(frozen=True)
class _Entry:
    index: int
    full_url: str | None
    res: Resource

    @property
    def kind(self) -> str:
        return self.res.get_resource_type()

    def refs(self) -> set[str]:
        """The references that name this resource inside the bundle."""
        keys = {f"{self.kind}/{self.res.id}"} if self.res.id else set()
        return keys | ({self.full_url} if self.full_url else set())


def read_bundle(data, *, as_of: date | None = None, source: str = "bundle") -> list[Converted]:
    """A FHIR R4 Bundle (a dict), one resource or a list of resources -> one `Converted` per
    Patient, in bundle order. `source` names the input in errors."""
    entries = parse(data, source)
    patients = [e for e in entries if e.kind == "Patient"]
    if not patients:
        raise FhirError(f"{source}: holds no Patient resource (one record is made per Patient)")
    index = {ref: e for e in entries for ref in e.refs()}
    owned, unowned = _by_patient(entries, patients, index)
    return [_convert(p, owned[p.index], unowned, index, as_of) for p in patients]


def parse(data, source: str = "bundle") -> list[_Entry]:
    """Validate every resource with the fhir.resources R4B models."""
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        entries = data.get("entry") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise FhirError(f"{source}: Bundle.entry must be a list of objects")
        envelope = {
            **data,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries],
        }
        _validated(Bundle, envelope, "Bundle", source)
        raw = [(i, e.get("fullUrl"), e.get("resource")) for i, e in enumerate(entries)]
        where = "Bundle.entry[{}].resource"
    elif isinstance(data, list):
        raw, where = [(i, None, r) for i, r in enumerate(data)], "resource[{}]"
    elif isinstance(data, dict) and "resourceType" in data:
        raw, where = [(0, None, data)], "resource[{}]"
    else:
        raise FhirError(f"{source}: must be a FHIR Bundle, a resource or a list of resources")
    return [
        _Entry(i, url, _model(r, where.format(i), source)) for i, url, r in raw if r is not None
    ]


def _model(raw, where: str, source: str) -> Resource:
    kind = raw.get("resourceType") if isinstance(raw, dict) else None
    if not isinstance(kind, str):
        raise FhirError(f"{source}: {where} must be a JSON object with a resourceType")
    try:
        cls = get_fhir_model_class(kind)
    except ValueError:
        cls = None
    if cls is None or not issubclass(cls, Resource):
        shown = kind if len(kind) <= 40 else kind[:37] + "..."
        raise FhirError(f"{source}: {where}: resourceType {shown!r} is not a FHIR R4 resource")
    return _validated(cls, raw, f"{where} ({kind})", source)


def _validated(cls, raw: dict, where: str, source: str):
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors()[:MAX_ERRORS]:
            field = ".".join(str(p) for p in e["loc"]) or "(the resource)"
            message, given = e["msg"], e.get("input")
            if isinstance(given, str) and given and given in message:
                message = message.replace(given, "<the value>")  # never echo a value
            problems.append(f"field {field}: {message}")
        more = len(err.errors()) - MAX_ERRORS
        tail = f"; and {more} more" if more > 0 else ""
        raise FhirError(
            f"{source}: {where} is not valid FHIR R4: {'; '.join(problems)}{tail}"
        ) from None


def _tail(reference: str) -> str:
    """'http://server/fhir/Patient/7/_history/2' -> 'Patient/7' (a relative reference)."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def find(index: dict, reference: str | None):
    if not reference:
        return None
    entry = index.get(reference) or index.get(_tail(reference))
    return entry.res if entry is not None else None


def _by_patient(entries, patients, index):
    owned = {p.index: [] for p in patients}
    unowned = []
    for e in entries:
        if e.kind in ("Patient", "Binary", "Medication"):  # the last two: reached by reference
            continue
        subject = getattr(e.res, "subject", None) or getattr(e.res, "patient", None)
        reference = subject.reference if subject is not None else None
        owner = index.get(reference) or index.get(_tail(reference)) if reference else None
        if reference is None and (len(patients) == 1 or e.kind in _READ_THROUGH_OTHERS):
            owner = patients[0]
        if owner is not None and owner.kind == "Patient":
            owned[owner.index].append(e)
        elif reference is None:
            unowned.append(FhirWarning("no subject in a bundle of several patients", e.kind))
        else:
            unowned.append(FhirWarning("subject is not a Patient in the bundle", e.kind))
    return owned, unowned


def _visit(owned, as_of: date | None) -> tuple[date, str]:
    starts = [day(e.res.period.start) for e in owned if e.kind == "Encounter" and e.res.period]
    if any(starts):
        return max(d for d in starts if d), "encounter"
    notes = [
        day(e.res.date)
        for e in owned
        if e.kind == "DocumentReference"
        and any(c.code in C.NOTE_TYPES for c in M._codings(e.res.type))
    ]
    if any(notes):
        return max(d for d in notes if d), "note"
    return (as_of, "as_of") if as_of is not None else (date.today(), "today")


def _convert(patient: _Entry, owned, unowned, index, as_of) -> Converted:
    visit, visit_from = _visit(owned, as_of)
    linked = {
        id(media)
        for e in owned
        if e.kind == "DiagnosticReport"
        and any(c.code in C.MRI_REPORTS for c in M._codings(e.res.code))
        for link in e.res.media or []
        if (media := find(index, link.link.reference)) is not None
    }
    chart = M.Chart(visit, lambda ref: find(index, ref), linked, warnings=list(unowned))
    record = _demographics(patient.res, visit, chart)
    for e in owned:
        handler = _HANDLERS.get(e.kind)
        if handler is not None:
            handler(e.res, chart)
        elif e.kind not in _READ_THROUGH_OTHERS:
            chart.warnings.append(FhirWarning("resource type not used", e.kind))
    record.update(_latest(chart))
    return Converted(_within_contract(record, chart.warnings), chart.warnings, visit, visit_from)


def _demographics(res, visit: date, chart: M.Chart) -> dict:
    out = {}
    ids = [i.value for i in res.identifier or [] if i.system == C.PATIENT_ID and i.value]
    if ids or res.id:
        out["patient_id"] = ((ids or [res.id])[0], "Patient")
    else:
        chart.warn("no id or SpineCast identifier: patient_id left out", res)
    if res.gender in ("female", "male"):
        out["sex"] = (res.gender, "Patient")
    else:
        chart.warn("gender is not female or male: sex left out", res)
    birth = res.birthDate
    if isinstance(birth, date):
        age = visit.year - birth.year - ((visit.month, visit.day) < (birth.month, birth.day))
        out["age"] = (age, "Patient")
    else:
        kind = "no birthDate" if birth is None else "birthDate is not a full date"
        chart.warn(f"{kind}: age left out", res)
    return out


def _latest(chart: M.Chart) -> dict:
    """One value per column: the latest by clinical date (then bundle order), with a warning
    when the resources disagree."""
    out = {}
    for column, found in chart.values.items():
        *_, kind, value = max(found, key=lambda t: (t[0] or date.min, t[1]))
        if len({v for *_, v in found}) > 1:
            chart.warnings.append(
                FhirWarning("differing values: the latest used", kind, column=column)
            )
        out[column] = (value, kind)
    return out


def _within_contract(record: dict, warnings: list) -> dict:
    """Drop (with a warning) values the contract would reject; the rest in contract order."""
    out = {}
    for col in COLUMNS:
        if col.name not in record:
            continue
        value, kind = record[col.name]
        if col.dtype == "integer" and float(value).is_integer():
            value = int(value)
        if col.dtype == "integer" and not isinstance(value, int):
            problem = "value is not an integer"
        elif col.is_number and not col.low <= value <= col.high:
            problem = "value outside the contract's range"
        elif col.max_chars and len(value) > col.max_chars:
            problem = "text longer than the contract allows"
        else:
            out[col.name] = value
            continue
        warnings.append(FhirWarning(f"{problem}: left out", kind, column=col.name))
    return out

"""Contract record -> one FHIR R4 collection Bundle: test data for the FHIR mapping.

    from spinecast.datasets.fhir import to_bundle
    bundle = to_bundle(record, image_bytes=Path("images/P-000001.png").read_bytes())

Writes only what the record says, in the codes `spinecast.datasets.fhir` reads back (the same
values for every contract column): an `Encounter` on `visit` (the reference date for the age),
`birthDate` on 1 January of the year that gives the record's age at the visit, Conditions
`refuted` for a comorbidity recorded as absent, `MedicationStatement` `not-taken` (ATC N02A) for
no opioid use, the SpineCast observation `prior-lumbar-surgery` (the record does not say which
operation it was), the key image as a `Binary` that a `Media` (modality MR) points to. Ids are
UUIDs derived from the patient id and the resource, so the same record gives the same bundle.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import date, timedelta

import pandas as pd

from . import fhir_codes as C

VISIT = date(2026, 1, 15)
_NAMESPACE = uuid.UUID("3f0c6a52-7f43-4c55-9b61-5a1f3c2d8e10")  # SpineCast's uuid5 namespace
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


def _present(value) -> bool:
    """Not None, NaN or pandas' NA (records may come from a frame)."""
    return value is not None and (isinstance(value, (str, bytes)) or not pd.isna(value))


def _concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def _attachment(content_type: str, data: bytes) -> dict:
    return {"contentType": content_type, "data": base64.b64encode(data).decode("ascii")}


class _Bundle:
    def __init__(self, patient_id: str, visit: date):
        self.patient_id, self.visit, self.entry = patient_id, visit, []
        self.patient_url = self.url("Patient")

    def url(self, name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{self.patient_id}/{name}')}"

    def add(self, name: str, resource: dict) -> str:
        url = self.url(name)
        if resource["resourceType"] not in ("Patient", "Binary"):
            resource = {**resource, "subject": {"reference": self.patient_url}}
        self.entry.append({"fullUrl": url, "resource": resource})
        return url

    def observation(self, name: str, system: str, code: str, value: dict, when=None) -> None:
        when = when or self.visit
        resource = {"resourceType": "Observation", "status": "final"}
        resource |= {"code": _concept(system, code), "effectiveDateTime": when.isoformat()}
        self.add(name, resource | value)


def to_bundle(record: dict, image_bytes: bytes | None = None, *, visit: date = VISIT) -> dict:
    """One contract record (a dict of contract columns; missing ones absent or None) -> a FHIR R4
    collection Bundle (a JSON-ready dict). `image_bytes`: the key image (PNG or JPEG), if any;
    a record whose `mri_image` holds bytes needs no argument."""
    value = {k: v for k, v in record.items() if _present(v)}
    if image_bytes is None and isinstance(value.get("mri_image"), bytes):
        image_bytes = value["mri_image"]
    b = _Bundle(str(value["patient_id"]), visit)
    _patient(b, value)
    _observations(b, value)
    _conditions(b, value)
    _documents(b, value, image_bytes)
    return {"resourceType": "Bundle", "type": "collection", "entry": b.entry}


def _patient(b: _Bundle, value: dict) -> None:
    patient = {"resourceType": "Patient"}
    patient["identifier"] = [{"system": C.PATIENT_ID, "value": b.patient_id}]
    if _FHIR_ID.fullmatch(b.patient_id):
        patient["id"] = b.patient_id
    if "sex" in value:
        patient["gender"] = value["sex"]
    if "age" in value:
        patient["birthDate"] = date(b.visit.year - int(value["age"]), 1, 1).isoformat()
    b.add("Patient", patient)
    encounter = {"resourceType": "Encounter", "status": "finished"}
    encounter["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode"}
    encounter["class"] |= {"code": "AMB"}
    b.add("Encounter", encounter | {"period": {"start": b.visit.isoformat()}})


def _quantity(value: float, unit: str) -> dict:
    return {"valueQuantity": {"value": float(value), "unit": unit, "system": C.UCUM, "code": unit}}


def _observations(b: _Bundle, v: dict) -> None:
    if "bmi" in v:
        b.observation("bmi", C.LOINC, "39156-5", _quantity(v["bmi"], "kg/m2"))
    if "smoking" in v:
        smoking = _concept(C.SNOMED, C.SMOKING_CODE[v["smoking"]])
        b.observation("smoking", C.LOINC, "72166-2", {"valueCodeableConcept": smoking})
    if "baseline_odi" in v:
        b.observation("odi", C.LOINC, "97909-6", _quantity(v["baseline_odi"], "%"))
    if "odi_12m" in v:
        later = b.visit + timedelta(days=365)
        b.observation("odi_12m", C.LOINC, "97909-6", _quantity(v["odi_12m"], "%"), later)
    for column in ("back_pain_nrs", "leg_pain_nrs"):
        if column in v:
            site = {"bodySite": _concept(C.SNOMED, C.PAIN_SITE_CODE[column])}
            score = {"valueInteger": int(v[column])} | site
            b.observation(column, C.LOINC, "72514-3", score)
    if "asa_class" in v:
        asa = {"valueCodeableConcept": _concept(C.SNOMED, C.ASA_CODE[int(v["asa_class"])])}
        b.observation("asa", C.SNOMED, "413347006", asa)
    if "symptom_duration_weeks" in v:
        weeks = _quantity(v["symptom_duration_weeks"], "wk")
        b.observation("duration", C.SPINECAST, "symptom-duration", weeks)
    codes = {"workers_comp": "workers-comp", "prior_spine_surgery": "prior-lumbar-surgery"}
    for column, code in (codes | {"satisfied": "satisfied-12m"}).items():
        if column in v:
            when = b.visit + timedelta(days=365) if column == "satisfied" else None
            b.observation(column, C.SPINECAST, code, {"valueBoolean": bool(v[column])}, when)


def _conditions(b: _Bundle, v: dict) -> None:
    for column in ("diabetes", "depression", "anxiety"):
        if column in v:
            _condition(b, column, C.CONDITION_CODE[column], present=bool(v[column]))
    if "diagnosis" in v:
        _condition(b, "diagnosis", C.CONDITION_CODE[v["diagnosis"]], present=True)
    if "opioid_use" in v:
        statement = {"resourceType": "MedicationStatement"}
        statement["status"] = "active" if v["opioid_use"] else "not-taken"
        statement["medicationCodeableConcept"] = _concept(C.ATC, C.ATC_OPIOID_PREFIX)
        b.add("opioids", statement | {"effectiveDateTime": b.visit.isoformat()})
    if "treatment" in v:
        system, code = C.TREATMENT_CODE[v["treatment"]]
        request = {"resourceType": "ServiceRequest", "status": "active", "intent": "order"}
        b.add("treatment", request | {"code": _concept(system, code)})


def _condition(b: _Bundle, name: str, icd10: str, *, present: bool) -> None:
    condition = {"resourceType": "Condition", "code": _concept(C.ICD10_CM, icd10)}
    status = "confirmed" if present else "refuted"
    condition["verificationStatus"] = _concept(_VERIFICATION, status)
    if present:  # con-3: a problem-list item carries a clinical status; a refuted one neither
        condition["clinicalStatus"] = _concept(_CLINICAL, "active")
        category = "encounter-diagnosis" if name == "diagnosis" else "problem-list-item"
        condition["category"] = [_concept(_CATEGORY, category)]
    b.add(name, condition | {"recordedDate": b.visit.isoformat()})


def _documents(b: _Bundle, v: dict, image: bytes | None) -> None:
    when = f"{b.visit.isoformat()}T09:00:00+00:00"
    if "clinical_note" in v:
        note = {"resourceType": "DocumentReference", "status": "current", "date": when}
        note["type"] = _concept(C.LOINC, "11488-4")
        text = _attachment("text/plain; charset=utf-8", v["clinical_note"].encode("utf-8"))
        b.add("note", note | {"content": [{"attachment": text}]})
    media_url = None
    if image is not None:
        kind = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
        binary = b.add("image-data", {"resourceType": "Binary"} | _attachment(kind, image))
        media = {"resourceType": "Media", "status": "completed"}
        media["modality"] = _concept(*C.MR_MODALITY)
        media["createdDateTime"] = b.visit.isoformat()
        media_url = b.add("image", media | {"content": {"contentType": kind, "url": binary}})
    if "imaging_report" in v:
        report = {"resourceType": "DiagnosticReport", "status": "final"}
        report["code"] = _concept(C.LOINC, "24531-6")
        report["effectiveDateTime"] = b.visit.isoformat()
        text = _attachment("text/plain; charset=utf-8", v["imaging_report"].encode("utf-8"))
        report["presentedForm"] = [text]
        if media_url is not None:
            report["media"] = [{"link": {"reference": media_url}}]
        b.add("report", report)

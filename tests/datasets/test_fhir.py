"""FHIR R4 in: synthetic cohort -> FHIR bundles -> contract rows gives back every value; unknown
codes and missing resources warn without values; invalid resources fail with a clear error."""

import base64
import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import BaseModel, field_validator
from spinecast.datasets import COLUMNS, load_cohort
from spinecast.datasets.fhir import FhirError, _validated, read_bundle, to_bundle
from spinecast.datasets.fhir_files import python_value

from spinecast.cli import main

SECRET = "SENTINEL-PATIENT-TEXT-5521"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from spinecast.datasets.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(20, seed=11, out=folder, workers=1)
    return folder / "cohort.parquet"


def _rows(path) -> list[dict]:
    """A cohort file as validated records; `mri_image` as the image's bytes."""
    rows = []
    for row in load_cohort(path).to_dict("records"):
        record = {k: python_value(v) for k, v in row.items()}
        if record["mri_image"] is not None:
            record["mri_image"] = Path(record["mri_image"]).read_bytes()
        rows.append(record)
    return rows


def _png(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_synthetic_cohort_round_trips_through_fhir_bundles(synth):
    rows = _rows(synth)
    assert any(r["mri_image"] for r in rows) and any(r["mri_image"] is None for r in rows)
    for column in (c.name for c in COLUMNS):  # the cohort exercises every column
        assert any(r[column] is not None for r in rows), column
    for row in rows:
        bundle = json.loads(json.dumps(to_bundle(row)))  # through JSON, as a file would be
        [converted] = read_bundle(bundle, source="bundle.json")
        assert converted.warnings == []
        assert converted.visit_from == "encounter"
        expected = {k: v for k, v in row.items() if v is not None}
        assert converted.record == expected  # every column, the image byte for byte
        assert list(converted.record) == [c.name for c in COLUMNS if c.name in expected]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_cli_round_trip_writes_a_valid_cohort(synth, tmp_path, suffix, capsys):
    assert main(["cohort-to-fhir", str(synth), "--out", str(tmp_path / "bundles")]) == 0
    bundles = sorted(str(p) for p in (tmp_path / "bundles").glob("*.json"))
    assert len(bundles) == 20
    out = tmp_path / "out" / f"cohort{suffix}"
    assert main(["fhir-to-cohort", *bundles, "--out", str(out)]) == 0
    assert "Wrote 20 patients" in capsys.readouterr().out
    assert main(["validate", str(out), "--training"]) == 0
    assert _rows(out) == _rows(synth)
    images = [p.name for p in (out.parent / "images").iterdir()]
    assert len(images) == sum(r["mri_image"] is not None for r in _rows(synth))


def _record(**changes) -> dict:
    record = {
        "patient_id": "A-0001",
        "age": 52,
        "sex": "female",
        "bmi": 31.5,
        "smoking": "current",
        "diabetes": True,
        "baseline_odi": 46.0,
        "treatment": "decompression",
        "clinical_note": f"{SECRET} 52 y/o F, L5 radiculopathy.",
        "imaging_report": f"{SECRET} L4-L5 extrusion.",
    }
    return record | changes


def _resource(bundle: dict, kind: str, code: str | None = None) -> dict:
    for entry in bundle["entry"]:
        resource = entry["resource"]
        codes = json.dumps(resource.get("code", {}))
        if resource["resourceType"] == kind and (code is None or f'"{code}"' in codes):
            return resource
    raise KeyError(kind)


def _add(bundle: dict, resource: dict) -> None:
    patient = bundle["entry"][0]["fullUrl"]
    bundle["entry"].append({"resource": resource | {"subject": {"reference": patient}}})


def _concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def test_unknown_codes_and_missing_resources_warn_and_leave_the_field_out():
    bundle = to_bundle(_record())
    bundle["entry"] = [  # no clinic note in the chart
        e for e in bundle["entry"] if e["resource"]["resourceType"] != "DocumentReference"
    ]
    _resource(bundle, "Observation", "72166-2")["valueCodeableConcept"] = _concept(
        "http://snomed.info/sct", "999999999"
    )
    _resource(bundle, "ServiceRequest")["code"] = _concept("http://snomed.info/sct", "12345678")
    _resource(bundle, "Condition")["code"] = _concept("http://hl7.org/fhir/sid/icd-10-cm", "I10")
    _add(bundle, {"resourceType": "CarePlan", "status": "active", "intent": "plan"})
    heart_rate = {"resourceType": "Observation", "status": "final", "valueInteger": 61}
    _add(bundle, heart_rate | {"code": _concept("http://loinc.org", "8867-4")})
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    statement = {"resourceType": "MedicationStatement", "status": "active"}
    _add(bundle, statement | {"medicationCodeableConcept": _concept(rxnorm, "25480")})
    [converted] = read_bundle(bundle)

    assert {(w.kind, w.resource, w.system, w.code) for w in converted.warnings} == {
        ("unknown value code", "Observation", "http://snomed.info/sct", "999999999"),
        ("unknown code", "ServiceRequest", "http://snomed.info/sct", "12345678"),
        ("unknown code", "Condition", "http://hl7.org/fhir/sid/icd-10-cm", "I10"),
        ("resource type not used", "CarePlan", None, None),
        ("unknown code", "Observation", "http://loinc.org", "8867-4"),
        ("unknown code", "MedicationStatement", rxnorm, "25480"),
    }
    record = converted.record
    for absent in ("smoking", "treatment", "diabetes", "opioid_use", "clinical_note"):
        assert absent not in record
    assert record["bmi"] == 31.5 and record["imaging_report"].startswith(SECRET)
    shown = " ".join(str(w) for w in converted.warnings)
    assert SECRET not in shown and "31.5" not in shown and "52" not in shown


def test_standard_alternatives_conflicts_and_several_patients():
    b1 = to_bundle(_record(patient_id="A-1", bmi=30.0, imaging_report=None))
    b2 = to_bundle(_record(patient_id="A-2", sex="male", imaging_report=None))
    sct = "http://snomed.info/sct"
    # a prior laminectomy, one after the visit, oxycodone, a later BMI, an inline image
    procedure = {
        "resourceType": "Procedure",
        "status": "completed",
        "code": _concept(sct, "387731002"),
    }
    _add(b1, procedure | {"performedDateTime": "2019-03-01"})
    _add(b1, procedure | {"code": _concept(sct, "55705006"), "performedDateTime": "2026-06-01"})
    oxycodone = _concept("http://www.nlm.nih.gov/research/umls/rxnorm", "7804")
    _add(b1, {"resourceType": "MedicationStatement", "status": "active",
              "medicationCodeableConcept": oxycodone})  # fmt: skip
    bmi = dict(_resource(b1, "Observation", "39156-5"), effectiveDateTime="2026-01-20")
    _add(b1, {**bmi, "valueQuantity": {"value": 33.5, "unit": "kg/m2"}})
    image = base64.b64encode(_png(7)).decode()
    media = {"resourceType": "Media", "status": "completed", "id": "m1"}
    _add(b1, media | {"content": {"contentType": "image/png", "data": image}})
    report = {"resourceType": "DiagnosticReport", "status": "final", "id": "r1"}
    report |= {"code": _concept("http://loinc.org", "24533-2"), "conclusion": "No stenosis."}
    _add(b1, report | {"media": [{"link": {"reference": "Media/m1"}}]})
    duration = {"value": 70, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
    _add(b1, {"resourceType": "Observation", "status": "final", "valueQuantity": duration,
              "code": _concept("https://spinecast.example.org/fhir/CodeSystem/spinecast",
                               "symptom-duration")})  # fmt: skip
    both = {"resourceType": "Bundle", "type": "collection", "entry": b1["entry"] + b2["entry"]}
    one, two = read_bundle(both)

    assert one.record["prior_spine_surgery"] is True and one.record["opioid_use"] is True
    assert one.record["bmi"] == 33.5  # the later of two differing values
    assert one.record["mri_image"] == _png(7) and one.record["imaging_report"] == "No stenosis."
    assert one.record["symptom_duration_weeks"] == 10.0
    assert {(w.kind, w.column) for w in one.warnings} == {
        ("surgery after the visit: not prior", "prior_spine_surgery"),
        ("differing values: the latest used", "bmi"),
    }
    assert two.record["patient_id"] == "A-2" and two.record["sex"] == "male"
    assert two.warnings == [] and "mri_image" not in two.record and "opioid_use" not in two.record


def test_reference_date_and_demographics_without_encounter():
    bundle = to_bundle(_record(clinical_note=None, age=40))
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Encounter"]
    [converted] = read_bundle(bundle, as_of=date(2040, 6, 1))
    assert (converted.visit, converted.visit_from) == (date(2040, 6, 1), "as_of")
    assert converted.record["age"] == 54  # born 1986-01-01
    _resource(bundle, "Patient")["gender"] = "unknown"
    _resource(bundle, "Observation", "39156-5")["valueQuantity"]["value"] = 250.0
    [converted] = read_bundle(bundle, as_of=date(2040, 6, 1))
    assert "sex" not in converted.record and "bmi" not in converted.record
    assert {w.kind for w in converted.warnings} == {
        "gender is not female or male: sex left out",
        "value outside the contract's range: left out",
    }


def test_invalid_resource_gets_an_error_naming_resource_and_field():
    bundle = to_bundle(_record())
    _resource(bundle, "Observation", "39156-5")["valueQuantity"]["value"] = SECRET
    with pytest.raises(FhirError) as err:
        read_bundle(bundle, source="b.json")
    index = next(i for i, e in enumerate(bundle["entry"]) if "39156-5" in json.dumps(e))
    message = str(err.value)
    assert message.startswith(f"b.json: Bundle.entry[{index}].resource (Observation) is not valid")
    assert "field valueQuantity.value" in message and SECRET not in message
    with pytest.raises(FhirError, match=r"resource\[0\]: resourceType 'Patiënt' is not a FHIR"):
        read_bundle([{"resourceType": "Patiënt"}])
    with pytest.raises(FhirError, match="holds no Patient"):
        read_bundle({"resourceType": "Bundle", "type": "collection", "entry": []})


def test_validation_errors_never_echo_the_value_even_when_the_validator_does():
    class Echoing(BaseModel):  # a validator that puts the value in its message
        field: str

        @field_validator("field")
        @classmethod
        def check(cls, value):
            raise ValueError(f"{value} is wrong")

    with pytest.raises(FhirError) as err:
        _validated(Echoing, {"field": SECRET}, "resource[0] (Echoing)", "b.json")
    assert "field field: Value error, <the value> is wrong" in str(err.value)
    assert SECRET not in str(err.value)


def test_cli_reports_an_invalid_bundle_and_writes_nothing(tmp_path, capsys):
    bundle = to_bundle(_record())
    _resource(bundle, "Patient")["birthDate"] = SECRET
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle))
    assert main(["fhir-to-cohort", str(path), "--out", str(tmp_path / "c.csv")]) == 1
    error = capsys.readouterr().err
    assert "bad.json: Bundle.entry[0].resource (Patient)" in error and "birthDate" in error
    assert SECRET not in error and not (tmp_path / "c.csv").exists()


def test_cli_prints_warning_counts_by_kind_only(tmp_path, capsys):
    bundle = to_bundle(_record())
    _resource(bundle, "Condition")["code"] = _concept("http://hl7.org/fhir/sid/icd-10-cm", "I10")
    (tmp_path / "b.json").write_text(json.dumps(bundle))
    out = tmp_path / "c.jsonl"
    assert main(["fhir-to-cohort", str(tmp_path / "b.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 warning(s)" in printed and "Condition: unknown code" in printed
    assert "I10" not in printed and SECRET not in printed
    assert pd.read_json(out, lines=True).loc[0, "patient_id"] == "A-0001"

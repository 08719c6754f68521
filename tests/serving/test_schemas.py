"""The API models are the cohort schema: same fields, types, ranges, categories, limits."""

import pytest
from pydantic import ValidationError
from spinecast.datasets.schema import COLUMNS, PATIENT_COLUMNS
from spinecast.serving.schemas import EXAMPLE_PATIENT, BatchRequest, Patient, PredictRequest


def test_patient_has_exactly_the_contract_fields_with_their_rules():
    schema = Patient.model_json_schema()
    assert list(schema["properties"]) == list(PATIENT_COLUMNS)
    assert set(schema["required"]) == {c.name for c in COLUMNS if c.required}
    for col in COLUMNS:
        if col.name not in PATIENT_COLUMNS:
            continue
        prop = schema["properties"][col.name]
        assert prop["description"]
        options = prop.get("anyOf", [prop])
        if col.is_number:
            assert any(
                o.get("minimum") == col.low and o.get("maximum") == col.high for o in options
            ), col.name
        if col.categories:
            assert any(
                [v for v in o.get("enum", []) if v is not None] == list(col.categories)
                for o in options
            ), col.name
        if col.kind == "text":
            assert any(o.get("maxLength") == col.max_chars for o in options), col.name


def test_the_example_patient_is_valid():
    assert Patient.model_validate(EXAMPLE_PATIENT).patient_id == EXAMPLE_PATIENT["patient_id"]


@pytest.mark.parametrize(
    "change",
    [
        {"age": 17},
        {"age": 30.5},
        {"smoking": "sometimes"},
        {"bmi": float("nan")},
        {"diabetes": "yes"},
        {"extra": 1},
        {"clinical_note": "x" * 20_001},
    ],
)
def test_violations_name_the_field_and_hide_the_value(change):
    with pytest.raises(ValidationError) as err:
        Patient.model_validate({**EXAMPLE_PATIENT, **change})
    field = next(iter(change))
    assert field in str(err.value) and "input_value" not in str(err.value)


def test_integral_floats_are_integers_but_fractions_are_not():
    integral = Patient.model_validate({**EXAMPLE_PATIENT, "asa_class": 2.0}).asa_class
    assert integral == 2 and type(integral) is int
    for fraction in (2.5, 2.000001):
        with pytest.raises(ValidationError, match="asa_class"):
            Patient.model_validate({**EXAMPLE_PATIENT, "asa_class": fraction})


def test_request_wrappers_reject_unknown_fields_and_bad_batch_sizes():
    with pytest.raises(ValidationError):
        PredictRequest.model_validate({"patient": EXAMPLE_PATIENT, "debug": True})
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"patients": []})
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"patients": [EXAMPLE_PATIENT] * 257})

"""The HTTP API's request and response models (CONTRACT.md section 2).

`Patient` is generated from the cohort schema (`spinecast.datasets.schema.COLUMNS`): one field per
non-label column, with its type, range, categories, text limit and description, so the API and the
file loader cannot drift apart. Every model rejects unknown fields, NaN and infinity, and keeps input
values out of its error messages (`hide_input_in_errors`): errors name the field and the rule only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from spinecast.datasets.images import ImageError, load_image
from spinecast.datasets.inputs import MODALITIES
from spinecast.datasets.schema import COLUMNS, PATIENT_COLUMNS, TREATMENTS, Column

MAX_BATCH = 256
MAX_IMAGE_BASE64 = 4_000_000  # characters; the body limit (default 1 MB) usually binds first


def _openapi_nullable(schema: dict, _model=None) -> None:
    """OpenAPI 3.0 (what BentoML publishes) has no `type: null`: `anyOf [X, null]` -> X + nullable."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf", [])
        if len(options) == 2 and {"type": "null"} in options:
            prop.pop("anyOf")
            prop.update(next(o for o in options if o != {"type": "null"}), nullable=True)
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]


STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False, strict=True,
                    json_schema_extra=_openapi_nullable)
RESPONSE = ConfigDict(json_schema_extra=_openapi_nullable)

EXAMPLE_PATIENT: dict[str, Any] = {
    "patient_id": "A-000123", "age": 47, "sex": "male", "bmi": 27.4, "smoking": "never", "diabetes": False,
    "depression": False, "anxiety": False, "workers_comp": False, "opioid_use": True, "prior_spine_surgery": False,
    "asa_class": 2, "symptom_duration_weeks": 14, "baseline_odi": 48, "back_pain_nrs": 4, "leg_pain_nrs": 8,
    "diagnosis": "disc_herniation", "treatment": "decompression",
    "clinical_note": "47M with 14 weeks of left leg pain radiating to the lateral foot, worse than his back pain. "
                     "Failed 8 weeks of PT. Denies bowel or bladder change. SLR positive on the left at 40 degrees. "
                     "Plantar flexion 4/5 on the left, Achilles reflex diminished on the left.",
    "imaging_report": "MRI lumbar spine without contrast. L4-L5: mild disc bulge, no stenosis. L5-S1: left "
                      "paracentral disc extrusion compressing the traversing left S1 nerve root. IMPRESSION: "
                      "1. L5-S1 left paracentral extrusion with left S1 root compression.",
}


def _patient_field(col: Column) -> tuple[Any, Any]:
    if col.categories:
        typ: Any = Literal[col.categories]
    else:
        typ = {"integer": int, "float": float, "bool": bool, "string": str}[col.dtype]
    limits: dict[str, Any] = {}
    if col.is_number:  # JSON has one number type: 2.0 is a valid integer (lax), 2.5 is not
        limits = {"ge": col.low, "le": col.high, **({"strict": False} if col.dtype == "integer" else {})}
    elif col.kind == "text":
        limits = {"max_length": col.max_chars}
    elif col.kind == "id":
        limits = {"min_length": 1, "max_length": 256, "pattern": r"\S"}  # blank is "not recorded"
    description = col.description
    if col.kind == "image":
        limits = {"max_length": MAX_IMAGE_BASE64}
        description = "The MRI key image itself: a PNG or JPEG file, base64-encoded (in cohort files: a path)."
    examples = [EXAMPLE_PATIENT[col.name]] if col.name in EXAMPLE_PATIENT else None
    field = Field(... if col.required else None, description=description, examples=examples, **limits)
    return (typ if col.required else typ | None), field


def _check_image(value: str | None) -> str | None:
    """The image must decode: base64, then a PNG or JPEG within the pixel limit (no bombs)."""
    if value is None:
        return value
    try:
        load_image(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as err:
        rule = str(err) if isinstance(err, ImageError) else "must be base64-encoded"
        raise ValueError(f"{rule} (a base64-encoded PNG or JPEG image)") from None
    return value


Patient = create_model(
    "Patient", __config__=STRICT,
    __validators__={"image": field_validator("mri_image")(_check_image)},
    __doc__="One patient episode: a cohort row without the labels (CONTRACT.md). Only patient_id, age and sex "
            "are required; every other field may be null or left out.",
    **{c.name: _patient_field(c) for c in COLUMNS if c.name in PATIENT_COLUMNS},
)


class PredictRequest(BaseModel):
    model_config = STRICT
    patient: Patient = Field(description="The patient to predict for.")


class BatchRequest(BaseModel):
    model_config = STRICT
    patients: list[Patient] = Field(min_length=1, max_length=MAX_BATCH,
                                    description=f"1 to {MAX_BATCH} patients; answers come in the same order.")


REASON_EXAMPLE = "decompression: predicted benefit clearly above the less invasive options"


class Outcome(BaseModel):
    treatment: Literal[TREATMENTS] = Field(description="The treatment this outcome is predicted under.")
    p_satisfied: float = Field(ge=0, le=1, description="Calibrated probability of being satisfied at 12 months.",
                               examples=[0.81])
    p_mcid: float = Field(ge=0, le=1, description="Calibrated probability of an ODI improvement of at least 15.",
                          examples=[0.74])
    odi_12m: float = Field(ge=0, le=100, description="Expected Oswestry Disability Index at 12 months.",
                           examples=[21.5])
    p_satisfied_low: float | None = Field(None, ge=0, le=1, examples=[0.74], description=(
        "Lower end of the interval of p_satisfied over the model's bootstrap ensemble (coverage: the "
        "card's `decision.interval`, default 80 %)."))
    p_satisfied_high: float | None = Field(None, ge=0, le=1, examples=[0.86],
                                           description="Upper end of the same interval.")
    benefit: float | None = Field(None, ge=-1, le=1, examples=[0.26],
                                  description="Predicted p_satisfied minus that of physical therapy.")
    benefit_low: float | None = Field(None, ge=-1, le=1, examples=[0.17], description=(
        "The lower bound of that benefit the decision rule reads (the card's `decision.quantile` of "
        "the ensemble)."))
    support: float | None = Field(None, ge=0, le=1, examples=[0.41], description=(
        "Estimated share of patients like this one who received this treatment in training (propensity)."))
    supported: bool | None = Field(None, description=(
        "support >= the card's `decision.support_floor`; an unsupported treatment is never recommended."))


class Prediction(BaseModel):
    model_config = RESPONSE
    patient_id: str = Field(description="Echoed from the request.", examples=["A-000123"])
    model_version: str = Field(description="The model bundle's version.", examples=["spinecast-20261201-ab12cd"])
    outcomes: list[Outcome] = Field(description="One entry per treatment, highest p_satisfied first.")
    recommended_treatment: Literal[TREATMENTS] = Field(description=(
        "The decision rule's choice, not always the highest p_satisfied: physical therapy unless a more "
        "invasive treatment's benefit is clearly positive (lower bound above the margin) and similar "
        "patients received it (support above the floor)."))
    recommendation_reason: str | None = Field(None, description="Why the rule chose it, in one sentence.",
                                              examples=[REASON_EXAMPLE])
    planned_treatment: Literal[TREATMENTS] | None = Field(description="The request's `treatment`, if given.")
    modalities_used: list[Literal[MODALITIES]] = Field(description="Inputs that were present and used.")
    warnings: list[str] = Field(description="What was missing or truncated (names only, never values).")


class PredictionBatch(BaseModel):
    predictions: list[Prediction] = Field(description="In the order of the request's patients.")


class FieldEffect(BaseModel):
    field: str = Field(description="A structured field that was recorded.")
    effect: float = Field(description="Change in p_satisfied when the field is treated as not recorded.")


class SentenceEffect(BaseModel):
    source: Literal["clinical_note", "imaging_report"]
    index: int = Field(description="Position of the sentence in the encoder's window (0-based).")
    text: str = Field(description="The sentence, from the request.")
    effect: float = Field(description="Change in p_satisfied when the sentence is left out.")


class Explanation(BaseModel):
    treatment: Literal[TREATMENTS] = Field(description="The treatment explained: planned, else recommended.")
    modalities: dict[str, float] = Field(description="Change in p_satisfied when each present modality is removed.")
    fields: list[FieldEffect] = Field(description="The most influential structured fields, largest effect first.")
    sentences: list[SentenceEffect] = Field(description="The most influential sentences, largest effect first.")
    sentences_scored: int = Field(description="Sentences occluded (capped by configuration).")


class ExplainedPrediction(Prediction):
    explanation: Explanation

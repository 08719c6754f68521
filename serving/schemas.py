"""The HTTP API's request and response models (CONTRACT.md section 2).

`Patient` is generated from the cohort schema (`spinecast.datasets.schema.COLUMNS`): one field per
non-label column, with its type, range, categories, text limit and description, so the API and the
file loader cannot drift apart. Every model rejects unknown fields, NaN and infinity, and keeps
input values out of its error messages (`hide_input_in_errors`): errors name the field and the rule
only.

Types are JSON's, strictly: an integer field takes a JSON integer (or an integral number such as
3.0, since JSON has one number type), never a string or a boolean; a boolean field takes `true` or
`false` only; a string field takes a string only. `patient_id` holds no control characters.

`mri_image` is checked here for what is cheap (base64, its size); decoding the pixels is the
service's work, off the event loop (`check_images`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator
from spinecast.datasets.images import ImageError, image_pixels, load_image
from spinecast.datasets.inputs import MODALITIES
from spinecast.datasets.schema import COLUMNS, PATIENT_COLUMNS, TREATMENTS, Column

MAX_BATCH = 256
MAX_IMAGE_BASE64 = (
    700_000  # characters (512 KiB of image): a patient with both texts at their limit fits in 1 MiB
)
# Control characters have no place in an identifier (they forge log lines and break CSV exports).
PATIENT_ID_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


def _openapi_nullable(schema: dict, _model=None) -> None:
    """OpenAPI 3.0 (what BentoML publishes) has no `type: null`: `anyOf [X, null]` -> X +
    nullable."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf", [])
        if len(options) == 2 and {"type": "null"} in options:
            prop.pop("anyOf")
            prop.update(next(o for o in options if o != {"type": "null"}), nullable=True)
            if "enum" in prop:
                prop["enum"] = [*prop["enum"], None]


STRICT = ConfigDict(
    extra="forbid",
    hide_input_in_errors=True,
    allow_inf_nan=False,
    strict=True,
    json_schema_extra=_openapi_nullable,
)
RESPONSE = ConfigDict(json_schema_extra=_openapi_nullable)

EXAMPLE_PATIENT: dict[str, Any] = {
    "patient_id": "A-000123",
    "age": 47,
    "sex": "male",
    "bmi": 27.4,
    "smoking": "never",
    "diabetes": False,
    "depression": False,
    "anxiety": False,
    "workers_comp": False,
    "opioid_use": True,
    "prior_spine_surgery": False,
    "asa_class": 2,
    "symptom_duration_weeks": 14,
    "baseline_odi": 48,
    "back_pain_nrs": 4,
    "leg_pain_nrs": 8,
    "diagnosis": "disc_herniation",
    "treatment": "decompression",
    "clinical_note": (
        "47M with 14 weeks of left leg pain radiating to the lateral foot, "
        "worse than his back pain. "
        "Failed 8 weeks of PT. Denies bowel or bladder change. "
        "SLR positive on the left at 40 degrees. "
        "Plantar flexion 4/5 on the left, Achilles reflex diminished on the left."
    ),
    "imaging_report": (
        "MRI lumbar spine without contrast. L4-L5: mild disc bulge, no stenosis. L5-S1: left "
        "paracentral disc extrusion compressing the traversing left S1 nerve root. IMPRESSION: "
        "1. L5-S1 left paracentral extrusion with left S1 root compression."
    ),
}


def _json_integer(value: Any) -> Any:
    """JSON has one number type: 3.0 is the integer 3; 3.5, "3" and true are not integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a JSON integer")  # noqa: TRY004 - pydantic turns ValueError into the 400
    return value


def _patient_field(col: Column) -> tuple[Any, Any]:
    if col.categories:
        typ: Any = Literal[col.categories]
    else:
        typ = {"integer": int, "float": float, "bool": bool, "string": str}[col.dtype]
    limits: dict[str, Any] = {}
    if (
        col.is_number
    ):  # the range on the number itself (then the JSON schema states it), checked after the type
        typ = Annotated[
            typ,
            Field(ge=col.low, le=col.high),
            *([BeforeValidator(_json_integer)] if col.dtype == "integer" else []),
        ]
    elif col.kind == "text":
        limits = {"max_length": col.max_chars}
    elif col.kind == "id":  # blank is "not recorded"
        limits = {"min_length": 1, "max_length": 256, "pattern": PATIENT_ID_PATTERN}
    description = col.description
    if col.kind == "image":
        limits = {"max_length": MAX_IMAGE_BASE64}
        description = (
            "The MRI key image itself: a PNG or JPEG file, base64-encoded "
            "(in cohort files: a path)."
        )
    examples = [EXAMPLE_PATIENT[col.name]] if col.name in EXAMPLE_PATIENT else None
    field = Field(
        ... if col.required else None, description=description, examples=examples, **limits
    )
    return (typ if col.required else typ | None), field


def _check_base64(value: str | None) -> str | None:
    """Cheap, so on the event loop: the image must be base64 (its pixels are `check_images`'
    work)."""
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError(
                "must be base64-encoded (a base64-encoded PNG or JPEG image)"
            ) from None
    return value


def check_images(patients: list[dict], max_pixels: int) -> list[tuple[str, str]]:
    """Decode every patient's `mri_image` (base64 already checked): a PNG or JPEG within the pixel
    limit per image (no bombs) and, all images together, within `max_pixels` per request (read
    from the headers, before any image is decoded). Returns (patient index, rule) problems (index
    None: the request as a whole); slow for large
    images, so the service runs it in a bounded thread pool, never on its event loop."""
    problems, images = [], []
    for i, patient in enumerate(patients):
        if patient.get("mri_image"):
            data = base64.b64decode(patient["mri_image"])
            try:
                images.append((i, data, image_pixels(data)))
            except ImageError as err:
                problems.append((i, f"{err} (a base64-encoded PNG or JPEG image)"))
    total = sum(pixels for *_, pixels in images)
    if total > max_pixels:
        return [
            (None, f"images must hold at most {max_pixels:,} pixels per request; got {total:,}")
        ]
    for i, data, _ in images:
        try:
            load_image(data)
        except ImageError as err:
            problems.append((i, f"{err} (a base64-encoded PNG or JPEG image)"))
    return problems


Patient = create_model(
    "Patient",
    __config__=STRICT,
    __validators__={"image": field_validator("mri_image")(_check_base64)},
    __doc__=(
        "One patient episode: a cohort row without the labels (CONTRACT.md). "
        "Only patient_id, age and sex are required; every other field may be null or left out."
    ),
    **{c.name: _patient_field(c) for c in COLUMNS if c.name in PATIENT_COLUMNS},
)


class PredictRequest(BaseModel):
    model_config = STRICT
    patient: Patient = Field(description="The patient to predict for.")


class BatchRequest(BaseModel):
    model_config = STRICT
    patients: list[Patient] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} patients; answers come in the same order.",
    )


REASON_EXAMPLE = "decompression: predicted benefit clearly above the less invasive options"


class Outcome(BaseModel):
    treatment: Literal[TREATMENTS] = Field(
        description="The treatment this outcome is predicted under."
    )
    p_satisfied: float = Field(
        ge=0,
        le=1,
        description="Calibrated probability of being satisfied at 12 months.",
        examples=[0.81],
    )
    p_mcid: float = Field(
        ge=0,
        le=1,
        description="Calibrated probability of an ODI improvement of at least 15.",
        examples=[0.74],
    )
    odi_12m: float = Field(
        ge=0,
        le=100,
        description="Expected Oswestry Disability Index at 12 months.",
        examples=[21.5],
    )
    p_satisfied_low: float | None = Field(
        None,
        ge=0,
        le=1,
        examples=[0.74],
        description=(
            "Lower end of the interval of p_satisfied over the model's bootstrap ensemble "
            "(coverage: the card's `decision.interval`, default 80 %)."
        ),
    )
    p_satisfied_high: float | None = Field(
        None, ge=0, le=1, examples=[0.86], description="Upper end of the same interval."
    )
    benefit: float | None = Field(
        None,
        ge=-1,
        le=1,
        examples=[0.26],
        description="Predicted p_satisfied minus that of physical therapy.",
    )
    benefit_low: float | None = Field(
        None,
        ge=-1,
        le=1,
        examples=[0.17],
        description=(
            "The lower bound of that benefit the decision rule reads "
            "(the card's `decision.quantile` of the ensemble)."
        ),
    )
    support: float | None = Field(
        None,
        ge=0,
        le=1,
        examples=[0.41],
        description=(
            "Estimated share of patients like this one who received this treatment in training "
            "(propensity)."
        ),
    )
    supported: bool | None = Field(
        None,
        description=(
            "support >= the card's `decision.support_floor`; "
            "an unsupported treatment is never recommended."
        ),
    )


class Prediction(BaseModel):
    model_config = RESPONSE
    patient_id: str = Field(description="Echoed from the request.", examples=["A-000123"])
    model_version: str = Field(
        description="The model bundle's version.", examples=["spinecast-20261201-ab12cd"]
    )
    outcomes: list[Outcome] = Field(
        description="One entry per treatment, highest p_satisfied first."
    )
    recommended_treatment: Literal[TREATMENTS] = Field(
        description=(
            "The decision rule's choice, not always the highest p_satisfied: "
            "physical therapy unless a more invasive treatment's benefit is clearly positive "
            "(lower bound above the margin) and similar patients received it "
            "(support above the floor)."
        )
    )
    recommendation_reason: str | None = Field(
        None, description="Why the rule chose it, in one sentence.", examples=[REASON_EXAMPLE]
    )
    planned_treatment: Literal[TREATMENTS] | None = Field(
        description="The request's `treatment`, if given."
    )
    modalities_used: list[Literal[MODALITIES]] = Field(
        description="Inputs that were present and used."
    )
    warnings: list[str] = Field(
        description="What was missing or truncated (names only, never values)."
    )


class PredictionBatch(BaseModel):
    predictions: list[Prediction] = Field(description="In the order of the request's patients.")


class FieldEffect(BaseModel):
    field: str = Field(
        description="A structured field that was recorded, or a fact read from the text: "
        "note_side_left/right (side of the leg symptoms), report_side_left/right (side of the "
        "compressed root), side_agreement (the two agree)."
    )
    effect: float = Field(
        description="Change in p_satisfied when the field is treated as not recorded."
    )


class SentenceEffect(BaseModel):
    source: Literal["clinical_note", "imaging_report"]
    index: int = Field(description="Position of the sentence in the encoder's window (0-based).")
    text: str = Field(description="The sentence, from the request.")
    effect: float = Field(description="Change in p_satisfied when the sentence is left out.")


class Explanation(BaseModel):
    treatment: Literal[TREATMENTS] = Field(
        description="The treatment explained: planned, else recommended."
    )
    modalities: dict[str, float] = Field(
        description="Change in p_satisfied when each present modality is removed."
    )
    fields: list[FieldEffect] = Field(
        description="The most influential structured fields, largest effect first."
    )
    sentences: list[SentenceEffect] = Field(
        description="The most influential sentences, largest effect first."
    )
    sentences_scored: int = Field(description="Sentences occluded (capped by configuration).")


class ExplainedPrediction(Prediction):
    explanation: Explanation

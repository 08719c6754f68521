"""The cohort contract (../shared/CONTRACT.md section 1) as data.

Everything that reads or checks patient records derives from `COLUMNS`: the file loader
(`spinecast.datasets.io`), the feature encoding used in training and serving, and the API models.
Changing a name or a type here is a breaking change; adding an optional column is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TREATMENTS = ("physical_therapy", "epidural_steroid_injection", "decompression", "fusion")
TREATMENT_INDEX = {
    t: i for i, t in enumerate(TREATMENTS)
}  # treatment -> its column in every (N, 4) output
DIAGNOSES = ("disc_herniation", "spinal_stenosis", "spondylolisthesis", "nonspecific_low_back_pain")
MAX_TEXT_CHARS = 20_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MCID_ODI_POINTS = 15.0  # Copay 2008 / Ostelo 2008: `mcid` = baseline_odi - odi_12m >= 15

DType = Literal["string", "integer", "float", "bool"]
Role = Literal["id", "feature", "treatment", "label"]


@dataclass(frozen=True)
class Column:
    name: str
    dtype: DType
    role: Role
    required: bool = False
    description: str = ""
    low: float | None = None  # inclusive range for numbers
    high: float | None = None
    categories: tuple[str, ...] | None = None
    max_chars: int | None = None
    kind: Literal["category", "text", "image", "id"] | None = None  # what a string holds

    @property
    def is_number(self) -> bool:
        return self.dtype in ("integer", "float")

    def rule(self) -> str:
        """The rule a value of this column must satisfy, in words (used in every error)."""
        if self.categories:
            return f"must be one of {', '.join(self.categories)}"
        if self.is_number:
            kind = "an integer" if self.dtype == "integer" else "a number"
            return f"must be {kind} in [{self.low:g}, {self.high:g}]"
        if self.dtype == "bool":
            return "must be true or false"
        if self.kind == "text":
            return f"must be text of at most {self.max_chars:,} characters"
        if self.kind == "image":
            return "must be the path of a PNG or JPEG file, relative to the cohort file"
        return "must be a non-empty string"


def _flag(name: str, description: str) -> Column:
    return Column(name, "bool", "feature", description=description)


COLUMNS: tuple[Column, ...] = (
    Column(
        "patient_id",
        "string",
        "id",
        required=True,
        kind="id",
        description="Opaque identifier, unique in a file; never used as a feature.",
    ),
    Column(
        "age",
        "integer",
        "feature",
        required=True,
        low=18,
        high=110,
        description="Age in years at the visit.",
    ),
    Column(
        "sex",
        "string",
        "feature",
        required=True,
        categories=("female", "male"),
        kind="category",
        description="Sex recorded in the chart.",
    ),
    Column("bmi", "float", "feature", low=12, high=80, description="Body-mass index, kg/m²."),
    Column(
        "smoking",
        "string",
        "feature",
        categories=("never", "former", "current"),
        kind="category",
        description="Tobacco status.",
    ),
    _flag("diabetes", "Diabetes mellitus."),
    _flag("depression", "Diagnosed depression."),
    _flag("anxiety", "Diagnosed anxiety disorder."),
    _flag("workers_comp", "Open workers' compensation or litigation claim."),
    _flag("opioid_use", "Regular opioid use before treatment."),
    _flag("prior_spine_surgery", "Any earlier lumbar surgery."),
    Column("asa_class", "integer", "feature", low=1, high=5, description="ASA physical status."),
    Column(
        "symptom_duration_weeks",
        "float",
        "feature",
        low=0,
        high=1500,
        description="Weeks since the current episode began.",
    ),
    Column(
        "baseline_odi",
        "float",
        "feature",
        low=0,
        high=100,
        description="Oswestry Disability Index before treatment (0 to 100).",
    ),
    Column(
        "back_pain_nrs",
        "integer",
        "feature",
        low=0,
        high=10,
        description="Back pain on the 0-10 numeric rating scale.",
    ),
    Column(
        "leg_pain_nrs",
        "integer",
        "feature",
        low=0,
        high=10,
        description="Leg pain on the 0-10 numeric rating scale.",
    ),
    Column(
        "diagnosis",
        "string",
        "feature",
        categories=DIAGNOSES,
        kind="category",
        description="Working diagnosis as coded.",
    ),
    Column(
        "treatment",
        "string",
        "treatment",
        categories=TREATMENTS,
        kind="category",
        description="Treatment given (training; required there) or planned (scoring; optional).",
    ),
    Column(
        "clinical_note",
        "string",
        "feature",
        max_chars=MAX_TEXT_CHARS,
        kind="text",
        description="Free-text spine clinic note (history, exam, assessment).",
    ),
    Column(
        "imaging_report",
        "string",
        "feature",
        max_chars=MAX_TEXT_CHARS,
        kind="text",
        description="Free-text lumbar MRI radiology report.",
    ),
    Column(
        "mri_image",
        "string",
        "feature",
        kind="image",
        description="One grayscale mid-sagittal lumbar MRI key image (PNG or JPEG).",
    ),
    Column(
        "satisfied",
        "bool",
        "label",
        description="Satisfied with the result at 12 months (NASS satisfaction index 1 or 2).",
    ),
    Column(
        "odi_12m",
        "float",
        "label",
        low=0,
        high=100,
        description="Oswestry Disability Index 12 months after treatment.",
    ),
)

COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
FEATURE_COLUMNS = tuple(c.name for c in COLUMNS if c.role == "feature")
TEXT_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "text")
LABEL_COLUMNS = tuple(c.name for c in COLUMNS if c.role == "label")
# Structured (tabular) inputs: every feature that is not free text or an image.
TABULAR_COLUMNS = tuple(
    c.name for c in COLUMNS if c.role == "feature" and c.kind not in ("text", "image")
)
PATIENT_COLUMNS = tuple(c.name for c in COLUMNS if c.role != "label")  # an API `Patient`

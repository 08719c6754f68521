"""spinecast.datasets: the cohort contract, its file loader and the synthetic cohort generator."""

from .io import (
    CohortError,
    Violation,
    iter_table,
    load_cohort,
    mcid,
    read_table,
    summarize,
    typed_format,
    validate_frame,
)
from .schema import COLUMN_BY_NAME, COLUMNS, DIAGNOSES, TREATMENTS, Column

__all__ = [
    "COLUMNS",
    "COLUMN_BY_NAME",
    "DIAGNOSES",
    "TREATMENTS",
    "CohortError",
    "Column",
    "Violation",
    "iter_table",
    "load_cohort",
    "mcid",
    "read_table",
    "summarize",
    "typed_format",
    "validate_frame",
]

"""One scoring step for both batch engines: validated cohort rows -> a table of predictions.

`spinecast predict` (serving/batch.py, one process) and its Ray engine (serving/distributed.py,
actors on a cluster) both call `score_frame`, and both write `SCHEMA`: the same columns whichever
engine ran.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
from spinecast.datasets import TREATMENTS
from spinecast.datasets.inputs import OUTCOMES, OUTPUTS

from .predictor import Predictor, predictions

PROGRESS_ROWS = 256
# per treatment: the model's outputs, then the rule's interval of p_satisfied (`Outcome` fields)
TABLE_OUTPUTS = (*OUTCOMES, "propensity", "p_satisfied_low", "p_satisfied_high")
SCHEMA = pa.schema(
    [
        ("patient_id", pa.string()),
        ("model_version", pa.string()),
        ("recommended_treatment", pa.string()),
        ("planned_treatment", pa.string()),
    ]
    + [(f"{k}_{t}", pa.float32()) for k in TABLE_OUTPUTS for t in TREATMENTS]
    + [
        ("recommendation_reason", pa.string()),
        ("modalities_used", pa.list_(pa.string())),
        ("warnings", pa.list_(pa.string())),
    ]
)


def score_frame(
    predictor: Predictor, frame: pd.DataFrame, progress: Callable[[int], object] | None = None
) -> pa.Table:
    """Validated cohort rows -> their predictions as a table of SCHEMA, one row per patient, in
    order. Both engines call this (`batch.score_file`, the Ray actors of
    `spinecast.serving.distributed`)."""
    arrays = predictor.encode(frame)
    parts = []
    for first in range(0, len(frame), PROGRESS_ROWS):  # a progress bar moves within a chunk too
        parts.append(
            predictor.run({k: v[first : first + PROGRESS_ROWS] for k, v in arrays.items()})
        )
        if progress is not None:
            progress(min(PROGRESS_ROWS, len(frame) - first))
    outcomes = {k: np.concatenate([part[k] for part in parts]) for k in OUTPUTS}
    return _table(predictions(frame, arrays, outcomes, predictor.version, predictor.rule))


def _table(rows: list[dict]) -> pa.Table:
    columns = {
        k: [r[k] for r in rows]
        for k in (
            "patient_id",
            "model_version",
            "recommended_treatment",
            "planned_treatment",
            "recommendation_reason",
            "modalities_used",
            "warnings",
        )
    }
    by_treatment = [{o["treatment"]: o for o in r["outcomes"]} for r in rows]
    for k in TABLE_OUTPUTS:
        for t in TREATMENTS:
            columns[f"{k}_{t}"] = np.array(
                [outcomes[t]["support" if k == "propensity" else k] for outcomes in by_treatment],
                dtype=np.float32,
            )
    return pa.table({name: columns[name] for name in SCHEMA.names}, schema=SCHEMA)

"""One scoring step for both batch engines: validated cohort rows -> a table of predictions.

`spinecast predict` (serving/batch.py, one process) and its Ray engine (serving/distributed.py,
actors on a cluster) both call `score_frame`, and both write `SCHEMA`: the same columns whichever
engine ran. With a `PredictionStore` (`spinecast predict --cache FILE`) a record scored before by
the same bundle is answered from the file, neither encoded nor run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from spinecast.datasets import TREATMENTS
from spinecast.datasets.inputs import OUTCOMES, OUTPUTS
from spinecast.datasets.schema import PATIENT_COLUMNS

from .bundle import CHECKSUMS
from .embeddings import BlobStore
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


class PredictionStore:
    """Each patient's prediction on disk (a table of the cache's SQLite file), keyed by the bundle
    (its SHA256SUMS and the variant) and a BLAKE2b hash of the patient's record: every input
    column but patient_id, the image by its bytes. A changed field, text, image or bundle is a new
    key, so an answer from the store is the one the model gives that record."""

    _COLUMNS = tuple(c for c in PATIENT_COLUMNS if c not in ("patient_id", "mri_image"))

    def __init__(self, path: str | Path, predictor: Predictor):
        self.blobs = BlobStore(path, "prediction")
        served = (predictor.bundle / CHECKSUMS).read_bytes() + predictor.variant.encode()
        self.prefix = hashlib.sha256(served).digest()[:8]
        self.hits = self.misses = 0

    def keys(self, frame: pd.DataFrame) -> list[bytes | None]:
        """One key per record; None where its image cannot be read (scored, to raise its error)."""
        fields = frame.reindex(columns=list(self._COLUMNS)).astype(object)
        rows = fields.where(fields.notna(), None).to_numpy().tolist()
        images = frame["mri_image"].tolist() if "mri_image" in frame else [None] * len(frame)
        out = []
        for row, image in zip(rows, images):
            try:
                image = Path(image).read_bytes() if isinstance(image, str) else image
            except OSError:
                out.append(None)
                continue
            digest = hashlib.blake2b(json.dumps(row, default=str).encode(), digest_size=16)
            image = image if isinstance(image, bytes) else b""  # none: NA or None
            digest.update(hashlib.blake2b(image, digest_size=16).digest())
            out.append(self.prefix + digest.digest())
        return out


def score_frame(
    predictor: Predictor,
    frame: pd.DataFrame,
    progress: Callable[[int], object] | None = None,
    store: PredictionStore | None = None,
) -> pa.Table:
    """Validated cohort rows -> their predictions as a table of SCHEMA, one row per patient, in
    order. Both engines call this (`batch.score_file`, the Ray actors of
    `spinecast.serving.distributed`). `store`: the records it holds answered from it, the rest
    kept in it."""
    if store is None:
        return _score(predictor, frame, progress)
    keys = store.keys(frame)
    found = store.blobs.get([k for k in keys if k is not None])
    todo = [i for i, k in enumerate(keys) if k not in found]
    rows: list[dict | None] = [None] * len(frame)
    if todo:
        fresh = _score(predictor, frame.iloc[todo].reset_index(drop=True), progress).to_pylist()
        kept = {}
        for i, row in zip(todo, fresh, strict=True):
            rows[i] = row
            if keys[i] is not None:
                kept[keys[i]] = json.dumps({k: v for k, v in row.items() if k != "patient_id"})
        store.blobs.put({k: v.encode() for k, v in kept.items()})
    for i, (key, patient_id) in enumerate(zip(keys, frame["patient_id"].tolist(), strict=True)):
        if rows[i] is None:
            rows[i] = {"patient_id": patient_id, **json.loads(found[key])}
    store.hits, store.misses = store.hits + len(frame) - len(todo), store.misses + len(todo)
    if progress is not None:
        progress(len(frame) - len(todo))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _score(predictor: Predictor, frame: pd.DataFrame, progress) -> pa.Table:
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

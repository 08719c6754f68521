"""How the structured fields of a patient become numbers, shared by training and serving.

The encoding is derived from the contract (`schema.COLUMNS`) plus statistics fitted on the training
split only, and round-trips through JSON so that the exported bundle encodes exactly as training
did.

- numeric fields (integers and floats): standardized with the training mean and standard deviation;
  a missing value becomes 0 plus an explicit missing indicator;
- categorical and boolean fields: integer ids with 0 reserved for "missing"
  (booleans: 1 = false, 2 = true; categories: 1..k in contract order);
- facts read from the text (`sides.SIDE_FEATURES`: the side of the leg symptoms in the note, of the
  compressed root in the report, and their agreement) are numeric fields like the others. A
  bundle's `features.json` lists the numeric fields it was trained on, so an older bundle without
  them encodes as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .records import Frame, column
from .schema import COLUMN_BY_NAME, TABULAR_COLUMNS
from .sides import SIDE_FEATURES, frame_side_features

NUMERIC_FIELDS = tuple(c for c in TABULAR_COLUMNS if COLUMN_BY_NAME[c].is_number)
CATEGORICAL_FIELDS = tuple(c for c in TABULAR_COLUMNS if not COLUMN_BY_NAME[c].is_number)
FIELDS = NUMERIC_FIELDS + SIDE_FEATURES  # the numeric fields a model is trained on by default
MISSING_ID = 0


def vocabulary(name: str) -> tuple[str, ...]:
    """The values of a categorical or boolean field, in id order starting at 1."""
    col = COLUMN_BY_NAME[name]
    return ("false", "true") if col.dtype == "bool" else col.categories


@dataclass
class FeatureEncoding:
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    numeric: tuple[str, ...] = FIELDS
    categorical: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {name: vocabulary(name) for name in CATEGORICAL_FIELDS}
    )

    @classmethod
    def fit(cls, train: pd.DataFrame, numeric: tuple[str, ...] = FIELDS) -> FeatureEncoding:
        """Statistics from the training split only; a field never observed gets mean 0, std 1."""
        mean, std = {}, {}
        for name, values in zip(numeric, _numeric(train, numeric).T):
            values = values[~np.isnan(values)]
            mean[name] = float(values.mean()) if len(values) else 0.0
            sd = float(values.std()) if len(values) > 1 else 1.0
            std[name] = sd if sd > 1e-6 else 1.0
        return cls(mean=mean, std=std, numeric=numeric)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "numeric": list(self.numeric),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "missing_id": MISSING_ID,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureEncoding:
        return cls(
            mean=dict(data["mean"]),
            std=dict(data["std"]),
            numeric=tuple(data["numeric"]),
            categorical={k: tuple(v) for k, v in data["categorical"].items()},
        )

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes per categorical field, the missing id included."""
        return [len(v) + 1 for v in self.categorical.values()]

    def encode(self, frame: Frame) -> dict[str, np.ndarray]:
        """Validated records -> {"numeric": (B, N) float32, "numeric_missing": (B, N) float32,
        "categorical": (B, C) int64}."""
        n = len(frame)
        raw = _numeric(frame, self.numeric)
        missing = np.isnan(raw)
        mean = np.asarray([self.mean[k] for k in self.numeric])
        std = np.asarray([self.std[k] for k in self.numeric])
        numeric = np.where(missing, 0.0, (raw - mean) / std)
        categorical = np.stack([self._ids(frame, name, n) for name in self.categorical], axis=1)
        return {
            "numeric": numeric.astype(np.float32),
            "numeric_missing": missing.astype(np.float32),
            "categorical": categorical.astype(np.int64),
        }

    def _ids(self, frame: Frame, name: str, n: int) -> np.ndarray:
        """Ids by dictionary lookup: anything not in the vocabulary (None, NaN, pd.NA) is missing.
        A plain loop: at serving's batch of one, pandas' per-column machinery cost 10x more."""
        if COLUMN_BY_NAME[name].dtype == "bool":
            lookup = {False: 1, True: 2}
        else:
            lookup = {v: i + 1 for i, v in enumerate(self.categorical[name])}
        values = _column(frame, name, n)
        return np.fromiter((_lookup(lookup, v) for v in values), dtype=np.int64, count=n)


def _lookup(lookup: dict, value) -> int:
    try:
        return lookup.get(value, MISSING_ID)
    except TypeError:  # unhashable: not a value of the field
        return MISSING_ID


def _numeric(frame: Frame, names: tuple[str, ...]) -> np.ndarray:
    """(N, len(names)) float64, NaN where missing: contract fields and facts read from the text."""
    n = len(frame)
    sides = frame_side_features(frame) if set(names) & set(SIDE_FEATURES) else None
    columns = [
        sides[:, SIDE_FEATURES.index(name)] if name in SIDE_FEATURES else _column(frame, name, n)
        for name in names
    ]
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0))


def _column(frame: Frame, name: str, n: int) -> np.ndarray:
    """A column of a DataFrame or `records.Records` as a numpy array (float64 with NaN for numbers,
    else objects); an absent column counts as all missing."""
    if not COLUMN_BY_NAME[name].is_number:
        return column(frame, name)
    if name not in frame.columns:
        return np.full(n, np.nan)
    series = frame[name]
    if not isinstance(series, pd.Series):  # a `Records` column: objects, None where missing
        return np.asarray(pd.to_numeric(series, errors="coerce"), np.float64)
    if series.dtype.kind in "biuf":
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)

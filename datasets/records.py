"""Validated records as the columns the encoders read: a DataFrame, or `Records` (no pandas).

The encoders (`features`, `sides`, `inputs`) read a frame through `len`, `in`, `columns` and
`frame[name]` only, so both kinds serve: a cohort arrives as a DataFrame, a request's few records
as `Records`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class Records:
    """Contract records as object columns: what the encoders read of a DataFrame (`len`, `in`,
    `columns`, `[name]`), without pandas' per-column cost: at serving's batch of one the same
    records in a DataFrame took 0.7 to 0.9 ms more per patient (`benchmarks/http_floor.py`).
    Columns not in `columns` are absent."""

    def __init__(self, records: list[dict], columns: tuple[str, ...]):
        self.columns = columns
        self._rows = len(records)
        self._data = {}
        for name in columns:
            values = np.empty(self._rows, dtype=object)
            values[:] = [r.get(name) for r in records]
            self._data[name] = values

    def __len__(self) -> int:
        return self._rows

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __getitem__(self, name: str) -> np.ndarray:
        return self._data[name]


Frame = pd.DataFrame | Records  # a validated cohort frame, or validated records


def column(frame: Frame, name: str) -> np.ndarray:
    """One column's values as objects (missing: None, NaN or pd.NA); an absent column: all None."""
    if name not in frame:
        return np.full(len(frame), None, dtype=object)
    return np.asarray(frame[name], dtype=object)

"""The contract's rule that `patient_id` is unique (within a request, a file or a whole cohort), in
one place: the loader, the service, `spinecast predict` and its Ray engine all ask `UniqueIds`."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

SMALL = 256  # ids in one call compared in a plain set below this (a request), by pandas above it


class UniqueIds:
    """The ids seen so far, over chunks of a file or files of a cohort.

    Within one `add` the ids are compared exactly; against earlier calls, by their 64-bit hashes:
    8 bytes an id (a million ids take 8 MB), and two different ids share a hash with probability
    about n^2 / 2^65 (3e-8 for a million), in which case the later one is reported as repeated.
    A call's ids are hashed only once a later call needs them: checking one request costs a set.
    """

    def __init__(self) -> None:
        self._hashes = np.empty(0, dtype=np.uint64)  # sorted, distinct
        self._unhashed: list[np.ndarray] = []  # earlier calls' present ids, not hashed yet

    def add(self, ids: Iterable) -> np.ndarray:
        """Positions in `ids` whose id came earlier, in this call or a previous one (missing ids
        are skipped); every id is then remembered."""
        ids = ids.to_numpy(dtype=object) if isinstance(ids, pd.Series) else _objects(ids)
        present = pd.notna(ids)
        repeated = _repeated(ids, present)
        earlier = self._earlier()
        if len(earlier) and present.any():
            hashes = _hash(ids[present])
            at = np.minimum(np.searchsorted(earlier, hashes), len(earlier) - 1)
            repeated[present] |= earlier[at] == hashes
        self._unhashed.append(ids[present])
        return np.flatnonzero(repeated)

    def _earlier(self) -> np.ndarray:
        if self._unhashed:
            self._hashes = np.union1d(self._hashes, _hash(np.concatenate(self._unhashed)))
            self._unhashed = []
        return self._hashes


def _objects(ids: Iterable) -> np.ndarray:
    values = list(ids)
    out = np.empty(len(values), dtype=object)
    out[:] = values  # element by element: a tuple or list id stays one object
    return out


def _hash(ids: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(ids.astype(str).astype(object))


def _repeated(ids: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Within one call, exactly: True where a present id came earlier in `ids`."""
    if len(ids) > SMALL:
        return pd.Series(ids, dtype=object).duplicated(keep="first").to_numpy() & present
    seen: set = set()
    out = np.zeros(len(ids), dtype=bool)
    for i, (value, here) in enumerate(zip(ids, present)):
        if here:
            out[i] = value in seen
            seen.add(value)
    return out

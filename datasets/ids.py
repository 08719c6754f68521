"""The contract's rule that `patient_id` is unique (within a request, a file or a whole cohort), in
one place: the loader, the service, `spinecast predict` and its Ray engine all ask `UniqueIds`."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


class UniqueIds:
    """The ids seen so far, over chunks of a file or files of a cohort.

    Within one `add` the ids are compared exactly; against earlier calls, by their 64-bit hashes:
    8 bytes an id (a million ids take 8 MB), and two different ids share a hash with probability
    about n^2 / 2^65 (3e-8 for a million), in which case the later one is reported as repeated.
    """

    def __init__(self) -> None:
        self._hashes = np.empty(0, dtype=np.uint64)  # sorted, distinct

    def add(self, ids: Iterable) -> np.ndarray:
        """Positions in `ids` whose id came earlier, in this call or a previous one (missing ids
        are skipped); every id is then remembered."""
        ids = pd.Series(
            list(ids) if not isinstance(ids, pd.Series) else ids.to_numpy(), dtype=object
        )
        present = ids.notna().to_numpy()
        repeated = ids.duplicated(keep="first").to_numpy() & present
        hashes = pd.util.hash_array(ids[present].astype(str).to_numpy(dtype=object))
        if len(self._hashes):
            at = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
            repeated[present] |= self._hashes[at] == hashes
        self._hashes = np.union1d(self._hashes, hashes)
        return np.flatnonzero(repeated)

"""`Records` (a request's records as columns) encodes as the DataFrame of the same records."""

import numpy as np
import pandas as pd
from spinecast.datasets import load_cohort
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.records import Records, column
from spinecast.datasets.schema import PATIENT_COLUMNS


def _api_records(frame: pd.DataFrame) -> list[dict]:
    """Cohort rows as an API client sends them: missing values left out, plain Python values."""
    rows = frame[list(PATIENT_COLUMNS)].drop(columns=["mri_image"]).astype(object)
    return [{k: v for k, v in r.items() if not pd.isna(v)} for r in rows.to_dict("records")]


def test_records_encode_as_their_dataframe(small_cohort):
    frame = load_cohort(small_cohort / "cohort.parquet").iloc[:40]
    records = _api_records(frame)
    assert any(len(r) < len(PATIENT_COLUMNS) - 1 for r in records)  # some fields are missing
    encoding = FeatureEncoding.fit(frame)
    as_records = encoding.encode(Records(records, PATIENT_COLUMNS))
    as_frame = encoding.encode(pd.DataFrame.from_records(records, columns=list(PATIENT_COLUMNS)))
    for name in ("numeric", "numeric_missing", "categorical"):
        np.testing.assert_array_equal(as_records[name], as_frame[name], err_msg=name)


def test_an_absent_column_reads_as_missing():
    records = Records([{"patient_id": "A"}, {"patient_id": "B", "age": 50}], ("patient_id", "age"))
    assert len(records) == 2 and "age" in records and "bmi" not in records
    assert column(records, "bmi").tolist() == [None, None]
    assert column(records, "age").tolist() == [None, 50]

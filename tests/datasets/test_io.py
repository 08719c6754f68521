"""The cohort loader enforces every rule of CONTRACT.md section 1 and never shows note text."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from spinecast.datasets import COLUMNS, CohortError, load_cohort, mcid, validate_frame

SECRET = "SENTINEL-PATIENT-TEXT-7731"


def _record(i: int, **changes) -> dict:
    rec = {
        "patient_id": f"A-{i:04d}",
        "age": 40 + i,
        "sex": "female",
        "bmi": 27.5,
        "smoking": "never",
        "diabetes": False,
        "depression": True,
        "anxiety": False,
        "workers_comp": False,
        "opioid_use": True,
        "prior_spine_surgery": False,
        "asa_class": 2,
        "symptom_duration_weeks": 12.0,
        "baseline_odi": 44.0,
        "back_pain_nrs": 4,
        "leg_pain_nrs": 7,
        "diagnosis": "disc_herniation",
        "treatment": "decompression",
        "clinical_note": f"{SECRET} 45 y/o F with L5 radiculopathy.",
        "imaging_report": f"{SECRET} L4-L5 extrusion.",
        "mri_image": "images/a.png",
        "satisfied": True,
        "odi_12m": 20.0,
    }
    rec.update(changes)
    return rec


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "fake.png").write_bytes(b"not an image at all")
    return tmp_path


def _write(folder, records, suffix):
    path = folder / f"cohort{suffix}"
    frame = pd.DataFrame(records)
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_valid_file_loads_typed_in_every_format(folder, suffix):
    path = _write(folder, [_record(1), _record(2, bmi=None, diabetes=None, mri_image=None)], suffix)
    df = load_cohort(path, training=True)
    assert list(df.columns) == [c.name for c in COLUMNS]
    assert str(df["age"].dtype) == "Int64" and df["age"].tolist() == [41, 42]
    assert str(df["diabetes"].dtype) == "boolean" and df["diabetes"].isna().tolist() == [
        False,
        True,
    ]
    assert df["bmi"].dtype == np.float64 and np.isnan(df["bmi"].iloc[1])
    assert df["mri_image"].iloc[0] == str((folder / "images" / "a.png").resolve())
    assert df["clinical_note"].iloc[0].startswith(SECRET)


def test_absent_optional_columns_are_filled_with_missing(folder):
    given = ("patient_id", "age", "sex", "treatment")
    records = [{k: _record(1)[k] for k in given}]
    df = load_cohort(_write(folder, records, ".csv"), training=True)
    assert list(df.columns) == [c.name for c in COLUMNS]
    absent = [c.name for c in COLUMNS if c.name not in given]
    assert {name for name in absent if not df[name].isna().all()} == set()
    assert df.loc[0, list(given)].tolist() == [records[0][k] for k in given]


def _error(folder, records, suffix=".parquet", **kw) -> CohortError:
    with pytest.raises(CohortError) as info:
        load_cohort(_write(folder, records, suffix), **kw)
    assert SECRET not in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("change", "column", "rule"),
    [
        ({"age": 7}, "age", "must be an integer in [18, 110]"),
        ({"age": 40.5}, "age", "must be an integer in [18, 110]"),
        ({"bmi": 95.0}, "bmi", "must be a number in [12, 80]"),
        ({"baseline_odi": float("inf")}, "baseline_odi", "must be a number in [0, 100]"),
        ({"asa_class": 6}, "asa_class", "must be an integer in [1, 5]"),
        ({"sex": "unknown"}, "sex", "must be one of female, male"),
        ({"diagnosis": "sciatica"}, "diagnosis", "must be one of disc_herniation"),
        ({"treatment": "acupuncture"}, "treatment", "must be one of physical_therapy"),
        ({"age": "forty"}, "age", "must be an integer"),
        ({"diabetes": "sometimes"}, "diabetes", "must be true or false"),
        ({"clinical_note": SECRET * 1000}, "clinical_note", "at most 20,000 characters"),
        ({"mri_image": "images/missing.png"}, "mri_image", "must name an existing PNG or JPEG"),
        ({"mri_image": "images/fake.png"}, "mri_image", "must name an existing PNG or JPEG"),
        ({"mri_image": "images/a.tiff"}, "mri_image", "must end in .png, .jpg, .jpeg"),
        ({"age": None}, "age", "is required"),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_each_rule_names_file_row_and_column(folder, suffix, change, column, rule):
    err = _error(folder, [_record(1), _record(2, **change)], suffix)
    line = next(str(v) for v in err.violations if v.column == column)
    assert line.startswith(f"cohort{suffix}:2:{column}: ")
    assert rule in line


def test_got_value_is_shown_for_fields_but_text_only_as_a_length(folder):
    err = _error(folder, [_record(1, age=7, clinical_note=SECRET * 1000)])
    assert "(got 7)" in str(err)
    assert f"(got text of {len(SECRET) * 1000:,} characters)" in str(err)


def test_missing_required_column(folder):
    records = [{k: v for k, v in _record(1).items() if k != "sex"}]
    err = _error(folder, records)
    assert (
        str(err.violations[0])
        == "cohort.parquet:-:sex: required column is missing (got no such column)"
    )


def test_treatment_required_only_for_training(folder):
    path = _write(folder, [_record(1, treatment=None)], ".jsonl")
    assert load_cohort(path)["treatment"].isna().all()
    with pytest.raises(CohortError, match=r"cohort.jsonl:1:treatment: is required"):
        load_cohort(path, training=True)


def test_duplicate_patient_id(folder):
    err = _error(folder, [_record(1), _record(2), _record(3, patient_id="A-0001")])
    assert [str(v) for v in err.violations] == [
        "cohort.parquet:3:patient_id: must be unique in the file (got 'A-0001')"
    ]


def test_unknown_column_is_rejected(folder):
    err = _error(folder, [_record(1, BMI=30.0)])
    assert "cohort.parquet:-:BMI: unknown column" in str(err)


def test_empty_file_and_unknown_extension(folder):
    (folder / "empty.csv").write_text("")
    with pytest.raises(CohortError, match="at least one row"):
        load_cohort(folder / "empty.csv")
    (folder / "cohort.xlsx").write_text("x")
    with pytest.raises(CohortError, match=r"extension must be one of \.parquet, \.csv, \.jsonl"):
        load_cohort(folder / "cohort.xlsx")


def test_broken_jsonl_line_is_named(folder):
    path = folder / "cohort.jsonl"
    path.write_text(json.dumps(_record(1)) + "\n{not json\n")
    with pytest.raises(CohortError, match=r"cohort.jsonl:2:-: each line must be one JSON object"):
        load_cohort(path)


def test_error_lists_first_20_and_counts_all(folder):
    records = [_record(i, age=5) for i in range(30)]
    err = _error(folder, records)
    text = str(err)
    assert len(err.violations) == 30 and "30 violation(s) in 30 row(s)" in text
    assert text.count("must be an integer") == 20 and "... and 10 more" in text
    assert "cohort.parquet:1:age" in text and "cohort.parquet:21:age" not in text


def test_validate_frame_loses_nothing_on_success(folder):
    records = [_record(i) for i in range(5)]
    df = validate_frame(pd.DataFrame(records), base_dir=folder)
    image = str((folder / "images" / "a.png").resolve())
    for name in records[0]:
        want = [image if name == "mri_image" else r[name] for r in records]
        assert df[name].tolist() == want, name


def test_mcid_is_derived_only_where_both_odis_exist():
    frame = pd.DataFrame({"baseline_odi": [50.0, 50.0, np.nan], "odi_12m": [35.0, 40.0, 10.0]})
    assert mcid(frame).tolist() == [True, False, pd.NA]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize(
    "change, column",
    [
        ({"asa_class": "3"}, "asa_class"),
        ({"age": True}, "age"),
        ({"diabetes": 1}, "diabetes"),
        ({"diabetes": "yes"}, "diabetes"),
        ({"patient_id": "A-\x00-9"}, "patient_id"),
    ],
)
def test_typed_files_hold_json_types(folder, suffix, change, column):
    """Parquet and JSON Lines carry types: "3" is not an integer and 1 is not true (as in the
    API)."""
    records = [_record(1), _record(2, **change)]
    if (
        suffix == ".parquet" and column != "patient_id"
    ):  # a Parquet column has one type: make it mixed
        records = [_record(1, **{column: None}), _record(2, **change)]
    err = _error(folder, records, suffix)
    assert any(v.column == column and v.row == 2 for v in err.violations), err


def test_csv_cells_are_text_and_are_parsed(folder):
    path = _write(folder, [_record(1, asa_class="3", diabetes="yes")], ".csv")
    frame = load_cohort(path)
    assert frame["asa_class"].iloc[0] == 3 and bool(frame["diabetes"].iloc[0]) is True


def test_unique_ids_find_repeats_within_a_chunk_and_across_chunks():
    from spinecast.datasets.ids import UniqueIds

    seen = UniqueIds()
    assert seen.add(["A-1", None, "A-2", "A-1", None]).tolist() == [3]  # missing ids never repeat
    assert seen.add(pd.Series(["A-3", "A-2"], index=[7, 9])).tolist() == [1]  # an earlier chunk's
    assert seen.add(["A-4"]).tolist() == []


def test_unique_ids_agree_on_small_and_large_calls():
    """A request's few ids go through a set, a file's many through pandas: same answers."""
    from spinecast.datasets.ids import SMALL, UniqueIds

    many = [f"P-{i % (SMALL * 2)}" for i in range(SMALL * 3)] + [None, None]
    seen = UniqueIds()
    assert seen.add(many).tolist() == list(range(SMALL * 2, SMALL * 3))
    assert seen.add(["P-1", "new", "new"]).tolist() == [0, 2]  # earlier call's, then this one's
    few = UniqueIds()
    for chunk in (many[i : i + 100] for i in range(0, len(many), 100)):
        few.add(chunk)
    assert few.add(["P-3", "other"]).tolist() == [0]

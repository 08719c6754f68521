"""Read cohort files (.parquet, .csv, .jsonl) and check every row against the contract.

    from spinecast.datasets import load_cohort
    df = load_cohort("data/cohort.parquet", training=True)

A file that breaks the contract raises `CohortError` listing the first 20 violations as
`file:row:column: rule (got value)`; rows are numbered from 1 (the header of a CSV is not a row).
Note and report text never appears in an error: only its length does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .ids import UniqueIds
from .schema import COLUMN_BY_NAME, COLUMNS, IMAGE_SUFFIXES, MCID_ODI_POINTS, Column

SUFFIXES = (".parquet", ".csv", ".jsonl")
MAX_LISTED = 20
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}
_PANDAS_DTYPE = {"integer": "Int64", "float": "float64", "bool": "boolean", "string": "string"}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_CONTROL = r"[\x00-\x1f\x7f]"


@dataclass(frozen=True)
class Violation:
    file: str
    row: int | str  # 1-based row number, or "-" for a whole-file/column problem
    column: str
    rule: str
    got: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}:{self.column}: {self.rule} (got {self.got})"


class CohortError(ValueError):
    """A cohort file or table breaks the contract. `violations` holds them all."""

    def __init__(self, source: str, violations: list[Violation]):
        self.source, self.violations = source, violations
        shown = "\n".join(f"  {v}" for v in violations[:MAX_LISTED])
        more = len(violations) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        rows = len({v.row for v in violations})
        super().__init__(
            f"{source} breaks the cohort contract ({len(violations)} violation(s) in "
            f"{rows} row(s); "
            f"see CONTRACT.md):\n{shown}{tail}"
        )

    def __reduce__(self):  # survives pickling (Ray's process boundary) with its violations
        return type(self), (self.source, self.violations)


def load_cohort(path: str | Path, *, training: bool = False) -> pd.DataFrame:
    """Read and validate a cohort file; `training=True` also requires `treatment` on every row."""
    path = Path(path)
    frame = read_table(path)
    return validate_frame(
        frame, source=path.name, base_dir=path.parent, training=training, typed=typed_format(path)
    )


def typed_format(path: Path) -> bool:
    """Whether the file's cells carry their types (Parquet, JSON Lines); a CSV's cells are all
    text."""
    return Path(path).suffix.lower() != ".csv"


def read_table(path: Path) -> pd.DataFrame:
    """Read a cohort file as untyped columns, choosing the reader by extension."""
    name = path.name
    if path.suffix.lower() not in SUFFIXES:
        raise CohortError(
            name,
            [
                Violation(
                    name,
                    "-",
                    "-",
                    f"file extension must be one of {', '.join(SUFFIXES)}",
                    repr(path.suffix),
                )
            ],
        )
    if not path.is_file():
        raise CohortError(name, [Violation(name, "-", "-", "file must exist", "no such file")])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        try:
            # Everything as text: the contract, not pandas' guesses, decides the types.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> pd.DataFrame:
    return next(_jsonl_chunks(path, None))


def _jsonl_chunks(path: Path, rows: int | None) -> Iterator[pd.DataFrame]:
    with path.open("rb") as f:
        yield from jsonl_frames(enumerate(f, start=1), path.name, rows)


def jsonl_frames(
    lines: Iterable[tuple[int | str, str | bytes]], source: str, rows: int | None = None
) -> Iterator[pd.DataFrame]:
    """Numbered JSON Lines -> untyped frames of at most `rows` records (None: one frame); a line
    that is not one JSON object fails its chunk, named by `source` and its number."""
    records, bad = [], []
    for line_no, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            record = err
        if not isinstance(record, dict):
            bad.append(
                Violation(
                    source, line_no, "-", "each line must be one JSON object", type(record).__name__
                )
            )
            continue
        records.append(record)
        if rows and len(records) == rows:
            if bad:
                raise CohortError(source, bad)
            yield pd.DataFrame.from_records(records)
            records = []
    if bad:
        raise CohortError(source, bad)
    if records or rows is None:
        yield pd.DataFrame.from_records(records)


def iter_table(path: str | Path, rows: int) -> Iterator[pd.DataFrame]:
    """Read a cohort file in frames of at most `rows` rows (untyped, like `read_table`), for files
    larger than memory. Validate each with `validate_frame(..., first_row=...)`."""
    path = Path(path)
    if path.suffix.lower() != ".parquet" or not path.is_file():
        if path.suffix.lower() == ".csv" and path.is_file():
            yield from pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], chunksize=rows
            )
            return
        if path.suffix.lower() == ".jsonl" and path.is_file():
            yield from _jsonl_chunks(path, rows)
            return
        yield read_table(path)  # raises the contract's error for a bad extension or a missing file
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        yield batch.to_pandas()


def validate_frame(
    frame: pd.DataFrame,
    *,
    source: str = "<table>",
    base_dir: Path | None = None,
    training: bool = False,
    first_row: int = 1,
    typed: bool = True,
) -> pd.DataFrame:
    """Check every row of `frame`; return a typed copy with every contract column, in contract
    order.

    Absent optional columns come back as all-missing. `mri_image` comes back as an absolute path.
    `first_row` numbers the frame's first row in messages (a chunk of a larger file). `typed` (a
    Parquet or JSON Lines file, a table in memory): a number is a number and a boolean a boolean,
    as in the HTTP API ("3" is not an integer, 1 is not true); False for CSV, whose cells are text.
    """
    file_level = _file_problems(frame, source, training)
    if file_level:
        raise CohortError(source, file_level)

    problems: list[tuple[np.ndarray, Column, str, list[str]]] = []
    out = {}
    for col in COLUMNS:
        raw = (
            frame[col.name]
            if col.name in frame.columns
            else pd.Series([None] * len(frame), index=frame.index)
        )
        values, col_problems = _check_column(
            raw.reset_index(drop=True), col, training, base_dir, typed
        )
        out[col.name] = values
        problems.extend(col_problems)
    if problems:
        raise CohortError(source, _first_violations(problems, source, first_row))
    typed = pd.DataFrame(out)
    typed.attrs["source"] = source
    return typed


def _file_problems(frame: pd.DataFrame, source: str, training: bool) -> list[Violation]:
    """What is wrong with the table as a whole: no rows, an unknown or a missing required column."""
    found = []
    if len(frame) == 0:
        found.append(Violation(source, "-", "-", "file must hold at least one row", "0 rows"))
    for name in (c for c in frame.columns if c not in COLUMN_BY_NAME):
        rule = "unknown column (not in the contract)"
        found.append(Violation(source, "-", str(name), rule, "a column of that name"))
    for col in COLUMNS:
        required = col.required or (training and col.role == "treatment")
        if col.name not in frame.columns and required:
            rule = "required column is missing"
            found.append(Violation(source, "-", col.name, rule, "no such column"))
    return found


def _check_column(raw: pd.Series, col: Column, training: bool, base_dir: Path | None, typed: bool):
    """Coerce one column to its contract type; return (typed series, [(rows, col, rule, got)])."""
    problems = []
    missing = _is_missing(raw)
    obj = raw.astype(object).where(~missing, None)
    required = col.required or (training and col.role == "treatment")
    if required and missing.any():
        rows = np.flatnonzero(missing)
        problems.append((rows, col, "is required", ["nothing"] * len(rows)))

    if col.is_number:
        values, bad = _to_number(obj, missing, col, typed)
    elif col.dtype == "bool":
        values, bad = _to_bool(obj, missing, typed)
    else:
        values, bad = _to_string(obj, missing, col, base_dir)
    for rows, rule in bad:
        problems.append((rows, col, rule, [_show(obj.iloc[r], col) for r in rows[:MAX_LISTED]]))

    if col.kind == "id":
        rows = UniqueIds().add(values)
        if len(rows):
            problems.append(
                (
                    rows,
                    col,
                    "must be unique in the file",
                    [_show(obj.iloc[r], col) for r in rows[:MAX_LISTED]],
                )
            )
        control = values.fillna("").str.contains(_CONTROL, regex=True).to_numpy(dtype=bool)
        if control.any():
            rows = np.flatnonzero(control)
            problems.append(
                (rows, col, "must not contain control characters", ["an id with one"] * len(rows))
            )
    return values, problems


def _is_missing(raw: pd.Series) -> pd.Series:
    missing = raw.isna()
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        missing |= raw.map(lambda v: isinstance(v, str) and v.strip() == "").astype(bool)
    return missing


def _to_number(obj: pd.Series, missing: pd.Series, col: Column, typed: bool):
    is_bool = obj.map(lambda v: isinstance(v, (bool, np.bool_))).astype(bool)
    is_text = obj.map(lambda v: isinstance(v, str)).astype(bool) if typed else is_bool & False
    numbers = pd.to_numeric(obj.where(~is_bool & ~is_text, None), errors="coerce").astype("float64")
    wrong_type = (~missing) & (numbers.isna() | is_bool | is_text)
    ok = ~missing & ~wrong_type
    bad = [(np.flatnonzero(wrong_type), col.rule())]
    if col.dtype == "integer":
        fractional = ok & np.isfinite(numbers) & (numbers != np.round(numbers))
        bad.append((np.flatnonzero(fractional), col.rule()))
        ok &= ~fractional
    out_of_range = ok & ~((numbers >= col.low) & (numbers <= col.high))  # NaN/inf fail too
    bad.append((np.flatnonzero(out_of_range), col.rule()))
    typed = numbers.where(ok & ~out_of_range)
    if col.dtype == "integer":
        typed = typed.round().astype("Int64")
    return typed, [(rows, rule) for rows, rule in bad if len(rows)]


def _bool_value(v, typed: bool):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if typed:
        return None
    if isinstance(v, (int, np.integer, float, np.floating)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return None


def _to_bool(obj: pd.Series, missing: pd.Series, typed: bool):
    parsed = obj.map(lambda v: None if v is None else _bool_value(v, typed))
    wrong = (~missing) & parsed.isna()
    typed = parsed.where(~wrong, None).astype("boolean")
    return typed, [(np.flatnonzero(wrong), "must be true or false")] if wrong.any() else []


def _to_string(obj: pd.Series, missing: pd.Series, col: Column, base_dir: Path | None):
    is_str = obj.map(lambda v: isinstance(v, str)).astype(bool)
    wrong = (~missing) & ~is_str
    bad = [(np.flatnonzero(wrong), col.rule())]
    ok = ~missing & is_str
    if col.categories:
        bad.append((np.flatnonzero(ok & ~obj.isin(col.categories)), col.rule()))
    if col.max_chars:
        bad.append((np.flatnonzero(ok & (obj.where(ok, "").str.len() > col.max_chars)), col.rule()))
    typed = obj.where(ok, None)
    if col.kind == "image":
        typed, image_bad = _check_images(typed, ok, base_dir or Path("."))
        bad.extend(image_bad)
    return typed.astype("string"), [(rows, rule) for rows, rule in bad if len(rows)]


def _check_images(paths: pd.Series, ok: pd.Series, base_dir: Path):
    resolved = paths.copy()
    wrong_suffix, unreadable = [], []
    for i in np.flatnonzero(ok):
        p = Path(paths.iloc[i])
        full = p if p.is_absolute() else base_dir / p
        if full.suffix.lower() not in IMAGE_SUFFIXES:
            wrong_suffix.append(i)
            continue
        try:
            with full.open("rb") as f:
                head = f.read(8)
        except OSError:
            unreadable.append(i)
            continue
        if not head.startswith(_IMAGE_MAGIC):
            unreadable.append(i)
        resolved.iloc[i] = str(full.resolve())
    return resolved, [
        (np.asarray(wrong_suffix, dtype=int), f"must end in {', '.join(IMAGE_SUFFIXES)}"),
        (
            np.asarray(unreadable, dtype=int),
            "must name an existing PNG or JPEG file, relative to the cohort file",
        ),
    ]


def _show(value, col: Column) -> str:
    """How a bad value appears in an error. Free text is never shown, only its size."""
    if value is None:
        return "nothing"
    if col.kind == "text" and isinstance(value, str):
        return f"text of {len(value):,} characters"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_violations(problems, source: str, first_row: int = 1) -> list[Violation]:
    """Flatten (rows, col, rule, shown) groups into Violations ordered by row, then column order."""
    order = {c.name: i for i, c in enumerate(COLUMNS)}
    flat = []
    for rows, col, rule, shown in problems:
        for k, r in enumerate(rows):
            flat.append(
                (int(r), order[col.name], col.name, rule, shown[k] if k < len(shown) else "...")
            )
    flat.sort(key=lambda t: (t[0], t[1]))
    return [Violation(source, r + first_row, name, rule, got) for r, _, name, rule, got in flat]


def mcid(frame: pd.DataFrame) -> pd.Series:
    """Derived label: clinically important improvement, defined where both ODIs are present."""
    gain = frame["baseline_odi"] - frame["odi_12m"]
    return (gain >= MCID_ODI_POINTS).astype("boolean").where(gain.notna(), pd.NA)


def summarize(frame: pd.DataFrame, name: str) -> str:
    """A short, PHI-free summary of a validated cohort: counts and missingness only."""
    lines = [f"{name}: {len(frame):,} rows, all valid.", "", "column                   present"]
    lines += [f"{c.name:<24} {frame[c.name].notna().mean():>7.1%}" for c in COLUMNS]
    labeled = frame["satisfied"].dropna()
    if len(labeled):
        lines += [
            "",
            f"satisfied: {labeled.astype(bool).mean():.1%} of {len(labeled):,} labeled rows",
        ]
    return "\n".join(lines)

"""`spinecast predict --engine ray`: batch scoring of a cohort on a Ray cluster with Ray Data.

    spinecast predict --model artifacts/bundle --in cohort.parquet --out predictions/ --engine ray
    RAY_ADDRESS=http://head:8265 ray job submit -- \\
        spinecast predict --model /shared/bundle --in /shared/cohort.parquet \\
            --out /shared/predictions --engine ray

For cohorts beyond one machine. Ray Data reads the cohort (`read_parquet`: one .parquet file or a
folder of them; `read_csv`; `read_text` for JSON Lines), hands batches to a pool of actors that each
hold ONE `Predictor` (the bundle's checksums verified as always), and writes what they return with
`write_parquet`. Each actor validates its batch with the contract's `validate_frame` and scores it
with `scoring.score_frame`, the step `spinecast predict` runs locally: same columns, same schema,
same numbers.

What differs from the local engine:
- `--out` is a folder of Parquet files (Ray decides how many) and rows are NOT in input order:
  join on `patient_id`, which every row keeps (`pd.read_parquet(folder)` reads them all).
- A bad row is named by its file and its `patient_id` (Ray does not tell a batch where in the file
  it starts), e.g. `cohort.parquet:patient_id=S-00042:age: must be ...`; as locally, no note or
  report text is shown. `patient_id` must be unique in the whole cohort, checked after scoring.
- Every node reads the bundle, the cohort and the images from the same paths: shared storage,
  and the package installed with its `ray` extra on every node.
- After a run that failed, Ray Data releases its actors (and their CPUs) lazily; a next run in
  the same Python process on a small Ray can wait for them. The command runs one per process.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from spinecast.datasets import CohortError, Violation, typed_format, validate_frame
from spinecast.datasets.ids import UniqueIds
from spinecast.datasets.io import SUFFIXES, jsonl_frames
from spinecast.datasets.schema import COLUMNS

from .predictor import Predictor
from .scoring import SCHEMA, score_frame

try:
    import ray
    import ray.data
    from pyarrow import csv
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("`--engine ray` needs Ray Data: pip install 'spinecast[ray]'") from err

PATH = "path"  # the column Ray Data adds with `include_paths=True`: the file a row came from
LINE = "text"  # the column `read_text` gives: one JSON Lines line
SHOWN = 20  # duplicate ids named at most


class CohortScorer:
    """A Ray Data actor: one Predictor, built once, scoring every batch Ray hands it."""

    def __init__(self, bundle: str, variant: str | None, threads: int, batch_size: int):
        self.predictor = Predictor(bundle, variant, threads=threads, batch_size=batch_size)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        tables = []
        for path, rows in batch.groupby(PATH, sort=False):  # a batch may span files
            raw = rows.drop(columns=PATH).reset_index(drop=True)
            path = Path(path)
            if LINE in raw.columns and path.suffix.lower() == ".jsonl":
                raw = next(jsonl_frames((("-", line) for line in raw[LINE]), path.name))
            tables.append(score_frame(self.predictor, _validate(raw, path)))
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def score_with_ray(
    bundle: str | Path,
    src: str | Path,
    dst: str | Path,
    chunk_rows: int = 1_000,
    concurrency: int | None = None,
    threads: int = 1,
    batch_size: int = 32,
    variant: str | None = None,
    address: str | None = None,
) -> dict:
    """Score every row of `src` (a cohort file, or a folder of .parquet files) into the folder
    `dst`.

    Joins the Ray cluster at `address` (None: Ray's default) unless Ray is already initialised.
    Each actor reserves `threads` CPUs; by default as many actors as the cluster's CPUs allow,
    less one CPU left for reading and writing. Returns counts, seconds and the output folder.
    """
    bundle, src, dst = Path(bundle).resolve(), Path(src).resolve(), Path(dst).resolve()
    Predictor(
        bundle, variant, threads=1
    )  # a damaged bundle or unknown variant fails here, not in every actor
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(
            f"--out {dst} exists; the Ray engine writes a new folder (remove it or pick another)"
        )
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    try:
        start = time.perf_counter()
        if concurrency is None:
            concurrency = max(1, (int(ray.cluster_resources().get("CPU", 1)) - 1) // threads)
        actor = (str(bundle), variant, threads, batch_size)
        rows = _score_into(src, dst, actor, chunk_rows, concurrency, threads)
    finally:
        if started_here:
            ray.shutdown()
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds, 1),
        "actors": concurrency,
        "files": len(list(dst.glob("*.parquet"))),
        "out": str(dst),
    }


def _score_into(
    src: Path, dst: Path, actor: tuple, chunk_rows: int, concurrency: int, threads: int
) -> int:
    """Score into `dst` through a `.partial` folder: a failed run never leaves a half-written
    `dst` (nor predictions of a cohort that failed). Returns the rows written."""
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed run left
    try:
        failed = _run(src, partial, actor, chunk_rows, concurrency, threads)
        if failed:  # raised here, not in `_run`: no Ray exception chained to it
            raise CohortError(*failed)
        rows = _count(partial, src.name)
        _check_unique(partial, src.name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dst.exists():  # an empty folder
        dst.rmdir()
    partial.rename(dst)
    return rows


def _run(
    src: Path, out: Path, scorer: tuple, chunk_rows: int, concurrency: int, threads: int
) -> tuple[str, list[Violation]] | None:
    """Read, score and write with Ray Data; return (file, violations) if an actor found bad rows."""
    scored = _read(src).map_batches(
        CohortScorer,
        fn_constructor_args=scorer,
        batch_size=chunk_rows,
        batch_format="pandas",
        num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency),
    )
    scored.context.raise_original_map_exception = True  # the driver gets the actor's exception
    try:
        scored.write_parquet(str(out))
    except ray.exceptions.RayError as err:
        cause = _cohort_error(err)
        if cause is None:
            raise
        return cause.source, cause.violations
    return None


def _read(src: Path) -> ray.data.Dataset:
    """The cohort as a Ray Dataset with a `path` column, untyped where the format is (CSV as
    text)."""
    name, suffix = src.name, src.suffix.lower()
    if src.is_dir() or (suffix == ".parquet" and src.is_file()):
        return ray.data.read_parquet(str(src), include_paths=True, partitioning=None)
    if suffix == ".csv" and src.is_file():
        # Everything as text, like the local reader: the contract, not type inference, decides the
        # types.
        text = csv.ConvertOptions(
            column_types={c.name: pa.string() for c in COLUMNS},
            null_values=[""],
            strings_can_be_null=True,
        )
        return ray.data.read_csv(
            str(src),
            include_paths=True,
            partitioning=None,
            convert_options=text,
            parse_options=csv.ParseOptions(newlines_in_values=True),
        )  # notes span lines
    if suffix == ".jsonl" and src.is_file():
        return ray.data.read_text(str(src), include_paths=True, partitioning=None)
    if suffix in SUFFIXES:
        raise CohortError(name, [Violation(name, "-", "-", "file must exist", "no such file")])
    rule = f"file extension must be one of {', '.join(SUFFIXES)} (or a folder of .parquet files)"
    raise CohortError(name, [Violation(name, "-", "-", rule, repr(suffix))])


def _validate(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """validate_frame, with each bad row named by its patient_id (a batch's row numbers mean
    nothing)."""
    try:
        return validate_frame(raw, source=path.name, base_dir=path.parent, typed=typed_format(path))
    except CohortError as err:
        ids = raw["patient_id"].tolist() if "patient_id" in raw.columns else []
        named = [
            Violation(v.file, _row_name(v.row, ids), v.column, v.rule, v.got)
            for v in err.violations
        ]
        raise CohortError(path.name, named) from None


def _row_name(row: int | str, ids: list) -> str:
    """A 1-based row of a batch -> `patient_id=<id>`; "-" (the whole file) stays."""
    if not isinstance(row, int):
        return row
    patient_id = ids[row - 1] if row <= len(ids) else None
    if isinstance(patient_id, str) and patient_id.strip():
        return f"patient_id={patient_id}"
    return "a row with no patient_id"


def _cohort_error(err: BaseException) -> CohortError | None:
    """The CohortError an actor raised, from inside Ray's wrapping."""
    seen = err
    while seen is not None and not isinstance(seen, CohortError):
        seen = getattr(seen, "cause", None) or seen.__cause__
    return seen


def _count(folder: Path, source: str) -> int:
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))
    if rows == 0:
        raise CohortError(
            source, [Violation(source, "-", "-", "file must hold at least one row", "0 rows")]
        )
    return rows


def _check_unique(folder: Path, source: str) -> None:
    """patient_id must be unique across the cohort, or joins on it go wrong. Reads only the ids of
    the output, file by file, on the driver (8 bytes a patient; a Ray groupby costs seconds of
    shuffle actors even for a small cohort)."""
    seen, repeated = UniqueIds(), []
    for f in sorted(folder.glob("*.parquet")):
        ids = _ids(f)
        repeated += ids[seen.add(ids)].tolist()
    if repeated:
        raise CohortError(
            source,
            [
                Violation(
                    source,
                    f"patient_id={patient_id}",
                    "patient_id",
                    "must be unique in the cohort",
                    "an id another row has",
                )
                for patient_id in dict.fromkeys(repeated[:SHOWN])
            ],
        )


def _ids(path: Path) -> np.ndarray:
    return (
        pq.read_table(path, columns=["patient_id"])
        .column(0)
        .to_numpy(zero_copy_only=False)
        .astype(object)
    )

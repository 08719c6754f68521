"""Files for `spinecast fhir-to-cohort` and `spinecast cohort-to-fhir`.

    spinecast fhir-to-cohort bundles/*.json --out cohort.jsonl   # or .csv, .parquet
    spinecast cohort-to-fhir data/synth/cohort.parquet --out bundles/

`fhir-to-cohort` writes one row per FHIR Patient, the key images beside the output file
(`images/<patient_id>.png`, `mri_image` relative to it), and checks the result against the
contract before it writes the table; warnings come back as counts by kind (never values).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from .fhir import FhirError, read_bundle
from .fhir_write import to_bundle
from .io import SUFFIXES, CohortError, Violation, load_cohort, validate_frame
from .schema import COLUMNS


def bundles_to_cohort(
    paths: list[Path], out: Path, *, as_of: date | None = None
) -> tuple[int, Counter]:
    """FHIR bundle files -> one contract cohort file; (rows written, warning counts by kind)."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        rule = f"file extension must be one of {', '.join(SUFFIXES)}"
        raise CohortError(out.name, [Violation(out.name, "-", "-", rule, repr(out.suffix))])
    rows, counts = [], Counter()
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FhirError(f"{path.name}: must be a readable JSON file ({type(err).__name__})")
        for converted in read_bundle(data, as_of=as_of, source=path.name):
            counts.update(f"{w.resource}: {w.kind}" for w in converted.warnings)
            rows.append(converted.record)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_images(rows, out.parent)
    columns = [c.name for c in COLUMNS if any(c.name in r for r in rows)]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    typed = validate_frame(frame, source=out.name, base_dir=out.parent)[columns]
    if "mri_image" in columns:
        typed["mri_image"] = frame["mri_image"].astype("string")  # relative, as written
    _write_table(typed, rows, out)
    return len(rows), counts


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "patient"


def _write_images(rows: list[dict], folder: Path) -> None:
    used = set()
    for i, row in enumerate(rows):
        image = row.get("mri_image")
        if image is None:
            continue
        stem = _safe(str(row.get("patient_id", i)))
        stem = stem if stem not in used else f"{stem}-{i}"
        used.add(stem)
        suffix = ".png" if image.startswith(b"\x89PNG") else ".jpg"
        relative = f"images/{stem}{suffix}"
        (folder / "images").mkdir(exist_ok=True)
        (folder / relative).write_bytes(image)
        row["mri_image"] = relative


def _write_table(typed: pd.DataFrame, rows: list[dict], out: Path) -> None:
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        typed.to_parquet(out, index=False)
    elif suffix == ".csv":
        typed.to_csv(out, index=False)
    else:  # JSON Lines: the records as read, one object a line, missing fields left out
        with out.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def python_value(value):
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def cohort_to_bundles(cohort: Path, out_dir: Path) -> int:
    """A contract cohort file -> one FHIR R4 Bundle file per row in `out_dir`; the count."""
    frame = load_cohort(cohort)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = set()
    for i, row in enumerate(frame.to_dict("records")):
        record = {k: python_value(v) for k, v in row.items()}
        path = record.pop("mri_image")
        image = Path(path).read_bytes() if path else None
        stem = _safe(record["patient_id"])
        stem = stem if stem not in used else f"{stem}-{i}"
        used.add(stem)
        bundle = to_bundle(record, image)
        (out_dir / f"{stem}.json").write_text(json.dumps(bundle, ensure_ascii=False))
    return len(frame)

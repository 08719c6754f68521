"""`spinecast predict`: batch scoring of a cohort file with the torch-free predictor.

    spinecast predict --model artifacts/bundle --in cohort.parquet --out predictions.parquet \\
        [--chunk-rows 10000] [--threads 2] [--cache scored.sqlite]
    spinecast predict --model artifacts/bundle --in cohort.parquet --out predictions/ \\
        --engine ray [--ray-address auto] [--concurrency 8] [--threads 1]

Reads the cohort in chunks (Parquet row batches, CSV and JSON Lines in slices), validates and
scores each, and appends it to one Parquet file, so memory stays bounded by the chunk, not the
cohort. One row per patient, in input order: the probabilities per treatment as columns
(`p_satisfied_<treatment>`, `p_mcid_<treatment>`, `odi_12m_<treatment>`), the recommended and
planned treatment, the modalities used and the warnings.

`--engine ray` runs the same scoring on a Ray cluster (`spinecast.serving.distributed`, the `ray`
extra) and writes a folder of Parquet files with the same columns, not in input order.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from spinecast.datasets import (
    CohortError,
    Violation,
    iter_table,
    typed_format,
    validate_frame,
)
from spinecast.datasets.ids import UniqueIds
from tqdm import tqdm

from .embeddings import SentenceCache, SentenceStore
from .predictor import Predictor
from .scoring import SCHEMA, PredictionStore, score_frame


def _rows(path: Path) -> int | None:
    return pq.ParquetFile(path).metadata.num_rows if path.suffix.lower() == ".parquet" else None


def score_file(
    predictor: Predictor,
    src: Path,
    dst: Path,
    chunk_rows: int = 10_000,
    progress: bool = True,
    store: PredictionStore | None = None,
) -> dict:
    """Score every row of `src` into `dst` (Parquet); return counts, seconds and peak memory.
    `store`: the records it holds are answered from it (scoring.PredictionStore)."""
    src, dst = Path(src), Path(dst)
    start, done, seen = time.perf_counter(), 0, UniqueIds()
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")  # a failed run never leaves a half-written `dst`
    bar = tqdm(total=_rows(src), unit="patients", disable=not progress, file=sys.stderr)
    with pq.ParquetWriter(partial, SCHEMA) as writer:
        for raw in iter_table(src, chunk_rows):
            frame = validate_frame(
                raw,
                source=src.name,
                base_dir=src.parent,
                first_row=done + 1,
                typed=typed_format(src),
            )
            _check_unique(frame["patient_id"], seen, src.name, done)
            writer.write_table(score_frame(predictor, frame, bar.update, store))
            done += len(frame)
    bar.close()
    partial.replace(dst)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "rows": done,
        "seconds": round(seconds, 2),
        "rows_per_second": round(done / seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "out": str(dst),
    }


def _check_unique(ids, seen: UniqueIds, source: str, offset: int) -> None:
    """patient_id must be unique in the whole file, across chunks."""
    repeated = seen.add(ids)
    if len(repeated):
        row = offset + int(repeated[0]) + 1
        problem = Violation(
            source, row, "patient_id", "must be unique in the file", "an earlier row's id"
        )
        raise CohortError(source, [problem])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spinecast predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="model bundle folder (spinecast export)"
    )
    parser.add_argument(
        "--in",
        dest="src",
        type=Path,
        required=True,
        help="cohort file: .parquet, .csv or .jsonl (--engine ray: or a folder of .parquet files)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="predictions .parquet (--engine ray: a folder for its Parquet files)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows read, validated and scored at a time (default: 10000; --engine ray: 1000)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows per ONNX Runtime run")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: all cores; --engine ray: 1 per actor)",
    )
    parser.add_argument(
        "--variant", default=None, help="model variant from the card (default: the served one)"
    )
    parser.add_argument(
        "--cache",
        "--sentence-cache",
        dest="cache",
        type=Path,
        default=None,
        help="a file that keeps each record's prediction and the sentence embeddings between runs "
        "(SQLite): a cohort scored again by the same bundle answers every unchanged record from "
        "it and encodes only sentences it has not seen (derived patient data: see SECURITY.md)",
    )
    _add_ray_options(parser)
    return parser


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data actors on a Ray cluster (the `ray` extra)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="--engine ray: the cluster (default: $RAY_ADDRESS, else the latest `ray start` here, "
        "else a new Ray on this machine; `auto` refuses to start one)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=(
            "--engine ray: most predictor actors (default: the cluster's CPUs / threads, less one)"
        ),
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.engine == "ray":
            from .distributed import score_with_ray  # imports ray, an optional extra

            stats = score_with_ray(
                args.model,
                args.src,
                args.out,
                chunk_rows=args.chunk_rows or 1_000,
                concurrency=args.concurrency,
                threads=args.threads or 1,
                batch_size=args.batch_size,
                variant=args.variant,
                address=args.ray_address,
            )
        else:
            store = SentenceStore(args.cache) if args.cache else None
            predictor = Predictor(
                args.model,
                args.variant,
                threads=args.threads,
                batch_size=args.batch_size,
                cache=SentenceCache(256 << 20, store),
            )
            kept = PredictionStore(args.cache, predictor) if args.cache else None
            stats = score_file(predictor, args.src, args.out, args.chunk_rows or 10_000, store=kept)
            stats["sentence_cache"] = {
                "hits": predictor.cache.hits,
                "misses": predictor.cache.misses,
            }
            if kept is not None:
                stats["prediction_cache"] = {"hits": kept.hits, "misses": kept.misses}
    except (CohortError, FileExistsError) as err:
        print(err, file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=1))
    return 0

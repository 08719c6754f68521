"""The `spinecast` command.

    spinecast synth --n 10000 --seed 0 --out data/synth [--indication 2.0 --positivity 0.10]
    spinecast validate data/synth/cohort.parquet [--training]
    spinecast train --config configs/default.yaml [--config OVERLAY.yaml] [--trainer.max_epochs 3]
    spinecast evaluate --ckpt best.ckpt --data cohort.parquet --out artifacts/eval
    spinecast distill --teacher best.ckpt --config configs/default.yaml \\
        --config configs/distill.yaml
    spinecast export --ckpt best.ckpt --out artifacts/bundle [--optimize] [--quantize int8]
    spinecast predict --model artifacts/bundle --in cohort.parquet --out predictions.parquet
    spinecast fhir-to-cohort bundles/*.json --out cohort.jsonl [--as-of 2026-01-15]
    spinecast cohort-to-fhir data/synth/cohort.parquet --out bundles/

Each subcommand imports what it needs when it runs, so `spinecast validate` works on a serving-only
install (no torch).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from spinecast.datasets.synth import generate
    from spinecast.datasets.synth.outcomes import INDICATION, POSITIVITY, check_practice

    # The practice's defaults are owned by outcomes.py; a flag left out keeps them.
    indication = INDICATION if args.indication is None else args.indication
    positivity = POSITIVITY if args.positivity is None else args.positivity
    try:
        check_practice(indication, positivity)
    except ValueError as err:
        print(f"spinecast synth: --{err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    card = generate(
        args.n,
        args.seed,
        args.out,
        workers=args.workers,
        indication=indication,
        positivity=positivity,
    )
    elapsed = time.perf_counter() - start
    print((Path(args.out) / "card.md").read_text())
    print(f"Wrote {card['patients']:,} patients to {args.out} in {elapsed:.1f} s.")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from spinecast.datasets import CohortError, load_cohort, summarize

    try:
        frame = load_cohort(args.file, training=args.training)
    except CohortError as err:
        print(err, file=sys.stderr)
        return 1
    print(summarize(frame, Path(args.file).name))
    return 0


def _fhir_to_cohort(args: argparse.Namespace) -> int:
    from spinecast.datasets import CohortError
    from spinecast.datasets.fhir import FhirError
    from spinecast.datasets.fhir_files import bundles_to_cohort

    try:
        rows, warnings = bundles_to_cohort(args.bundles, args.out, as_of=args.as_of)
    except (FhirError, CohortError) as err:
        print(f"spinecast fhir-to-cohort: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {rows:,} patients from {len(args.bundles):,} bundle file(s) to {args.out}.")
    if warnings:  # kinds only: never a value from the chart
        print(f"{sum(warnings.values()):,} warning(s), by kind (datasets/README.md, FHIR R4 in):")
        for kind, count in warnings.most_common():
            print(f"  {count:>7,}  {kind}")
    return 0


def _cohort_to_fhir(args: argparse.Namespace) -> int:
    from spinecast.datasets import CohortError
    from spinecast.datasets.fhir_files import cohort_to_bundles

    try:
        count = cohort_to_bundles(args.cohort, args.out)
    except CohortError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"Wrote {count:,} FHIR R4 bundles to {args.out}.")
    return 0


def _add_fhir(sub) -> None:
    fhir_in = sub.add_parser(
        "fhir-to-cohort", help="FHIR R4 bundles -> a contract cohort (one row per Patient)"
    )
    fhir_in.add_argument("bundles", type=Path, nargs="+", help="FHIR R4 Bundle JSON files")
    fhir_in.add_argument(
        "--out", type=Path, required=True, help="cohort file (.jsonl, .csv or .parquet)"
    )
    fhir_in.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="reference date (YYYY-MM-DD) for a patient with no Encounter and no clinic note "
        "(default: today)",
    )
    fhir_in.set_defaults(run=_fhir_to_cohort)
    fhir_out = sub.add_parser(
        "cohort-to-fhir", help="a cohort file -> one FHIR R4 Bundle per row (test data)"
    )
    fhir_out.add_argument("cohort", type=Path)
    fhir_out.add_argument("--out", type=Path, required=True, help="output folder")
    fhir_out.set_defaults(run=_cohort_to_fhir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spinecast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate a synthetic cohort with its truth and data card")
    synth.add_argument("--n", type=int, default=10_000, help="number of patients")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument(
        "--workers", type=int, default=None, help="processes for the images (default: all cores)"
    )
    synth.add_argument(
        "--indication",
        type=float,
        default=None,
        help="how strongly treatment follows indication, >= 0: multiplies the assignment "
        "logits (default 1.0 = today's practice; 2.0 = stronger; 0.0 = independent of the chart)",
    )
    synth.add_argument(
        "--positivity",
        type=float,
        default=None,
        help="share of assignment mixed with a uniform choice, in [0, 1] (default 0.10; every "
        "treatment keeps >= positivity / 4; 0 guarantees nothing)",
    )
    synth.set_defaults(run=_synth)

    sub.add_parser(
        "train", help="train a model (Lightning CLI; `spinecast train --help`)", add_help=False
    )
    sub.add_parser(
        "distill",
        help="train a smaller student on a teacher's outcomes (Lightning CLI)",
        add_help=False,
    )
    sub.add_parser(
        "evaluate", help="score a cohort with a checkpoint, write the report", add_help=False
    )
    sub.add_parser("export", help="checkpoint -> ONNX model bundle, parity-checked", add_help=False)
    sub.add_parser(
        "predict", help="score a cohort file with a model bundle (no torch)", add_help=False
    )

    _add_validate(sub)
    _add_fhir(sub)
    return parser


def _add_validate(sub) -> None:
    validate = sub.add_parser("validate", help="check a cohort file against the contract")
    validate.add_argument("file", type=Path)
    validate.add_argument(
        "--training", action="store_true", help="also require `treatment` on every row"
    )
    validate.set_defaults(run=_validate)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the Lightning CLI parses its own arguments
        from spinecast.training.cli import train

        return train(argv[1:])
    if argv[:1] == ["distill"]:
        from spinecast.training.cli import distill

        return distill(argv[1:])
    if argv[:1] == ["evaluate"]:
        from spinecast.training.evaluate import main as evaluate

        return evaluate(argv[1:])
    if argv[:1] == ["predict"]:
        from spinecast.serving.batch import main as predict

        return predict(argv[1:])
    if argv[:1] == ["export"]:
        from spinecast.training.export import main as export

        return export(argv[1:])
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""`spinecast evaluate`: score a cohort with a checkpoint and write the evaluation report.

    spinecast evaluate --ckpt artifacts/quickstart/.../best.ckpt --data data/test/cohort.parquet \\
        --out artifacts/eval [--truth data/test/truth.parquet] \\
        [--baselines-train data/train/cohort.parquet] [--bootstrap 1000]

The truth file is found beside the cohort when not given; without one, the truth-based metrics are
skipped and the recommendations are scored by doubly robust estimates alone. Prints the short
recommendation table (model rule, baselines, oracle); the report holds aggregates only. Beside
`report.md` it writes the TRIPOD+AI model card `MODEL_CARD.md` (training/model_card.py), every
metric with a bootstrap 95 % interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from spinecast.datasets import load_cohort
from spinecast.datasets.decision import DecisionRule
from spinecast.datasets.inputs import MODALITIES, remove_modality

from .inference import encode_for, load_module, predict


def evaluate(
    ckpt: Path,
    data: Path,
    out: Path,
    truth: Path | None = None,
    baselines_train: Path | None = None,
    n_boot: int = 1000,
) -> dict:
    from .baselines import baseline_predictions
    from .model_card import data_sources, model_summary, write_model_card
    from .report import evaluate_predictions, write_report

    module = load_module(ckpt)
    test = load_cohort(data, training=True)
    arrays = encode_for(module, test)
    start = time.perf_counter()
    outcomes = predict(module, arrays)
    seconds = time.perf_counter() - start
    ablations = {m: predict(module, remove_modality(arrays, m))["p_satisfied"] for m in MODALITIES}
    truth = truth or (data.parent / "truth.parquet")
    truth_frame = pd.read_parquet(truth) if truth.is_file() else None
    baselines = (
        baseline_predictions(load_cohort(baselines_train, training=True), test)
        if baselines_train
        else None
    )
    rule = (
        getattr(module, "decision_rule", None) or DecisionRule()
    )  # the checkpoint's rule settings
    rule = DecisionRule.from_dict(rule) if isinstance(rule, dict) else rule
    metrics = evaluate_predictions(
        test,
        outcomes,
        ablations=ablations,
        baselines=baselines,
        truth=truth_frame,
        rule=rule,
        n_boot=n_boot,
    )
    metrics["inference_seconds_per_patient"] = seconds / len(test)
    metrics["text_truncated"] = {
        "clinical_note": float(arrays["note_truncated"].mean()),
        "imaging_report": float(arrays["report_truncated"].mean()),
    }
    write_report(out, metrics, test, outcomes, baselines=baselines, truth=truth_frame)
    sources, model = data_sources(ckpt, data), model_summary(module, ckpt, rule)
    write_model_card(out, test, outcomes, metrics, sources=sources, model=model, n_boot=n_boot)
    return metrics


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="spinecast evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a contract cohort with labels")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for report.md, metrics.json, plots"
    )
    parser.add_argument(
        "--truth", type=Path, default=None, help="truth.parquet of a synthetic cohort"
    )
    parser.add_argument(
        "--baselines-train",
        type=Path,
        default=None,
        help="cohort to fit the classical baselines on (omit to skip them)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples of the patients for every 95 %% interval (fixed seed 0)",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be a positive number of resamples; got {args.bootstrap}")
    metrics = evaluate(
        args.ckpt, args.data, args.out, args.truth, args.baselines_train, args.bootstrap
    )
    from .markdown import fmt, recommendation_table

    counts = metrics["counts"]
    print(
        f"\nRecommendations for {counts['patients']:,} patients ({counts['labeled']:,} labeled); "
        f"AUROC {fmt(metrics['test/auroc'])}, ECE {fmt(metrics['test/ece'])}:"
    )
    print(recommendation_table(metrics))
    print(f"Report: {args.out / 'report.md'}; model card: {args.out / 'MODEL_CARD.md'}")
    return 0

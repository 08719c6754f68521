"""The decision rule's surgical margin against the truth, on a validation cohort (not the test).

    .venv/bin/python benchmarks/margin.py --bundle artifacts/bench/ema_bundle [--seed 102]

Scores one bundle's predictions on a fresh synthetic cohort (2,000 patients, `--seed`; the accuracy
benchmark tests on seed 101) under the decision rule at several `surgical_margin`s and `quantile`s,
the other settings at their defaults: the rule's policy capture, agreement with the oracle,
unnecessary surgery, missed benefit and surgery share (beside the oracle's), and the argmax's. It is
the trade-off behind the default margin (README "The recommendation"): a larger margin sends fewer
patients to operations of doubtful benefit and misses more of those an operation would help.
Writes benchmarks/results/margin.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import pandas as pd
from spinecast.datasets.decision import DecisionRule, decide
from spinecast.datasets.io import load_cohort
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.synth import generate
from spinecast.serving.predictor import Predictor
from spinecast.training.counterfactual import aligned_truth, policy_truth

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "margin.json"
MARGINS = (0.03, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12)
QUANTILES = (0.1, 0.2)
KEYS = (
    "policy_capture",
    "policy_agreement",
    "unnecessary_surgery",
    "missed_benefit",
    "surgery_share",
)


def sweep(bundle: Path, cohort_dir: Path) -> dict:
    cohort = load_cohort(cohort_dir / "cohort.parquet")
    true_p, best = aligned_truth(cohort, pd.read_parquet(cohort_dir / "truth.parquet"))
    observed = cohort["treatment"].map({t: i for i, t in enumerate(TREATMENTS)}).to_numpy()
    predictor = Predictor(bundle)
    outcomes = predictor.run(predictor.encode(cohort))
    members, propensity = outcomes["p_satisfied_members"], outcomes["propensity"]

    def scored(recommended) -> dict:
        truth = policy_truth(true_p, best, observed, recommended)
        return {k: round(truth[k], 4) for k in KEYS}

    rows = []
    for margin, quantile in itertools.product(MARGINS, QUANTILES):
        rule = DecisionRule(surgical_margin=margin, quantile=quantile)
        rows.append(
            {"surgical_margin": margin, "quantile": quantile}
            | scored(decide(members, propensity, rule).recommended)
        )
    argmax = decide(members, propensity, DecisionRule()).argmax
    oracle = policy_truth(true_p, best, observed, best)
    return {
        "oracle_surgery_share": round(oracle["surgery_share"], 4),
        "default": DecisionRule().to_dict(),
        "rule": rows,
        "argmax": scored(argmax),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=102)
    parser.add_argument("--patients", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        generate(args.patients, seed=args.seed, out=Path(work))
        result = {
            "benchmark": "margin",
            "bundle": str(args.bundle),
            "seed": args.seed,
            "patients": args.patients,
        } | sweep(args.bundle, Path(work))
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

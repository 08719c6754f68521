"""Distillation benchmark: the fast student (configs/distill.yaml) against its teacher
(default.yaml).

    .venv/bin/python benchmarks/distill.py [--teacher best.ckpt] [--patients 6000] [--epochs 10]

Trains the teacher with configs/default.yaml (unless `--teacher` is given) on synthetic patients
(seed 100; 15 % validation), distills the student from it with `spinecast distill`, exports both
(fp32, graph fusion) and, in one process on the same 2 threads and the same test patients (seed
101): test AUROC of each through the torch-free predictor, and per-patient predictor latency at
batch 1 and batch 32, the two models timed in alternating rounds. Writes
benchmarks/results/distill.json and keeps the bundles in artifacts/bench/{teacher,student}
(`benchmarks/http_service.py --bundle artifacts/bench/student --name distilled` serves the student).
Targets (issue 7): student batch-1 p50 <= 0.4x the teacher's; test AUROC within 0.01 of the teacher.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from spinecast.datasets import load_cohort
from spinecast.datasets.synth import generate
from spinecast.serving.predictor import Predictor
from spinecast.training.cli import distill, fit
from spinecast.training.export import auroc, export

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distill.json"
BUNDLES = ROOT / "artifacts" / "bench"


def _run_args(root: Path, epochs: int) -> list[str]:
    return [
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
    ]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _latency(
    predictors: dict[str, Predictor], arrays: dict[str, dict], batch: int, rounds: int
) -> dict:
    """Per-patient ms of each predictor, alternating calls on the same records."""
    n = len(next(iter(arrays.values()))["numeric"])
    times = {name: [] for name in predictors}
    for r in range(rounds + 1):
        s = (r * batch) % max(1, n - batch)
        for name, predictor in predictors.items():
            chunk = {k: v[s : s + batch] for k, v in arrays[name].items()}
            t = _timed(lambda p=predictor, c=chunk: p.run(c)) / batch * 1000
            if r:  # the first round warms up
                times[name].append(t)
    return {
        name: {
            "p50_ms": float(np.percentile(t, 50)),
            "p95_ms": float(np.percentile(t, 95)),
            "calls": len(t),
        }
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--teacher", type=Path, help="a default.yaml checkpoint (else one is trained)"
    )
    parser.add_argument(
        "--patients", type=int, default=6000, help="synthetic training + validation patients"
    )
    parser.add_argument("--test-patients", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10, help="at most, for teacher and student")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100, help="timed calls per model at batch 1")
    args = parser.parse_args()
    result = {
        "benchmark": "distill",
        "threads": args.threads,
        "machine": platform.machine(),
        "seconds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(args.test_patients, seed=101, out=work / "test")
        test = work / "test" / "cohort.parquet"
        teacher = args.teacher
        if teacher is None:
            train = (
                BUNDLES / "distill_cohort"
            )  # kept with the teacher: its checkpoint records this path
            generate(args.patients, seed=100, out=train)
            result["seconds"]["teacher_training"] = _timed(
                lambda: fit(
                    [
                        "--config",
                        str(ROOT / "configs" / "default.yaml"),
                        "--data.train_path",
                        str(train / "cohort.parquet"),
                        "--data.test_fraction",
                        "0",
                        *_run_args(work / "teacher", args.epochs),
                    ]
                )
            )
            teacher = (
                BUNDLES / "teacher.ckpt"
            )  # kept: `--teacher artifacts/bench/teacher.ckpt` reruns the student alone
            BUNDLES.mkdir(parents=True, exist_ok=True)
            shutil.copy2(next((work / "teacher").rglob("best.ckpt")), teacher)
        result["seconds"]["student_training"] = _timed(
            lambda: distill(
                [
                    "--teacher",
                    str(teacher),
                    "--config",
                    str(ROOT / "configs" / "default.yaml"),
                    "--config",
                    str(ROOT / "configs" / "distill.yaml"),
                    *_run_args(work / "student", args.epochs),
                ]
            )
        )
        student = next((work / "student").rglob("best.ckpt"))
        cards = {
            name: export(ckpt, BUNDLES / name, data=test, optimize_graph=True, eval_rows=1000)
            for name, ckpt in (("teacher", teacher), ("student", student))
        }
        frame = load_cohort(test, training=True)
        predictors = {
            name: Predictor(BUNDLES / name, "fp32", threads=args.threads, batch_size=32)
            for name in ("teacher", "student")
        }
        arrays = {name: p.encode(frame) for name, p in predictors.items()}
        result["test_patients"] = len(frame)
        result["models"] = {
            name: {
                "version": cards[name].version,
                "config": cards[name].config,
                "test_auroc": auroc(frame, p.run(arrays[name])["p_satisfied"]),
                "onnx_mib": round((BUNDLES / name / "model.onnx").stat().st_size / 2**20, 1),
            }
            for name, p in predictors.items()
        }
        result["student_card_distillation"] = cards["student"].distillation
        for batch, rounds in ((1, args.rounds), (32, max(10, args.rounds // 5))):
            for name, timing in _latency(predictors, arrays, batch, rounds).items():
                result["models"][name][f"batch_{batch}"] = timing
    m = result["models"]
    result["student_over_teacher_batch_1_p50"] = (
        m["student"]["batch_1"]["p50_ms"] / m["teacher"]["batch_1"]["p50_ms"]
    )
    result["student_over_teacher_batch_32_p50"] = (
        m["student"]["batch_32"]["p50_ms"] / m["teacher"]["batch_32"]["p50_ms"]
    )
    result["test_auroc_gap"] = m["teacher"]["test_auroc"] - m["student"]["test_auroc"]
    result["targets_met"] = {
        "latency_at_most_0.4x": result["student_over_teacher_batch_1_p50"] <= 0.4,
        "auroc_within_0.01": result["test_auroc_gap"] <= 0.01,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

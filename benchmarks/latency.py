"""Latency benchmark: the torch-free predictor (ONNX fp32 and INT8) against the PyTorch model.

    .venv/bin/python benchmarks/latency.py [--ckpt best.ckpt --test cohort.parquet] [--threads 2]

Without a checkpoint it trains the default configuration briefly (2,000 synthetic patients, seed
200, 3 epochs) and tests on 500 others (seed 201); the latency does not depend on how well the
model is trained, the INT8 accuracy check does, so pass a real checkpoint for that figure.
All variants run side by side in one process on the same encoded records and the same threads:
per-patient latency (p50, p95) at batch 1 and batch 32, the ratios to PyTorch, and the test AUROC
of each variant. PyTorch runs in eval mode with its sentence cache emptied before every call (a new
patient's sentences are new). Writes benchmarks/results/latency.json and keeps the bundle (fp32
fused and INT8) in artifacts/bench/bundle for benchmarks/http_service.py.
Targets (issue 4): fp32 ONNX <= 0.7x PyTorch; INT8 <= 0.5x PyTorch with AUROC drop <= 0.005.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from spinecast.datasets import load_cohort
from spinecast.datasets.inputs import INPUTS, model_inputs
from spinecast.datasets.synth import generate
from spinecast.serving.predictor import Predictor
from spinecast.training.cli import fit
from spinecast.training.export import auroc, export
from spinecast.training.inference import encode_for, load_module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
BUNDLE = ROOT / "artifacts" / "bench" / "bundle"  # kept for benchmarks/http_service.py


def _train(work: Path) -> tuple[Path, Path]:
    generate(2000, seed=200, out=work / "train")
    generate(500, seed=201, out=work / "test")
    fit(
        [
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            "--data.train_path",
            str(work / "train" / "cohort.parquet"),
            "--data.test_fraction",
            "0",
            "--trainer.max_epochs",
            "3",
            "--trainer.default_root_dir",
            str(work / "run"),
            "--trainer.logger.init_args.save_dir",
            str(work / "run"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    return next((work / "run").rglob("best.ckpt")), work / "test" / "cohort.parquet"


def _torch_runner(ckpt: Path):
    net = load_module(ckpt).net

    @torch.no_grad()
    def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
        net.note.sentences.cache.clear()
        net.report.sentences.cache.clear()
        inputs = model_inputs(arrays)  # the same trimmed windows the predictor runs
        return net.probabilities(*(torch.from_numpy(inputs[k]) for k in INPUTS))[0].numpy()

    return run


def _time(run, arrays: dict[str, np.ndarray], batch: int, rounds: int) -> dict:
    n = len(arrays["numeric"])
    starts = list(range(0, n - batch + 1, batch))[: max(1, rounds)]
    run({k: v[:batch] for k, v in arrays.items()})  # warm-up
    per_patient = []
    for s in starts:
        chunk = {k: v[s : s + batch] for k, v in arrays.items()}
        t = time.perf_counter()
        run(chunk)
        per_patient.append((time.perf_counter() - t) / batch * 1000)
    return {
        "p50_ms": float(np.percentile(per_patient, 50)),
        "p95_ms": float(np.percentile(per_patient, 95)),
        "calls": len(per_patient),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--test", type=Path, help="labeled contract cohort to time and score on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=60, help="timed calls per variant and batch size"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, test = (args.ckpt, args.test) if args.ckpt else _train(work)
        export(ckpt, BUNDLE, data=test, optimize_graph=True, quantize_int8=True, max_auroc_drop=1.0)
        frame = load_cohort(test, training=True)
        module = load_module(ckpt)
        arrays = encode_for(module, frame)
        runners = {"pytorch": _torch_runner(ckpt)}
        for variant in ("fp32", "int8"):
            predictor = Predictor(BUNDLE, variant, threads=args.threads, batch_size=32)
            runners[f"onnx_{variant}"] = lambda a, p=predictor: p.run(a)["p_satisfied"]
        result = {
            "benchmark": "latency",
            "checkpoint": str(ckpt) if args.ckpt else "default.yaml, 3 epochs on 2,000",
            "test_patients": len(frame),
            "threads": args.threads,
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "variants": {},
        }
        for name, run in runners.items():
            full = np.concatenate(
                [
                    run({k: v[s : s + 32] for k, v in arrays.items()})
                    for s in range(0, len(frame), 32)
                ]
            )
            result["variants"][name] = {
                "test_auroc": auroc(frame, full),
                **{f"batch_{b}": _time(run, arrays, b, args.rounds) for b in (1, 32)},
            }
    v = result["variants"]
    result["ratios_to_pytorch"] = {
        f"{name}_batch_{b}": v[name][f"batch_{b}"]["p50_ms"] / v["pytorch"][f"batch_{b}"]["p50_ms"]
        for name in ("onnx_fp32", "onnx_int8")
        for b in (1, 32)
    }
    drop = v["onnx_fp32"]["test_auroc"] - v["onnx_int8"]["test_auroc"]
    result["int8_auroc_drop"] = drop
    result["targets_met"] = {
        "fp32_at_most_0.7x": all(
            result["ratios_to_pytorch"][f"onnx_fp32_batch_{b}"] <= 0.7 for b in (1, 32)
        ),
        "int8_at_most_0.5x": all(
            result["ratios_to_pytorch"][f"onnx_int8_batch_{b}"] <= 0.5 for b in (1, 32)
        ),
        "int8_auroc_drop_at_most_0.005": drop <= 0.005,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

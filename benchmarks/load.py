"""Load and soak benchmark: 60 s at concurrency 64 with 10 % invalid requests, on the real model.

    .venv/bin/python benchmarks/load.py [--bundle artifacts/bench/bundle] [--seconds 60] [--log server.log]

Serves the bundle `benchmarks/latency.py` leaves in artifacts/bench/bundle (the default configuration,
real MiniLM) on loopback and runs `spinecast.serving.loadtest` against it: requests per second,
p50/p99, errors by kind, resident memory of the service in the first and the last 10 s.
The fp32 variant is served (dynamic INT8 scales activations per merged batch, so answers would
differ slightly from the reference). Writes benchmarks/results/load.json. Targets (issue 6): every valid request answered correctly,
no 5xx, memory growth under 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

from spinecast.datasets.synth import generate
from spinecast.serving.demo import free_port, running_server
from spinecast.serving.loadtest import cohort_patients, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "load.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "bench" / "bundle")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--log", type=Path, help="keep the server's output in this file (default: discarded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(200, seed=203, out=work / "cohort")
        os.environ["BENTOML_HOME"] = str(work / "bentoml")  # before bentoml is first imported
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        port = free_port()
        with running_server(port, {"SPINECAST_ORT_THREADS": "2", "SPINECAST_VARIANT": "fp32"}, log=args.log) as proc:
            result = asyncio.run(run(f"http://127.0.0.1:{port}", cohort_patients(work / "cohort" / "cohort.parquet"),
                                     args.seconds, args.concurrency, 0.1, pid=proc.pid))
    result = {"benchmark": "load", "bundle": json.loads((args.bundle / "card.json").read_text())["version"],
              "cores": os.cpu_count(), **result}
    result["targets_met"] = {"all_valid_correct": result["valid_correct"] == result["valid"],
                             "no_5xx": result["5xx"] == 0, "rss_growth_under_10pct": result["rss_growth"] < 0.10}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Load and soak benchmark: 60 s at concurrency 64 with 10 % invalid requests, on the real model.

    .venv/bin/python benchmarks/load.py [--bundle artifacts/bench/bundle] [--seconds 60] \\
        [--log server.log]
    .venv/bin/python benchmarks/load.py --mixed [--bundle artifacts/demo/bundle]

`--mixed` (issue 15) runs `loadtest.run_mixed`: 5 % of requests /predict_batch of 64 to 256
patients, 10 % invalid of five kinds, 50 slow clients holding half-sent headers, a liveness probe
every second; writes benchmarks/results/load_mixed.json. Targets: no 5xx but a deliberate 503/429
with Retry-After, every accepted valid request correct, probe p99 <= 100 ms, /metrics size and
RSS growth (first vs last 10 s) within 10 %.

Serves the bundle `benchmarks/latency.py` leaves in artifacts/bench/bundle (the default
configuration, real MiniLM) on loopback and runs `tools.loadtest` against it: requests per second,
p50/p99, errors by kind, resident memory of the service in the first and the last 10 s.
The fp32 variant is served (dynamic INT8 scales activations per merged batch, so answers would
differ slightly from the reference). Writes benchmarks/results/load.json. Targets (issue 6): every
valid request answered correctly, no 5xx, memory growth under 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from spinecast.datasets.synth import generate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is not installed
from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients, run, run_mixed

RESULTS = ROOT / "benchmarks" / "results" / "load.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "bench" / "bundle")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="the soak's results file (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--log", type=Path, help="keep the server's output in this file (default: discarded)"
    )
    parser.add_argument(
        "--mixed", action="store_true", help="the hostile mix (issue 15) instead of the soak"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(300 if args.mixed else 200, seed=203, out=work / "cohort")
        os.environ["BENTOML_HOME"] = str(work / "bentoml")  # before bentoml is first imported
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        port = free_port()
        with running_server(
            port, {"SPINECAST_ORT_THREADS": "2", "SPINECAST_VARIANT": "fp32"}, log=args.log
        ) as proc:
            url, patients = (
                f"http://127.0.0.1:{port}",
                cohort_patients(work / "cohort" / "cohort.parquet", 300),
            )
            if args.mixed:
                result = asyncio.run(
                    run_mixed(url, patients, args.seconds, args.concurrency, pid=proc.pid)
                )
            else:
                result = asyncio.run(
                    run(url, patients[:200], args.seconds, args.concurrency, 0.1, pid=proc.pid)
                )
    card = json.loads((args.bundle / "card.json").read_text())
    result = {
        "benchmark": "load_mixed" if args.mixed else "load",
        "bundle": card["version"],
        "cores": os.cpu_count(),
        **result,
    }
    if args.mixed:
        result["targets_met"] = {
            "no_unplanned_5xx": result["unplanned_5xx"] == 0,
            "accepted_valid_all_correct": result["valid_correct"] == result["valid_answered"],
            "probe_p99_under_100ms": result["probe_p99_ms"] <= 100,
            "metrics_growth_under_10pct": abs(result["metrics_bytes_growth"]) < 0.10,
            # what grew: series of known routes only (a status code seen for the first time),
            # never a client's path
            "new_metrics_series_bounded": all(
                re.search(
                    r'endpoint="/(predict|predict_batch|explain|score|score_many|'
                    r'speed|unknown|model|livez|readyz|metrics)"',
                    line,
                )
                for line in result["metrics_new_series"]
            ),
            "rss_growth_under_10pct": abs(result["rss_growth"]) < 0.10,
        }
        out = RESULTS.with_name("load_mixed.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    result["targets_met"] = {
        "all_valid_correct": result["valid_correct"] == result["valid"],
        "no_5xx": result["5xx"] == 0,
        "rss_growth_under_10pct": result["rss_growth"] < 0.10,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

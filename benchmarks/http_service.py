"""HTTP benchmark: the BentoML service against the predictor it wraps, and adaptive batching on/off.

    .venv/bin/python benchmarks/http_service.py [--bundle artifacts/bench/bundle] [--requests 320]

(Not `benchmarks/http.py`: a script of that name beside the others would shadow the standard
library's `http` package for every benchmark script.)

Uses the bundle `benchmarks/latency.py` leaves in artifacts/bench/bundle (the default configuration
with the real MiniLM encoder). In one run, on the same 2 cores and the same synthetic patients
(seed 202, images inlined as base64):
- the predictor's own per-call p50 at batch 1, in this process;
- `/predict` at concurrency 1 (sequential calls): p50, and its ratio to the predictor's p50;
- `/predict` at concurrency 32 with adaptive batching on, then with it off (SPINECAST_BATCHING=0):
  requests per second, p50 and p99, and the throughput ratio;
- the service's resident memory (all its processes) after the load.
`--variant` picks the bundle's model (fp32 by default; INT8 scales activations per batch, so a
patient's probabilities depend slightly on the requests merged with it).
Writes benchmarks/results/http_<variant>.json (`--name` to change; `--bundle artifacts/bench/student
--name distilled` serves the distilled model of benchmarks/distill.py).
Targets (issue 5): concurrency-1 p50 <= 1.2x the predictor's p50; batching >= 1.5x the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from spinecast.datasets.synth import generate
from spinecast.serving.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is not installed
from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients

RESULTS = ROOT / "benchmarks" / "results"


async def _load(url: str, patients: list[dict], concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(patients[i % len(patients)])

    async def worker(client: httpx.AsyncClient):
        nonlocal errors
        while not queue.empty():
            patient = queue.get_nowait()
            t = time.perf_counter()
            r = await client.post(url + "/predict", json={"patient": patient})
            latencies.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200 or r.json()["patient_id"] != patient["patient_id"]:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await client.post(url + "/predict", json={"patient": patients[0]})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "requests_per_second": total / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def _rss_mib(proc: subprocess.Popen) -> float:
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "bench" / "bundle")
    parser.add_argument("--requests", type=int, default=320, help="requests per concurrency-32 run")
    parser.add_argument("--sequential", type=int, default=100, help="requests at concurrency 1")
    parser.add_argument("--variant", default="fp32", help="bundle variant to serve (fp32, int8)")
    parser.add_argument(
        "--name", default=None, help="results file http_<name>.json (default: the variant)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(200, seed=202, out=work / "cohort")
        patients = cohort_patients(work / "cohort" / "cohort.parquet", 200)
        env = {
            "BENTOML_HOME": str(work / "bentoml"),
            "SPINECAST_ORT_THREADS": "2",
            "SPINECAST_VARIANT": args.variant,
        }
        os.environ.update(env)  # before bentoml is first imported: its store lives there
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        predictor = Predictor(
            args.bundle, args.variant, threads=2, keep_memory=False
        )  # as the service
        records = [
            {**p, "mri_image": base64.b64decode(p["mri_image"]) if "mri_image" in p else None}
            for p in patients
        ]
        predictor.predict(records[:1])
        own = []
        for record in records[: args.sequential]:
            t = time.perf_counter()
            predictor.predict([record])
            own.append((time.perf_counter() - t) * 1000)
        del predictor
        result = {
            "benchmark": "http",
            "bundle": json.loads((args.bundle / "card.json").read_text())["version"],
            "variant": args.variant,
            "patients": len(patients),
            "cores": os.cpu_count(),
            "predictor_p50_ms": float(np.percentile(own, 50)),
        }
        for batching in ("1", "0"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with running_server(port, {**env, "SPINECAST_BATCHING": batching}) as proc:
                if batching == "1":
                    seq = asyncio.run(_load(url, patients, 1, args.sequential))
                    result["concurrency_1"] = seq
                    result["http_p50_over_predictor_p50"] = (
                        seq["p50_ms"] / result["predictor_p50_ms"]
                    )
                run = asyncio.run(_load(url, patients, 32, args.requests))
                run["service_rss_mib"] = _rss_mib(proc)
                result[
                    "concurrency_32_batching_on"
                    if batching == "1"
                    else "concurrency_32_batching_off"
                ] = run
    on, off = result["concurrency_32_batching_on"], result["concurrency_32_batching_off"]
    result["batching_throughput_ratio"] = on["requests_per_second"] / off["requests_per_second"]
    result["targets_met"] = {
        "http_p50_at_most_1.2x_predictor": result["http_p50_over_predictor_p50"] <= 1.2,
        "batching_at_least_1.5x_throughput": result["batching_throughput_ratio"] >= 1.5,
        "no_errors": on["errors"] == off["errors"] == result["concurrency_1"]["errors"] == 0,
    }
    out = RESULTS / f"http_{args.name or args.variant}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

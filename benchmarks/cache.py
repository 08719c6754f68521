"""The two-stage bundle and its sentence-embedding cache, measured side by side in one run.

    .venv/bin/python benchmarks/cache.py [--bundle artifacts/bench/two_stage] \\
        [--single-graph artifacts/bench/single_graph] [--rescore-patients 10000]

Both bundles are exports of the same checkpoint: `--bundle` by this code (sentence graph + patient
graph), `--single-graph` by the commit before the two-stage bundle (its one graph, which the
predictor still loads). On 2 threads, per patient at batch 1, on a fresh synthetic cohort (seed
501) whose notes no run has seen:
- cold: the cache emptied before every call, vs the single graph on the same patients (interleaved);
- warm: every sentence of the patient cached;
- new cohort: one predictor scoring the cohort in order from an empty cache (repeats across
  patients only: the honest hit rate), its p50 and hit rate;
- /explain vs /predict, both cold, in the predictor (records in, predictions out);
- HTTP /predict at concurrency 1 with the patient's sentences cached (warm), through a real server;
- `spinecast predict --sentence-cache` on a cohort (seed 502) twice: the second run's speed-up.
Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from spinecast.datasets import load_cohort
from spinecast.datasets.synth import generate
from spinecast.serving.batch import main as predict_main
from spinecast.serving.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is not installed
from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients

RESULTS = ROOT / "benchmarks" / "results" / "cache.json"


def _empty(predictor: Predictor) -> None:
    predictor.cache.clear()


def _ms(seconds: list[float]) -> float:
    return round(float(np.median(seconds)) * 1000, 2)


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _per_patient(two: Predictor, single: Predictor, frame, rounds: int) -> dict:
    arrays, old = two.encode(frame), single.encode(frame)
    cold, base, warm = [], [], []
    for i in range(rounds):
        one, one_old = ({k: v[i : i + 1] for k, v in a.items()} for a in (arrays, old))
        _empty(two)
        cold.append(_timed(lambda one=one: two.run(one)))
        base.append(_timed(lambda one_old=one_old: single.run(one_old)))
        warm.append(_timed(lambda one=one: two.run(one)))  # its sentences are cached now
    return {
        "cold_p50_ms": _ms(cold),
        "single_graph_cold_p50_ms": _ms(base),
        "cold_over_single_graph": round(_ms(cold) / _ms(base), 3),
        "warm_p50_ms": _ms(warm),
    }


def _new_cohort(bundle: Path, frame) -> dict:
    fresh = Predictor(bundle, threads=2, batch_size=1)
    arrays = fresh.encode(frame)
    seconds = [
        _timed(lambda i=i: fresh.run({k: v[i : i + 1] for k, v in arrays.items()}))
        for i in range(len(frame))
    ]
    lookups = fresh.cache.hits + fresh.cache.misses
    return {
        "hit_rate_new_cohort": round(fresh.cache.hits / lookups, 4),
        "new_cohort_p50_ms": _ms(seconds),
        "new_cohort_patients": len(frame),
        "cache_mib_after_new_cohort": round(fresh.cache.bytes / 2**20, 2),
    }


def _explain(two: Predictor, records: list[dict], rounds: int) -> dict:
    explain, predict = [], []
    for record in records[:rounds]:
        _empty(two)
        explain.append(_timed(lambda r=record: two.explain(r)))
        _empty(two)
        predict.append(_timed(lambda r=record: two.predict([r])))
    return {
        "explain_p50_ms": _ms(explain),
        "predict_cold_p50_ms": _ms(predict),
        "explain_over_predict": round(_ms(explain) / _ms(predict), 3),
    }


async def _http_warm(url: str, patient: dict, rounds: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # fills the cache and warms the connection
            assert (
                await client.post(url + "/predict", json={"patient": patient})
            ).status_code == 200
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            answer = await client.post(url + "/predict", json={"patient": patient})
            seconds.append(time.perf_counter() - start)
            assert answer.status_code == 200
    return _ms(seconds)


def _rescore(bundle: Path, work: Path, patients: int) -> dict:
    generate(patients, seed=502, out=work / "rescore")
    src, store = work / "rescore" / "cohort.parquet", work / "sentences.sqlite"
    runs = []
    for name in ("first", "second"):
        args = ["--model", str(bundle), "--in", str(src), "--out", str(work / f"{name}.parquet")]
        runs.append(_timed(lambda a=args: predict_main([*a, "--sentence-cache", str(store)])))
    return {
        "rescore_patients": patients,
        "rescore_first_s": round(runs[0], 1),
        "rescore_second_s": round(runs[1], 1),
        "rescore_speedup": round(runs[0] / runs[1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts/bench/two_stage")
    parser.add_argument("--single-graph", type=Path, default=ROOT / "artifacts/bench/single_graph")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--rescore-patients", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(max(args.rounds, 500), seed=501, out=work / "cohort")
        frame = load_cohort(work / "cohort" / "cohort.parquet", training=True)
        two = Predictor(args.bundle, threads=2, batch_size=1)
        single = Predictor(args.single_graph, threads=2, batch_size=1)
        two.run(two.encode(frame.iloc[:4]))  # warm-up of both sessions
        single.run(single.encode(frame.iloc[:4]))
        result = {
            "benchmark": "cache",
            "bundle": two.version,
            "single_graph_bundle": single.version,
            "single_graph_exported_by": (args.single_graph / "EXPORTED_BY_COMMIT")
            .read_text()
            .strip(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, 2 threads",
            **_per_patient(two, single, frame, args.rounds),
            **_new_cohort(args.bundle, frame),
        }
        records = frame.drop(columns=["satisfied", "odi_12m"]).to_dict("records")
        result |= _explain(two, records, min(args.rounds, 50))
        del single
        os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "SPINECAST_ORT_THREADS": "2"})
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        patient = cohort_patients(work / "cohort" / "cohort.parquet", 1)[0]
        port = free_port()
        with running_server(port):
            result["http_warm_p50_ms"] = asyncio.run(
                _http_warm(f"http://127.0.0.1:{port}", patient, args.rounds)
            )
        result |= _rescore(args.bundle, work, args.rescore_patients)
    result["student_int8_cold_p50_ms"] = None  # not measured: no distilled student in this run
    result["student_int8_auroc_drop"] = None
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

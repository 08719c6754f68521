"""What BentoML's hops cost by themselves: the floor under HTTP `/predict` at concurrency 1.

    .venv/bin/python benchmarks/http_floor.py [--bundle artifacts/demo/bundle] [--rounds 200]

SpineCast answers `/predict` through two services (the public one validates and admits, the model
worker batches and scores), or through one with `SPINECAST_INLINE_MODEL=1`. Served one after the
other in one run, on loopback, one patient sent `--rounds` times at concurrency 1 (its sentences
cached after the first):
- `echo_two_hops`: the two-service shape with no work: the public service takes the patient as a
  dict, calls a batchable worker API, which returns a stored answer of a real prediction's size;
- `echo_one_hop`: one service returning that answer itself;
- `spinecast_warm`: the real service on the bundle (fp32, 2 threads), two services;
- `spinecast_inline_warm`: the same with `SPINECAST_INLINE_MODEL=1`.
Also the predictor's own p50 for that patient (records in, sentences cached, the schema's
checks done: as the model worker calls it), alone; then three predictors interleaved round by
round (slower each: they share the caches), for their ratios: those records, the same records in a
DataFrame (`predict_frame`, as the predictor read them before `records.Records`), and with the
memory arena handed back after every run (`keep_memory=False`, the service's default). Writes
benchmarks/results/http_floor.json. Issue 17 asks for <= 10 ms warm over HTTP: the echo floor
plus the predictor's time says how much of that is the model's to lose.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
from spinecast.datasets.schema import PATIENT_COLUMNS
from spinecast.datasets.synth import generate
from spinecast.serving.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is not installed
from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients

RESULTS = ROOT / "benchmarks" / "results" / "http_floor.json"

ECHO = """
import json
from pathlib import Path

import bentoml

ANSWER = json.loads(Path(__file__).with_name("answer.json").read_text())


@bentoml.service(name="echo_model")
class Worker:
    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=20000)
    def score(self, patients: list[dict]) -> list[dict]:
        return [{**ANSWER, "patient_id": p["patient_id"]} for p in patients]


@bentoml.service(name="echo")
class Echo:
    worker = bentoml.depends(Worker)

    @bentoml.api(route="/predict")
    async def predict(self, patient: dict) -> dict:
        [out] = await self.worker.to_async.score([patient])
        return out


@bentoml.service(name="echo_one_hop")
class EchoOneHop:
    @bentoml.api(route="/predict")
    async def predict(self, patient: dict) -> dict:
        return {**ANSWER, "patient_id": patient["patient_id"]}
"""


def _p50(url: str, patient: dict, rounds: int) -> float:
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(5):
            assert client.post("/predict", json={"patient": patient}).status_code == 200
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            answer = client.post("/predict", json={"patient": patient})
            seconds.append(time.perf_counter() - start)
            assert answer.status_code == 200
    return round(statistics.median(seconds) * 1000, 2)


def _predictor_p50(bundle: Path, patient: dict, rounds: int) -> dict[str, float]:
    """The predictor's warm p50 alone (key "warm"), then three ways interleaved round by round
    ("interleaved_records", "_frame", "_arena_released")."""
    kept, released = Predictor(bundle, threads=2), Predictor(bundle, threads=2, keep_memory=False)
    frame = pd.DataFrame.from_records([patient], columns=list(PATIENT_COLUMNS))
    ways = {
        "records": lambda: kept.predict([patient], validated=True),
        "frame": lambda: kept.predict_frame(frame),
        "arena_released": lambda: released.predict([patient], validated=True),
    }
    out = {"warm": _median_ms([ways["records"]], rounds)[0]}
    medians = _median_ms(list(ways.values()), rounds)
    return out | {f"interleaved_{k}": ms for k, ms in zip(ways, medians)}


def _median_ms(calls: list, rounds: int) -> list[float]:
    """Each call's median over `rounds` (after 5 warm-up rounds), the calls taking turns."""
    seconds = [[] for _ in calls]
    for _ in range(rounds + 5):
        for call, times in zip(calls, seconds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return [round(statistics.median(t[5:]) * 1000, 2) for t in seconds]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "demo" / "bundle")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(4, seed=601, out=work / "cohort")
        patient = cohort_patients(work / "cohort" / "cohort.parquet", 1, images=False)[0]
        predictor = Predictor(args.bundle, threads=2)
        [answer] = predictor.predict([patient])
        (work / "answer.json").write_text(json.dumps(answer))
        (work / "echo_service.py").write_text(ECHO)
        predictor_p50 = _predictor_p50(args.bundle, patient, args.rounds)
        del predictor
        os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "SPINECAST_ORT_THREADS": "2"})
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        p50 = {}
        for name, service, env in (
            ("echo_two_hops", "echo_service:Echo", {}),
            ("echo_one_hop", "echo_service:EchoOneHop", {}),
            ("spinecast_warm", None, {}),
            ("spinecast_inline_warm", None, {"SPINECAST_INLINE_MODEL": "1"}),
        ):
            port = free_port()
            where = {"service": service, "cwd": work} if service else {}
            with running_server(port, {"SPINECAST_VARIANT": "fp32", **env}, **where):
                p50[name] = _p50(f"http://127.0.0.1:{port}", patient, args.rounds)
    result = {
        "benchmark": "http_floor",
        "machine": f"{os.cpu_count()} cores",
        "rounds": args.rounds,
        "bundle": str(
            args.bundle.relative_to(ROOT) if args.bundle.is_relative_to(ROOT) else args.bundle
        ),
        **{f"{name}_p50_ms": ms for name, ms in p50.items()},
        **{f"predictor_{k}_p50_ms": ms for k, ms in predictor_p50.items()},
        "spinecast_over_echo_ms": round(p50["spinecast_warm"] - p50["echo_two_hops"], 2),
        "inline_over_echo_ms": round(p50["spinecast_inline_warm"] - p50["echo_one_hop"], 2),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

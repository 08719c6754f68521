"""What BentoML's hops cost by themselves: the floor under HTTP `/predict` at concurrency 1.

    .venv/bin/python benchmarks/http_floor.py [--bundle artifacts/demo/bundle] [--rounds 200] \
        [--before BUNDLE]

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
checks done: as the model worker calls it), alone; then, round by round, for that patient and for
one with an image: the predictor as served (the image graph run only for an image, a batch of one
on the one-thread copy of the patient graph), the same with a batch of one on the two-thread
session, and with `--before` the same checkpoint exported before the image graph (the CNN inside
the patient graph, run on a blank image when there is none; two threads), all with the tokenizer's
thread pool off as the service runs them, and the served one with it on: what each change saves,
side by side. Writes benchmarks/results/http_floor.json. Issue 17 asks for <= 10 ms
warm over HTTP: the echo floor plus the predictor's time says how much of that is the model's to
lose.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
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


def _predictor_p50(
    bundle: Path, before: Path | None, patients: dict[str, dict], rounds: int
) -> dict[str, float]:
    """The predictor's warm p50 alone (key "warm"), then, interleaved round by round, for the
    patient without an image and one with: the predictor as served ("interleaved_served", the
    image graph, a batch of one on the one-thread session), the same with a batch of one on the
    two-thread session ("_two_threads"), and the `before` bundle (the same checkpoint exported
    before the image graph: the CNN inside the patient graph, two threads, "_image_in_patient");
    all with the tokenizer's thread pool off, as the service runs, and the served one without an
    image with it on ("_served_tokenizer_pool")."""
    served = Predictor(bundle, threads=2)
    two = Predictor(bundle, threads=2)
    two.single = two.session
    ways = {"served": served, "two_threads": two}
    if before is not None:
        ways["image_in_patient"] = old = Predictor(before, threads=2)
        old.single = old.session
    calls = {
        f"{way}{'' if kind == 'no_image' else '_' + kind}": _tokenizing(
            False, lambda p=predictor, r=record: p.predict([r], validated=True)
        )
        for kind, record in patients.items()
        for way, predictor in ways.items()
    }
    calls["served_tokenizer_pool"] = _tokenizing(
        True, lambda: served.predict([patients["no_image"]], validated=True)
    )
    out = {"warm": _median_ms([calls["served"]], rounds)[0]}
    medians = _median_ms(list(calls.values()), rounds)
    # the servers started next inherit this process's environment: the service chooses its own
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    return out | {f"interleaved_{k}": ms for k, ms in zip(calls, medians)}


def _tokenizing(pool: bool, call):
    """`call` with the tokenizer's thread pool on or off (the service turns it off; the tokenizer
    reads the variable at every call, and this process calls from one thread)."""

    def run():
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if pool else "false"
        return call()

    return run


def _median_ms(calls: list, rounds: int) -> list[float]:
    """Each call's median over `rounds` (after 5 warm-up rounds), the calls taking turns."""
    seconds = [[] for _ in calls]
    for _ in range(rounds + 5):
        for call, times in zip(calls, seconds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return [round(statistics.median(t[5:]) * 1000, 2) for t in seconds]


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts" / "demo" / "bundle")
    parser.add_argument(
        "--before", type=Path, help="the same checkpoint exported before the image graph"
    )
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(4, seed=601, out=work / "cohort")
        patient = cohort_patients(work / "cohort" / "cohort.parquet", 1, images=False)[0]
        [imaged] = [
            p | {"mri_image": base64.b64decode(p["mri_image"])}
            for p in cohort_patients(work / "cohort" / "cohort.parquet", 4, images=True)
            if p.get("mri_image")
        ][:1]
        predictor = Predictor(args.bundle, threads=2)
        [answer] = predictor.predict([patient])
        (work / "answer.json").write_text(json.dumps(answer))
        (work / "echo_service.py").write_text(ECHO)
        predictor_p50 = _predictor_p50(
            args.bundle, args.before, {"no_image": patient, "image": imaged}, args.rounds
        )
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
        "bundle": _shown(args.bundle),
        "before": _shown(args.before) if args.before else None,
        **{f"{name}_p50_ms": ms for name, ms in p50.items()},
        **{f"predictor_{k}_p50_ms": ms for k, ms in predictor_p50.items()},
        "spinecast_over_echo_ms": round(p50["spinecast_warm"] - p50["echo_two_hops"], 2),
        "inline_over_echo_ms": round(p50["spinecast_inline_warm"] - p50["echo_one_hop"], 2),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

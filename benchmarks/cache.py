"""The two-stage bundle and its sentence-embedding cache, measured side by side in one run.

    .venv/bin/python benchmarks/cache.py --ckpt CKPT [--bundle artifacts/bench/two_stage] \\
        [--rescore-patients 10000] [--student artifacts/bench/student_int8]

`--bundle` is an export of the checkpoint `--ckpt` (sentence graph + image graph + patient graph,
`--optimize`). The single graph it is measured against is built here from the same checkpoint: the
whole network traced as one ONNX graph (token ids, fields and image in; the text encoder run on
every padded sentence slot of every record, the image CNN on every record) and fused like
`--optimize`; the predictor serves it as a format-1 bundle. Single graphs before the two-stage
bundle (commit 92b12c4) did less: each distinct non-empty sentence once, unpadded. On 2 threads,
per patient at batch 1, on a fresh synthetic cohort (seed 501) whose notes no run has seen:
- cold: the cache emptied before every call, vs the single graph on the same patients (interleaved);
- warm: every sentence of the patient cached;
- new cohort: one predictor scoring the cohort in order from an empty cache (repeats across
  patients only: the honest hit rate), its p50 and hit rate;
- /explain vs /predict, both cold, in the predictor (records in, predictions out);
- HTTP /predict at concurrency 1 with the patient's sentences cached (warm), through a real server:
  as two services (the default) and with the model in the public service
  (`SPINECAST_INLINE_MODEL=1`, one worker: `http_warm_inline_p50_ms`);
- `spinecast predict --cache` on a cohort (seed 502) twice, then with a tenth of its notes changed:
  the speed-up of each later run over the first;
- `--student`, a distilled student exported with `--quantize int8`: its INT8 graph against its
  fp32 one, cold p50 at batch 1 and the AUROC on the same patients.
Writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from spinecast.datasets import load_cohort
from spinecast.datasets.synth import generate
from spinecast.serving import bundle as bundle_format
from spinecast.serving.batch import main as predict_main
from spinecast.serving.predictor import Predictor
from spinecast.training.export import auroc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is not installed
from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients

RESULTS = ROOT / "benchmarks" / "results" / "cache.json"


def single_graph(bundle: Path, ckpt: Path, out: Path, frame) -> Path:
    """`bundle` (an export of `ckpt`) with its graphs replaced by the whole network in one graph:
    a format-1 bundle (module docstring)."""
    import copy

    import torch
    from spinecast.datasets.inputs import INPUTS, OUTPUTS, PATIENT_INPUTS, model_inputs
    from spinecast.training.graph import (
        IMAGE_AXES,
        PATIENT_AXES,
        _export,
        optimize,
        sentence_encoders,
    )
    from spinecast.training.inference import load_module

    net = copy.deepcopy(load_module(ckpt).net).eval().float()
    for encoder in sentence_encoders(net).values():
        encoder.backbone.config._attn_implementation = "eager"  # as the export traces them

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net  # a submodule: its weights become the graph's initializers

        def forward(self, *inputs):
            x = dict(zip(INPUTS, inputs, strict=True))
            for name, encoder in sentence_encoders(self.net).items():
                ids, mask = (x[f"{name}_{k}"] for k in ("ids", "mask"))
                mask = mask.flatten(0, 1)
                emb = encoder._encode(ids.flatten(0, 1), mask)  # every slot, no data-dependent cut
                emb = emb * mask.any(dim=1, keepdim=True)  # zeros where a slot is empty
                x[f"{name}_emb"] = emb.unflatten(0, ids.shape[:2])
            x["image_emb"] = self.net.image(x["image"])
            return self.net.calibrated(self.net.patient(*(x[k] for k in PATIENT_INPUTS)))

    shutil.copytree(bundle, out)
    for graph in out.glob("*.onnx"):
        graph.unlink()
    example = model_inputs(Predictor(bundle).encode(frame.iloc[:2]))
    axes = {k: (PATIENT_AXES | IMAGE_AXES)[k] for k in (*INPUTS, *OUTPUTS)}
    args = tuple(torch.from_numpy(example[k]) for k in INPUTS)
    _export(Whole(), args, out / bundle_format.MODEL, INPUTS, OUTPUTS, axes)
    optimize(out / bundle_format.MODEL, net)
    card = bundle_format.read(bundle)
    variant = bundle_format.Variant(file=bundle_format.MODEL)
    one = card.model_copy(update={"variants": {"fp32": variant}, "serve": "fp32"})
    bundle_format.write(out, one)
    return out


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
    """`spinecast predict --cache` three times: a cohort, the same cohort again, and that cohort
    with a tenth of its notes changed (a sentence added): records answered from the file, changed
    ones re-scored with their other sentences found."""
    generate(patients, seed=502, out=work / "rescore")
    src, store = work / "rescore" / "cohort.parquet", work / "scored.sqlite"
    changed = pd.read_parquet(src)
    some = changed.sample(frac=0.1, random_state=0).index
    changed.loc[some, "clinical_note"] = changed.loc[some, "clinical_note"] + " Seen again today."
    changed.to_parquet(work / "rescore" / "changed.parquet")  # beside its images
    runs = []
    for name, cohort in (
        ("first", src),
        ("second", src),
        ("changed", src.with_name("changed.parquet")),
    ):
        args = ["--model", str(bundle), "--in", str(cohort), "--out", str(work / f"{name}.parquet")]
        runs.append(_timed(lambda a=args: predict_main([*a, "--cache", str(store)])))
    return {
        "rescore_patients": patients,
        "rescore_first_s": round(runs[0], 1),
        "rescore_second_s": round(runs[1], 1),
        "rescore_speedup": round(runs[0] / runs[1], 2),
        "rescore_changed_share": 0.1,
        "rescore_changed_s": round(runs[2], 1),
        "rescore_changed_speedup": round(runs[0] / runs[2], 2),
    }


def _student(student: Path, frame, rounds: int) -> dict:
    """The distilled student's INT8 graphs against its fp32 one: cold p50 per patient at batch 1
    (alternating, the cache emptied before every call) and test AUROC on the same patients."""
    if not (student / "card.json").is_file():
        return {"student_int8_cold_p50_ms": None, "student_int8_auroc_drop": None}
    variants = list(bundle_format.read(student).variants)
    predictors = {v: Predictor(student, v, threads=2, batch_size=1) for v in variants}
    arrays = {v: p.encode(frame) for v, p in predictors.items()}
    times = {v: [] for v in variants}
    for i in range(rounds + 1):
        for v, predictor in predictors.items():
            one = {k: a[i : i + 1] for k, a in arrays[v].items()}
            _empty(predictor)
            seconds = _timed(lambda p=predictor, one=one: p.run(one))
            if i:  # the first round warms up
                times[v].append(seconds)
    scores = {v: auroc(frame, p.run(arrays[v])["p_satisfied"]) for v, p in predictors.items()}
    [int8] = [v for v in variants if v != "fp32"] or [None]
    return {
        "student_bundle": predictors["fp32"].version,
        "student_variants": {
            v: {"cold_p50_ms": _ms(times[v]), "test_auroc": round(scores[v], 4)} for v in variants
        },
        "student_int8_variant": int8,
        "student_int8_cold_p50_ms": _ms(times[int8]) if int8 else None,
        "student_int8_auroc_drop": round(scores["fp32"] - scores[int8], 4) if int8 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", type=Path, required=True, help="the checkpoint of --bundle")
    parser.add_argument("--bundle", type=Path, default=ROOT / "artifacts/bench/two_stage")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--rescore-patients", type=int, default=10_000)
    parser.add_argument(
        "--student",
        type=Path,
        default=ROOT / "artifacts/bench/student_int8",
        help="a distilled student exported with --quantize int8 (skipped when absent)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(max(args.rounds, 500), seed=501, out=work / "cohort")
        frame = load_cohort(work / "cohort" / "cohort.parquet", training=True)
        two = Predictor(args.bundle, threads=2, batch_size=1)
        single_path = single_graph(args.bundle, args.ckpt, work / "single_graph", frame)
        single = Predictor(single_path, threads=2, batch_size=1)
        two.run(two.encode(frame.iloc[:4]))  # warm-up of both sessions
        single.run(single.encode(frame.iloc[:4]))
        result = {
            "benchmark": "cache",
            "bundle": two.version,
            "single_graph_bundle": single.version,
            "single_graph": "the same checkpoint traced as one graph (module docstring)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, 2 threads",
            **_per_patient(two, single, frame, args.rounds),
            **_new_cohort(args.bundle, frame),
        }
        records = frame.drop(columns=["satisfied", "odi_12m"]).to_dict("records")
        result |= _explain(two, records, min(args.rounds, 50))
        del single
        result |= _student(args.student, frame, args.rounds)
        os.environ.update({"BENTOML_HOME": str(work / "bentoml"), "SPINECAST_ORT_THREADS": "2"})
        from spinecast.training.export import save_to_bentoml

        save_to_bentoml(args.bundle)
        patient = cohort_patients(work / "cohort" / "cohort.parquet", 1)[0]
        inline = {"SPINECAST_INLINE_MODEL": "1", "SPINECAST_WORKERS": "1"}
        for key, env in (("http_warm_p50_ms", None), ("http_warm_inline_p50_ms", inline)):
            port = free_port()
            with running_server(port, env):
                result[key] = asyncio.run(
                    _http_warm(f"http://127.0.0.1:{port}", patient, args.rounds)
                )
        result |= _rescore(args.bundle, work, args.rescore_patients)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

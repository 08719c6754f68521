"""A bounded load test of a running SpineCast service: asyncio clients, loopback or any URL.

    .venv/bin/python -m spinecast.serving.loadtest --url http://127.0.0.1:3000 --cohort cohort.parquet \\
        [--seconds 60] [--concurrency 64] [--invalid 0.1] [--pid SERVER_PID] [--token KEY]

After a warm-up (default 10 s, not counted), every client loops until the time is up, sending
`/predict` for patients of the cohort; a share of
the requests is invalid on purpose (an out-of-range age) and must get 400. Each valid answer is
checked against the answer the service gave the same patient before the load (same outcomes to 1e-4).
With `--pid`, the resident memory of the server's process tree is sampled every second. Stops by
itself; prints (and returns) requests per second, p50/p99, errors by kind and the memory growth
between the first and the last 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd


def cohort_patients(path: Path, n: int = 200) -> list[dict]:
    """API patients from a contract cohort file: labels dropped, images inlined as base64."""
    frame = pd.read_parquet(path).head(n).drop(columns=["satisfied", "odi_12m"], errors="ignore")
    out = []
    for row in frame.to_dict("records"):
        p = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if not pd.isna(v)}
        if "mri_image" in p:
            p["mri_image"] = base64.b64encode((path.parent / p["mri_image"]).read_bytes()).decode()
        out.append(p)
    return out


def _rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _same(answer: dict, reference: dict) -> bool:
    if answer.get("patient_id") != reference["patient_id"]:
        return False
    got = {o["treatment"]: o["p_satisfied"] for o in answer["outcomes"]}
    return all(abs(got[o["treatment"]] - o["p_satisfied"]) <= 1e-4 for o in reference["outcomes"])


async def run(url: str, patients: list[dict], seconds: float = 60, concurrency: int = 64, invalid: float = 0.1,
              pid: int | None = None, headers: dict | None = None, seed: int = 0, warmup: float = 10) -> dict:
    """`warmup` seconds of the same traffic run first and are not counted (caches and pools fill up)."""
    headers = headers or {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as client:
        reference = {}
        for start in range(0, len(patients), 8):  # what each patient should get (small: images are big)
            r = await client.post("/predict_batch", json={"patients": patients[start:start + 8]})
            r.raise_for_status()
            reference.update({p["patient_id"]: p for p in r.json()["predictions"]})
        counts = {"valid": 0, "valid_correct": 0, "invalid": 0, "invalid_400": 0, "5xx": 0, "other": 0}
        latencies: list[float] = []
        unexpected: dict[str, int] = {}  # status and the start of the body: errors carry no patient data
        rss: list[tuple[float, float]] = []
        rng = random.Random(seed)
        end = time.monotonic() + warmup
        while time.monotonic() < end:
            await asyncio.gather(*(client.post("/predict", json={"patient": rng.choice(patients)})
                                   for _ in range(concurrency)))
        begin = time.monotonic()
        end = begin + seconds

        async def client_loop():
            while time.monotonic() < end:
                patient = rng.choice(patients)
                bad = rng.random() < invalid
                body = {"patient": {**patient, "age": 7} if bad else patient}
                t = time.perf_counter()
                r = await client.post("/predict", json=body)
                latencies.append((time.perf_counter() - t) * 1000)
                if r.status_code != (400 if bad else 200):
                    counts["5xx" if r.status_code >= 500 else "other"] += 1  # other: e.g. 401, 413
                    unexpected[f"{r.status_code} {r.text[:120]}"] = unexpected.get(f"{r.status_code} {r.text[:120]}", 0) + 1
                if bad:
                    counts["invalid"] += 1
                    counts["invalid_400"] += r.status_code == 400
                else:
                    counts["valid"] += 1
                    counts["valid_correct"] += r.status_code == 200 and _same(r.json(), reference[patient["patient_id"]])

        async def sample_memory():
            while time.monotonic() < end:
                rss.append((time.monotonic() - begin, _rss_mib(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)), *([sample_memory()] if pid else []))
        elapsed = time.monotonic() - begin
    result = {"seconds": round(elapsed, 1), "concurrency": concurrency, "invalid_share": invalid,
              "requests": len(latencies), "requests_per_second": round(len(latencies) / elapsed, 1),
              "p50_ms": round(float(np.percentile(latencies, 50)), 1),
              "p99_ms": round(float(np.percentile(latencies, 99)), 1), **counts, "unexpected": unexpected}
    if rss:
        first = [m for t, m in rss if t <= 10]
        last = [m for t, m in rss if t >= rss[-1][0] - 10]
        result.update(rss_first_10s_mib=round(float(np.mean(first)), 1), rss_last_10s_mib=round(float(np.mean(last)), 1),
                      rss_growth=round(float(np.mean(last) / np.mean(first) - 1), 4))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--cohort", type=Path, required=True, help="contract cohort (.parquet) to draw patients from")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--invalid", type=float, default=0.1, help="share of deliberately invalid requests")
    parser.add_argument("--pid", type=int, default=None, help="server process id, to sample its memory")
    parser.add_argument("--token", default=None, help="API key, when the service has one")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of traffic before measuring")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    result = asyncio.run(run(args.url, cohort_patients(args.cohort), args.seconds, args.concurrency, args.invalid,
                             args.pid, headers, warmup=args.warmup))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""A bounded load test of a running SpineCast service: asyncio clients, loopback or any URL.

    .venv/bin/python -m tools.loadtest --url http://127.0.0.1:3000 --cohort cohort.parquet \\
        [--seconds 60] [--concurrency 64] [--invalid 0.1] [--pid SERVER_PID] [--token KEY]

`run_mixed` is the hostile mix of issue 15 (invalid kinds, large batches, slow clients, probes).

After a warm-up (default 10 s, not counted), every client loops until the time is up, sending
`/predict` for patients of the cohort; a share of
the requests is invalid on purpose (an out-of-range age) and must get 400. Each valid answer is
checked against the answer the service gave the same patient before the load (same outcomes to
1e-4).
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


def cohort_patients(path: Path, n: int | None = 200, images: bool = True) -> list[dict]:
    """API patients from a contract cohort file (the first `n`; None: all): labels dropped, missing
    fields left out, images inlined as base64 (or left out: `images=False`)."""
    frame = pd.read_parquet(path).head(n).drop(columns=["satisfied", "odi_12m"], errors="ignore")
    out = []
    for row in frame.to_dict("records"):
        p = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if not pd.isna(v)}
        if "mri_image" in p and images:
            p["mri_image"] = base64.b64encode((path.parent / p["mri_image"]).read_bytes()).decode()
        elif "mri_image" in p:
            del p["mri_image"]
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


async def run(
    url: str,
    patients: list[dict],
    seconds: float = 60,
    concurrency: int = 64,
    invalid: float = 0.1,
    pid: int | None = None,
    headers: dict | None = None,
    seed: int = 0,
    warmup: float = 10,
) -> dict:
    """`warmup` seconds of the same traffic run first and are not counted (caches and pools fill
    up)."""
    headers = headers or {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers=headers
    ) as client:
        reference = {}
        for start in range(
            0, len(patients), 8
        ):  # what each patient should get (small: images are big)
            r = await client.post("/predict_batch", json={"patients": patients[start : start + 8]})
            r.raise_for_status()
            reference.update({p["patient_id"]: p for p in r.json()["predictions"]})
        counts = {
            "valid": 0,
            "valid_correct": 0,
            "invalid": 0,
            "invalid_400": 0,
            "5xx": 0,
            "other": 0,
        }
        latencies: list[float] = []
        unexpected: dict[
            str, int
        ] = {}  # status and the start of the body: errors carry no patient data
        rss: list[tuple[float, float]] = []
        rng = random.Random(seed)
        end = time.monotonic() + warmup
        while time.monotonic() < end:
            await asyncio.gather(
                *(
                    client.post("/predict", json={"patient": rng.choice(patients)})
                    for _ in range(concurrency)
                )
            )
        begin = time.monotonic()
        end = begin + seconds

        async def client_loop():
            while time.monotonic() < end:
                patient = rng.choice(patients)
                bad = rng.random() < invalid
                body = {"patient": {**patient, "age": 7} if bad else patient}
                t = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                except httpx.TransportError as err:  # no answer: counted, the run goes on
                    counts["other"] += 1
                    key = f"no answer ({type(err).__name__})"
                    unexpected[key] = unexpected.get(key, 0) + 1
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                if r.status_code != (400 if bad else 200):
                    counts["5xx" if r.status_code >= 500 else "other"] += 1  # other: e.g. 401, 413
                    unexpected[f"{r.status_code} {r.text[:120]}"] = (
                        unexpected.get(f"{r.status_code} {r.text[:120]}", 0) + 1
                    )
                if bad:
                    counts["invalid"] += 1
                    counts["invalid_400"] += r.status_code == 400
                else:
                    counts["valid"] += 1
                    counts["valid_correct"] += r.status_code == 200 and _same(
                        r.json(), reference[patient["patient_id"]]
                    )

        async def sample_memory():
            while time.monotonic() < end:
                rss.append((time.monotonic() - begin, _rss_mib(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(
            *(client_loop() for _ in range(concurrency)), *([sample_memory()] if pid else [])
        )
        elapsed = time.monotonic() - begin
    result = {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "invalid_share": invalid,
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        **counts,
        "unexpected": unexpected,
    }
    if rss:
        first = [m for t, m in rss if t <= 10]
        last = [m for t, m in rss if t >= rss[-1][0] - 10]
        result.update(
            rss_first_10s_mib=round(float(np.mean(first)), 1),
            rss_last_10s_mib=round(float(np.mean(last)), 1),
            rss_growth=round(float(np.mean(last) / np.mean(first) - 1), 4),
        )
    return result


INVALID = (  # each breaks one rule of the contract; all must get 400
    lambda p: {**p, "age": 7},
    lambda p: {**p, "asa_class": "3"},
    lambda p: {**p, "diabetes": 1},
    lambda p: {**p, "patient_id": "X-\x00-1"},
    lambda p: {**p, "unknown_key": True},
)


async def _slow_client(port: int, end: float, held: list[int]) -> None:
    """A client that opens a connection, sends half a request line and waits; when the server
    closes it (header deadline), it opens the next one, until `end`."""
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-")
        held[0] += 1
        try:
            await asyncio.wait_for(reader.read(), max(0.1, end - time.monotonic()))
        except (TimeoutError, OSError):
            pass
        finally:
            held[0] -= 1
            writer.close()


async def run_mixed(
    url: str,
    patients: list[dict],
    seconds: float = 60,
    concurrency: int = 64,
    invalid: float = 0.1,
    batches: float = 0.05,
    slow: int = 50,
    pid: int | None = None,
    seed: int = 0,
    warmup: float = 30,
) -> dict:
    """A hostile mix: `concurrency` clients send /predict, a share `invalid` of them invalid (five
    kinds, all must get 400) and a share `batches` /predict_batch of 64 to 256 patients; `slow`
    clients hold connections with half-sent headers; a liveness probe runs every second and /metrics
    is read every 5 s. A 503 or 429 is counted as shed (deliberate) when it carries Retry-After;
    any other 5xx is unplanned. Every 200 is checked against the reference answer. The mix runs
    `warmup` seconds before the measured `seconds` (counts, probes and growth are measured after it:
    by then every metric series the mix creates exists)."""
    port = int(url.rsplit(":", 1)[1])
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        reference = {}
        for start in range(0, len(patients), 8):
            r = await client.post("/predict_batch", json={"patients": patients[start : start + 8]})
            r.raise_for_status()
            reference.update({p["patient_id"]: p for p in r.json()["predictions"]})
        counts = dict.fromkeys(
            (
                "valid_sent",
                "valid_correct",
                "valid_answered",
                "shed",
                "invalid_sent",
                "invalid_400",
                "unplanned_5xx",
                "other",
                "connection_resets",
            ),
            0,
        )
        latencies: list[float] = []
        probes: list[float] = []
        metrics: list[tuple[float, int]] = []
        series: list[set[str]] = []
        rss: list[tuple[float, float]] = []
        unexpected: dict[str, int] = {}
        held = [0]
        held_max = [0]
        begin = time.monotonic() + warmup  # time 0 of every sample
        end = begin + seconds

        def seen(status: int, text: str, headers) -> bool:
            """Counts a non-200 answer; True when it was a deliberate shed."""
            if time.monotonic() < begin:
                return False
            if status in (429, 503) and "retry-after" in headers:
                counts["shed"] += 1
                return True
            counts["unplanned_5xx" if status >= 500 else "other"] += 1
            key = f"{status} {text[:100]}"
            unexpected[key] = unexpected.get(key, 0) + 1
            return False

        async def send(path: str, body: dict) -> httpx.Response:
            """POST, sent again once when the server closed the kept-alive connection under it (the
            idle-timeout race every HTTP/1.1 client meets; counted, not hidden)."""
            try:
                return await client.post(path, json=body)
            except httpx.TransportError:
                counts["connection_resets"] += 1
                return await client.post(path, json=body)

        async def client_loop():
            while time.monotonic() < end:
                if time.monotonic() < begin:  # warm-up traffic is not counted
                    for key in counts:
                        counts[key] = 0
                    latencies.clear()
                draw = rng.random()
                t = time.perf_counter()
                if draw < batches:
                    group = rng.sample(patients, rng.randint(64, min(256, len(patients))))
                    r = await send("/predict_batch", {"patients": group})
                    counts["valid_sent"] += 1
                    if r.status_code == 200:
                        counts["valid_answered"] += 1
                        answers = r.json()["predictions"]
                        counts["valid_correct"] += len(answers) == len(group) and all(
                            _same(a, reference[p["patient_id"]]) for a, p in zip(answers, group)
                        )
                    else:
                        seen(r.status_code, r.text, r.headers)
                elif draw < batches + invalid:
                    r = await send(
                        "/predict", {"patient": rng.choice(INVALID)(rng.choice(patients))}
                    )
                    counts["invalid_sent"] += 1
                    if r.status_code == 400:
                        counts["invalid_400"] += 1
                    else:
                        seen(r.status_code, r.text, r.headers)
                else:
                    patient = rng.choice(patients)
                    r = await send("/predict", {"patient": patient})
                    counts["valid_sent"] += 1
                    if r.status_code == 200:
                        counts["valid_answered"] += 1
                        counts["valid_correct"] += _same(r.json(), reference[patient["patient_id"]])
                    else:
                        seen(r.status_code, r.text, r.headers)
                    latencies.append((time.perf_counter() - t) * 1000)
                if r.status_code in (429, 503):
                    await asyncio.sleep(
                        min(5.0, float(r.headers.get("retry-after", 1)))
                    )  # as a polite client would

        async def probe():
            async with httpx.AsyncClient(base_url=url, timeout=30) as own:
                while time.monotonic() < end:
                    t = time.perf_counter()
                    r = await own.get("/livez")
                    if time.monotonic() >= begin:
                        probes.append(
                            (time.perf_counter() - t) * 1000
                            if r.status_code == 200
                            else float("inf")
                        )
                    held_max[0] = max(held_max[0], held[0])
                    await asyncio.sleep(1.0)

        async def scrape():
            async with httpx.AsyncClient(base_url=url, timeout=30) as own:
                while time.monotonic() < end:
                    text = (await own.get("/metrics")).text
                    if time.monotonic() >= begin:
                        metrics.append((time.monotonic() - begin, len(text.encode())))
                        series.append(
                            {
                                line.rsplit(" ", 1)[0]
                                for line in text.splitlines()
                                if not line.startswith("#")
                            }
                        )
                        if pid:
                            rss.append((time.monotonic() - begin, _rss_mib(pid)))
                    await asyncio.sleep(5.0 if not pid else 1.0)

        await asyncio.gather(
            *(client_loop() for _ in range(concurrency)),
            probe(),
            scrape(),
            *(_slow_client(port, end, held) for _ in range(slow)),
        )
        elapsed = time.monotonic() - begin

    def growth(series):
        first = [v for t, v in series if t <= 10]
        last = [v for t, v in series if t >= series[-1][0] - 10]
        return round(float(np.mean(last) / np.mean(first) - 1), 4)

    return {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "invalid_share": invalid,
        "batch_share": batches,
        "slow_clients": slow,
        "slow_connections_held_max": held_max[0],
        **counts,
        "predict_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "predict_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "probes": len(probes),
        "probe_p50_ms": round(float(np.percentile(probes, 50)), 1),
        "probe_p99_ms": round(float(np.percentile(probes, 99)), 1),
        "probe_max_ms": round(max(probes), 1),
        "metrics_bytes_first": metrics[0][1],
        "metrics_bytes_last": metrics[-1][1],
        "metrics_bytes_growth": growth(metrics),
        "metrics_new_series": sorted(series[-1] - series[0]),
        **(
            {
                "rss_growth": growth(rss),
                "rss_first_mib": round(rss[0][1], 1),
                "rss_last_mib": round(rss[-1][1], 1),
            }
            if rss
            else {}
        ),
        "unexpected": unexpected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--cohort",
        type=Path,
        required=True,
        help="contract cohort (.parquet) to draw patients from",
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--invalid", type=float, default=0.1, help="share of deliberately invalid requests"
    )
    parser.add_argument(
        "--pid", type=int, default=None, help="server process id, to sample its memory"
    )
    parser.add_argument("--token", default=None, help="API key, when the service has one")
    parser.add_argument(
        "--warmup", type=float, default=10, help="seconds of traffic before measuring"
    )
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    result = asyncio.run(
        run(
            args.url,
            cohort_patients(args.cohort),
            args.seconds,
            args.concurrency,
            args.invalid,
            args.pid,
            headers,
            warmup=args.warmup,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

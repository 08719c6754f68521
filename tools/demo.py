"""The end of `make demo`: serve the model, show one `curl` call to /predict and its answer, one
CDS Hooks order-select call and its cards, stop.

    .venv/bin/python -m tools.demo --cohort artifacts/demo/test/cohort.parquet [--port 3000]

`running_server` starts `bentoml serve` as a subprocess and waits for `/readyz`; the integration
tests use it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

SERVICE = "spinecast.serving.service:SpineCast"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    port: int,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 120,
    service: str = SERVICE,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """`bentoml serve` of `service` (run in `cwd`) on localhost:`port`, ready; output to `log`
    (default: discarded)."""
    out = log.open("wb") if log else subprocess.DEVNULL
    bentoml = Path(sys.executable).with_name("bentoml")
    proc = subprocess.Popen(
        [str(bentoml), "serve", service, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"bentoml serve exited with {proc.returncode} before it was ready"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"bentoml serve was not ready within {timeout:.0f} s")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc)
        if log:
            out.close()


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (the server drains in-flight requests), then SIGKILL after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cohort", type=Path, required=True, help="a cohort to take the example patient from"
    )
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args()
    from tools.cds_request import hook_request
    from tools.loadtest import cohort_patients

    patient = next(
        p
        for p in cohort_patients(args.cohort, None, images=False)
        if "clinical_note" in p and "imaging_report" in p
    )
    body = json.dumps({"patient": patient})
    url = f"http://127.0.0.1:{args.port}/predict"
    with running_server(args.port):
        print(
            f"SpineCast is serving on http://127.0.0.1:{args.port} "
            "(stopped again after this call). A call:\n"
        )
        print(f"curl -s -X POST {url} -H 'Content-Type: application/json' -d {shlex.quote(body)}\n")
        answer = httpx.post(url, json={"patient": patient}, timeout=60)
        print(f"HTTP {answer.status_code}:\n{json.dumps(answer.json(), indent=2)}")
        _cds_call(args.port, hook_request(patient))
    print(
        "\nServe it yourself: make serve (port 3000), then open the clinician page at "
        "http://127.0.0.1:3000/ui; build the Bento: make bento."
    )


def _cds_call(port: int, body: dict) -> None:
    """What an EHR's order-select call for the same patient answers (README "CDS Hooks")."""
    url = f"http://127.0.0.1:{port}/cds-services/spinecast-treatment"
    resources = sum(
        len(v.get("entry", [])) if v.get("resourceType") == "Bundle" else 1
        for v in body["prefetch"].values()
        if v
    )
    print(
        f"\nA CDS Hooks call, as an EHR makes it when the treatment is ordered: POST {url} "
        f"(hook order-select; the chart as {resources} prefetched FHIR R4 resources). Its cards:\n"
    )
    answer = httpx.post(url, json=body, timeout=60)
    print(f"HTTP {answer.status_code}:\n{json.dumps(answer.json(), indent=2)}")


if __name__ == "__main__":
    main()

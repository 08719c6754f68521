"""Faults: damaged bundles, SIGTERM under load, a failing model run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tools.demo import SERVICE, free_port, running_server

PATIENT = {"patient_id": "F-1", "age": 58, "sex": "female", "clinical_note": "Leg pain. " * 20}


def _model_dir(home: Path) -> Path:
    return next(p for p in (home / "models" / "spinecast").iterdir() if p.is_dir())


def _damage(home: Path, how: str) -> None:
    model = _model_dir(home)
    if how == "tampered":
        data = bytearray((model / "model.onnx").read_bytes())
        data[len(data) // 3] ^= 0x01
        (model / "model.onnx").write_bytes(bytes(data))
    elif how == "truncated":
        (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes()[:4096])
    elif how == "incomplete":
        (model / "tokenizer.json").unlink()
    else:  # no model in the store at all
        shutil.rmtree(home / "models")


@pytest.mark.parametrize("how", ["tampered", "truncated", "incomplete", "absent"])
def test_damaged_bundle_stops_the_server_with_the_reason(bentoml_home, tmp_path, how):
    home = shutil.copytree(bentoml_home, tmp_path / "home")
    _damage(home, how)
    bentoml = Path(sys.executable).with_name("bentoml")
    done = subprocess.run(
        [str(bentoml), "serve", SERVICE, "--port", str(free_port())],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENTOML_HOME": str(home)},
    )
    assert done.returncode != 0
    reason = {
        "tampered": "does not match its SHA-256",
        "truncated": "does not match its SHA-256",
        "incomplete": "tokenizer.json is missing",
        "absent": "not in the BentoML model store",
    }[how]
    assert reason in done.stdout + done.stderr


def test_sigterm_drains_in_flight_requests(bentoml_home):
    """Six batches of 256 patients (distinct sentences: no dedup) are being scored when SIGTERM
    arrives: all six are answered."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict_batch"
    note = lambda b, i: " ".join(f"Pain {b}-{i}-{j} since visit {j}." for j in range(40))
    batches = [
        [{**PATIENT, "patient_id": f"F-{b}-{i}", "clinical_note": note(b, i)} for i in range(256)]
        for b in range(6)
    ]
    with running_server(port, {"BENTOML_HOME": str(bentoml_home)}) as proc:
        with ThreadPoolExecutor(len(batches)) as pool:
            futures = [
                pool.submit(httpx.post, url, json={"patients": b}, timeout=120) for b in batches
            ]
            time.sleep(0.5)  # connected and queued; scoring all six takes several seconds
            assert not any(f.done() for f in futures)
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert proc.wait(timeout=60) == 0
    assert [a.status_code for a in answers] == [200] * len(batches)
    for batch, answer in zip(batches, answers):
        assert [p["patient_id"] for p in answer.json()["predictions"]] == [
            p["patient_id"] for p in batch
        ]


def test_a_failing_model_run_is_a_503_and_the_next_request_is_served(bentoml_home, tmp_path):
    """Fault injection without touching the service: a sitecustomize module, loaded by every server
    process, makes the predictor raise for patients aged 109."""
    (tmp_path / "sitecustomize.py").write_text(
        "from spinecast.serving.predictor import Predictor\n"
        "original = Predictor.predict\n"
        "def predict(self, records, **options):\n"
        "    records = list(records)\n"
        "    if any(r.get('age') == 109 for r in records):\n"
        "        raise RuntimeError('injected fault')\n"
        "    return original(self, records, **options)\n"
        "Predictor.predict = predict\n"
    )
    port = free_port()
    env = {
        "BENTOML_HOME": str(bentoml_home),
        "PYTHONPATH": str(tmp_path),
        "SPINECAST_BATCHING": "0",
    }
    with running_server(port, env):
        url = f"http://127.0.0.1:{port}"
        failed = httpx.post(url + "/predict", json={"patient": {**PATIENT, "age": 109}}, timeout=60)
        assert failed.status_code == 503 and "injected" not in failed.text
        assert (
            httpx.post(url + "/predict", json={"patient": PATIENT}, timeout=60).status_code == 200
        )
        assert (
            httpx.post(
                url + "/predict_batch", json={"patients": [{**PATIENT, "age": 109}]}, timeout=60
            ).status_code
            == 503
        )
        assert httpx.get(url + "/readyz").status_code == 200

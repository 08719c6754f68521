"""SPINECAST_INLINE_MODEL: the model in the public service's process (one HTTP hop)."""

import httpx
import psutil
import pytest
from spinecast.serving.settings import load

from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients


def test_the_inline_model_answers_as_the_two_services_do_from_one_process(
    server, bentoml_home, small_cohort
):
    patients = cohort_patients(small_cohort / "cohort.parquet", 3)
    url, _, key = server
    auth = {"Authorization": f"Bearer {key}"}
    two_hops = [
        httpx.post(url + "/predict", json={"patient": p}, headers=auth, timeout=60).json()
        for p in patients
    ]
    two_hop_batch = httpx.post(
        url + "/predict_batch", json={"patients": patients}, headers=auth, timeout=60
    ).json()
    port = free_port()
    with running_server(
        port, {"BENTOML_HOME": str(bentoml_home), "SPINECAST_INLINE_MODEL": "1"}
    ) as proc:
        inline = f"http://127.0.0.1:{port}"
        answers = [
            httpx.post(inline + "/predict", json={"patient": p}, timeout=60).json()
            for p in patients
        ]
        explained = httpx.post(inline + "/explain", json={"patient": patients[0]}, timeout=60)
        batch = httpx.post(inline + "/predict_batch", json={"patients": patients}, timeout=60)
        commands = [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(True)]
        metrics = httpx.get(inline + "/metrics").text
    assert answers == two_hops
    assert explained.status_code == 200 and explained.json()["explanation"]["fields"]
    assert batch.json() == two_hop_batch
    # one service process: no model worker of its own
    assert any("--service-name spinecast" in c for c in commands)
    assert not any("spinecast_model" in c for c in commands)
    assert "spinecast_sentence_cache_hits" in metrics


def test_the_inline_model_refuses_more_than_one_worker(monkeypatch):
    monkeypatch.setenv("SPINECAST_INLINE_MODEL", "1")
    monkeypatch.setenv("SPINECAST_WORKERS", "2")
    with pytest.raises(ValueError, match="SPINECAST_INLINE_MODEL: .*needs SPINECAST_WORKERS=1"):
        load()

"""Load: 30 s at concurrency 32 with 10 % invalid requests after 10 s of warm-up, against a real server.
(The 60 s, concurrency-64 run on the real model, with its memory-growth figure, is `benchmarks/load.py`;
at this test's ~50 requests/s on the tiny model the service's memory still grows 11-16 %: open, issue 6.)"""

import asyncio

import pytest

from tools.demo import free_port, running_server
from tools.loadtest import cohort_patients, run


@pytest.mark.slow
def test_load_with_invalid_requests_mixed_in(bentoml_home, small_cohort):
    port = free_port()
    with running_server(port, {"BENTOML_HOME": str(bentoml_home)}):
        patients = cohort_patients(small_cohort / "cohort.parquet", 100)
        result = asyncio.run(
            run(f"http://127.0.0.1:{port}", patients, seconds=30, concurrency=32, invalid=0.1)
        )
    assert result["5xx"] == 0 and result["other"] == 0, result["unexpected"]
    assert (
        result["valid"] > 0 and result["valid_correct"] == result["valid"]
    )  # every valid request, right answer
    assert result["invalid"] > 0 and result["invalid_400"] == result["invalid"]

"""Schema fuzzing: schemathesis against the running service's own OpenAPI document."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_no_generated_request_gets_a_5xx_or_an_off_schema_answer(server, tmp_path):
    """At least 1,000 generated cases over every operation (examples, coverage and fuzzing phases):
    no 5xx, and every answer matches the response schema the service publishes."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server[0]}/docs.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "100",
            "--generation-deterministic",
            "--header",
            f"Authorization: Bearer {server[2]}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )  # its cache
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert done.returncode == 0 and summary, done.stdout[-3000:]
    generated, passed = map(int, summary.groups())
    assert generated >= 1000 and passed == generated

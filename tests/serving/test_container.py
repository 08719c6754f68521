"""The OCI image, for real: built with buildah from the Bento, serving /predict from inside the
image. Marked `container` (minutes, root, Debian and package-index access): `make test` runs it,
and `make container-test` runs it alone."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tools.demo import free_port

pytestmark = pytest.mark.container


def test_image_builds_without_torch_and_answers_predict(bentoml_home, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    subprocess.run(
        [sys.executable, "-m", "tools.bento", "--stage", str(tmp_path / "stage")],
        env=env,
        check=True,
        capture_output=True,
    )
    tag = "spinecast:container-test"
    result = tmp_path / "built.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.container",
            "build",
            "--tag",
            tag,
            "--out",
            str(result),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    built = json.loads(result.read_text())
    assert built["torch_in_image"] is False

    from tools.container import running

    port = free_port()
    with running(tag, port, log=tmp_path / "container.log"):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            timeout=60,
            json={"patient": {"patient_id": "C-1", "age": 61, "sex": "male"}},
        )
    assert answer.status_code == 200, (tmp_path / "container.log").read_text()[-2000:]
    assert answer.json()["patient_id"] == "C-1" and len(answer.json()["outcomes"]) == 4
    assert not _serving_the_bento()  # the container's workers ended with it


def _serving_the_bento() -> list[str]:
    """The processes still serving the image's Bento (its path inside the image)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and "/home/bentoml/bento" in cmd:
            found.append(cmd)
    return found

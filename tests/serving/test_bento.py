"""`make bento`: the Bento holds the serving code and the model, and nothing of torch or
training."""

import os
import subprocess
import sys

import yaml


def test_bento_builds_without_torch_or_training_code(bentoml_home, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    done = subprocess.run(
        [sys.executable, "-m", "tools.bento", "--stage", str(tmp_path / "stage")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    name, version = done.stdout.strip().splitlines()[-1].split(":")
    bento = bentoml_home / "bentos" / name / version
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert "onnxruntime==" in requirements and "bentoml==1.4.40" in requirements
    assert not any(
        line.startswith(("torch", "lightning", "transformers"))
        for line in requirements.splitlines()
    )
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    # every module the service imports, however deep (the Bento once missed datasets/decision.py)
    assert {
        "spinecast/serving/service.py",
        "spinecast/serving/predictor.py",
        "spinecast/serving/edge.py",
        "spinecast/serving/capacity.py",
        "spinecast/datasets/decision.py",
    } <= sources
    assert (bento / "src" / "spinecast" / "serving" / "ui" / "index.html").is_file()  # the /ui page
    assert not any(
        s.startswith(("spinecast/training", "training/", "spinecast/datasets/synth"))
        for s in sources
    )
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    models = {m["tag"] for s in manifest["services"] for m in s["models"]}
    assert models and all(tag.startswith("spinecast:spinecast-") for tag in models)
    assert (bento / "env" / "docker" / "Dockerfile").is_file()

"""Shared by the serving tests: a tiny trained checkpoint, its exported bundle, a BentoML store."""

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spinecast.cli import main

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(scope="session")
def checkpoint(small_cohort, tmp_path_factory, tiny_bert) -> Path:
    """Two epochs of the default architecture (FT-Transformer, attention fusion), tiny sizes."""
    root = tmp_path_factory.mktemp("export_run")
    args = [
        "train",
        "--config",
        str(CONFIGS / "default.yaml"),
        "--data.train_path",
        str(small_cohort / "cohort.parquet"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--model.config.text.pretrained",
        tiny_bert,
        "--model.config.dim",
        "32",
        "--model.config.image.backbone",
        "small_cnn",
    ]
    assert main(args) == 0
    return next(root.rglob("last.ckpt"))


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(out), "--eval-rows", "120"]) == 0
    return out


@pytest.fixture(scope="session")
def bentoml_home(checkpoint, tmp_path_factory) -> Path:
    """A BentoML home holding the exported model as `spinecast:<version>`, by `export --bentoml`."""
    home = tmp_path_factory.mktemp("bentoml_home")
    out = tmp_path_factory.mktemp("bento_bundle")
    card = tmp_path_factory.mktemp("model_card") / "MODEL_CARD.md"
    card.write_text("# SpineCast model card\n\nA tiny test model.\n")
    spinecast = Path(sys.executable).with_name("spinecast")
    subprocess.run(
        [
            str(spinecast),
            "export",
            "--ckpt",
            str(checkpoint),
            "--out",
            str(out),
            "--eval-rows",
            "80",
            "--model-card",
            str(card),
            "--bentoml",
        ],
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    assert (home / "models" / "spinecast" / "latest").is_file()
    return home


class FhirStub(ThreadingHTTPServer):
    """A FHIR server for CDS Hooks' fhirServer: `answers` maps a path (query included) to
    (status, headers, body); every GET is recorded in `seen` as (path, Authorization header)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _FhirHandler)
        self.answers: dict[str, tuple[int, dict, bytes]] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.base = f"http://127.0.0.1:{self.server_port}"


class _FhirHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.answers.get(self.path, (404, {}, b"{}"))
        self.send_response(status)
        for name, value in {"Content-Type": "application/fhir+json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def fhir_stub():
    stub = FhirStub()
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    yield stub
    stub.shutdown()


@pytest.fixture(scope="session")
def server(bentoml_home, tmp_path_factory, fhir_stub):
    """`bentoml serve` of the tiny model with an API key: (base URL, log file of all its output,
    key)."""
    from tools.demo import free_port, running_server

    log = tmp_path_factory.mktemp("server") / "server.log"
    # Its own BentoML home (the same model store): BentoML keeps the Prometheus files of a serve in
    # $BENTOML_HOME/prometheus_multiproc_dir and empties it when a serve starts, so the servers
    # other tests start would otherwise wipe this one's /metrics counters mid-session.
    home = tmp_path_factory.mktemp("server_home")
    (home / "models").symlink_to(bentoml_home / "models")
    port = free_port()
    key = "test-key-123"
    env = {
        "BENTOML_HOME": str(home),
        "SPINECAST_API_KEY": key,
        "SPINECAST_EXPLAIN_MAX_SENTENCES": "12",
        "SPINECAST_CDS_FHIR_SERVERS": f"{fhir_stub.base}/fhir",  # the only fhirServer it reads
    }
    with running_server(port, env, log=log):
        yield f"http://127.0.0.1:{port}", log, key

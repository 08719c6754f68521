"""`make bento`: build the Bento from the serving code and the model in the BentoML store.

    .venv/bin/python -m spinecast.serving.bento [--stage build/bento]

Copies exactly the modules serving imports into a staging folder, in the `spinecast.*` layout the
service imports (the repository maps folders to packages; a Bento copies files), with
`bentofile.yaml`, and runs `bentoml build` there. Training code, the generator and torch stay out.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # repository folder -> package folder in the Bento, and the modules serving needs
    "spinecast": ("spinecast", ("__init__.py",)),
    "datasets": (
        "spinecast/datasets",
        (
            "__init__.py",
            "schema.py",
            "io.py",
            "features.py",
            "images.py",
            "inputs.py",
            "sentences.py",
        ),
    ),
    "serving": (
        "spinecast/serving",
        ("__init__.py", "predictor.py", "schemas.py", "service.py", "batch.py"),
    ),
}


def stage(dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    for folder, (package, modules) in SOURCES.items():
        (dst / package).mkdir(parents=True, exist_ok=True)
        for module in modules:
            shutil.copy2(ROOT / folder / module, dst / package / module)
    shutil.copy2(ROOT / "bentofile.yaml", dst / "bentofile.yaml")
    return dst


def build(dst: Path) -> str:
    import bentoml

    stage(dst)
    bento = bentoml.bentos.build_bentofile(
        bentofile=str(dst / "bentofile.yaml"), build_ctx=str(dst)
    )
    return str(bento.tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "bento")
    print(build(parser.parse_args().stage))


if __name__ == "__main__":
    main()

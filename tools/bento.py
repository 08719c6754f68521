"""`make bento`: build the Bento from the serving code and the model in the BentoML store.

    .venv/bin/python -m tools.bento [--stage build/bento]

Copies exactly the modules serving imports (`modules`: followed through the imports from the
service and the batch CLI) into a staging folder, in the `spinecast.*` layout the service imports
(the repository maps folders to packages; a Bento copies files), with the `DATA` folders (the /ui
page) and `bentofile.yaml`, and runs `bentoml build` there. Training code, the generator and torch
stay out.
"""

from __future__ import annotations

import argparse
import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "spinecast": "spinecast",
    "spinecast.datasets": "datasets",
    "spinecast.serving": "serving",
}
ENTRY = ("spinecast.serving.service", "spinecast.serving.batch")
OPTIONAL = {"spinecast.serving.distributed"}  # the `ray` extra: not in the Bento
DATA = ("serving/ui",)  # folders of files the service reads (the /ui page), copied whole


def _path(module: str) -> Path | None:
    """The repository file of a `spinecast.*` module the Bento may hold (None: not one of them)."""
    package = max(
        (p for p in PACKAGES if module == p or module.startswith(p + ".")), key=len, default=None
    )
    if package is None:
        return None
    rest = module[len(package) :].lstrip(".").split(".") if module != package else []
    base = ROOT / PACKAGES[package] / Path(*rest) if rest else ROOT / PACKAGES[package]
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path, module: str) -> set[str]:
    """`spinecast.*` modules that `path` imports anywhere in its body (absolute and relative)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {base, *(f"{base}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("spinecast")}


def modules() -> dict[str, Path]:
    """Every module serving needs, followed from the service and the batch CLI through their
    imports (and their packages' `__init__`), so that the Bento cannot miss one that is added."""
    todo, out = list(ENTRY), {}
    while todo:
        module = todo.pop()
        path = _path(module)
        if module in out or module in OPTIONAL or path is None:
            continue
        out[module] = path
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        todo += [*imported(path, module), *parents]
    return out


def stage(dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    for path in modules().values():
        folder = next(f for f in PACKAGES.values() if path.is_relative_to(ROOT / f))
        package = "spinecast" if folder == "spinecast" else f"spinecast/{folder}"
        target = dst / package / path.relative_to(ROOT / folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for folder in DATA:
        shutil.copytree(ROOT / folder, dst / "spinecast" / folder)
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

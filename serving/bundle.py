"""The model bundle, one folder: its file names, its typed card, writing it and verifying it.

    card = read(folder)            # SHA256SUMS checked, card.json parsed into a `Card`
    write(folder, card)            # card.json, then SHA256SUMS over every file in the folder
    model_card(folder)             # MODEL_CARD.md (TRIPOD+AI) as text, None when absent

Export writes a bundle (`spinecast.training.export`), the predictor, the service and the BentoML
store read one; this module is the format both sides share. Torch-free: it ships in the Bento.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

MODEL = "model.onnx"  # the patient graph (a bundle of format 1: the whole network)
SENTENCES = "sentences.onnx"  # the sentence graph (the note's, and the report's when shared)
SENTENCES_REPORT = "sentences_report.onnx"  # the report's, when its encoder has its own weights
IMAGE = "image.onnx"  # the image graph (key image -> its embedding)
TOKENIZER = "tokenizer.json"
FEATURES = "features.json"
CARD = "card.json"
CHECKSUMS = "SHA256SUMS"
MODEL_CARD = "MODEL_CARD.md"  # optional: the TRIPOD+AI card `spinecast evaluate` wrote
REQUIRED = (MODEL, TOKENIZER, FEATURES, CARD)


class BundleError(RuntimeError):
    """A model bundle that is missing, incomplete or altered; the message says which file."""


class Variant(BaseModel):
    """One servable set of graphs and how it scored on held-out records at export: `file` the
    patient graph, `sentences` each text's sentence graph (None: a format-1 bundle, whose one
    graph runs the whole network), `image` the image graph (None: the patient graph reads the
    image itself, as bundles exported before the image graph do)."""

    model_config = ConfigDict(extra="allow")
    file: str
    sentences: dict[str, str] | None = None
    image: str | None = None
    val_auroc: float | None = None
    val_rows: int | None = None
    auroc_drop: float | None = None


class Inputs(BaseModel):
    """The input limits the graph was exported for (the predictor encodes records to them)."""

    model_config = ConfigDict(extra="allow")
    max_sentences: int
    max_tokens: int
    image_size: int
    max_text_chars: int


class Card(BaseModel):
    """card.json: version and provenance, the encoding limits, the decision rule, the variants
    and which one is served, and the export's parity and accuracy checks. Keys a later release
    adds are kept (`extra="allow"`), so an older reader still loads a newer bundle."""

    model_config = ConfigDict(extra="allow")
    name: str = "spinecast"
    version: str
    created: str
    git_commit: str | None = None
    checkpoint: str
    training_data: dict[str, Any]
    config: dict[str, Any]
    modalities: list[str]
    treatments: list[str]
    outputs: dict[str, str]
    decision: dict[str, Any] | None = None
    inputs: Inputs
    onnx: dict[str, Any]
    variants: dict[str, Variant]
    serve: str
    parity: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _served_variant_exists(self) -> Card:
        if self.serve not in self.variants:
            raise ValueError(
                f"serve {self.serve!r} is not one of the variants {list(self.variants)}"
            )
        return self


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write(folder: Path, card: Card) -> None:
    """Write card.json, then SHA256SUMS over every file in `folder`."""
    (folder / CARD).write_text(json.dumps(card.model_dump(mode="json"), indent=1) + "\n")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    (folder / CHECKSUMS).write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))


def verify(folder: str | Path) -> Path:
    """Check that the bundle holds every required file and that every file matches SHA256SUMS."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder}: no such folder")
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise BundleError(
            f"model bundle {folder}: {CHECKSUMS} is missing; the bundle cannot be verified"
        )
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise BundleError(f"model bundle {folder}: {CHECKSUMS} has a malformed line")
        listed[name] = digest
    for name in REQUIRED:
        if name not in listed:
            raise BundleError(f"model bundle {folder}: {name} is not listed in {CHECKSUMS}")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"model bundle {folder}: {name} is missing")
        if sha256(path) != digest:
            raise BundleError(
                f"model bundle {folder}: {name} does not match its SHA-256 in {CHECKSUMS} "
                "(altered or truncated); refusing to load it"
            )
    return folder


def model_card(folder: str | Path) -> str | None:
    """The bundle's TRIPOD+AI model card (Markdown), None when it carries none. `verify` checks
    it against SHA256SUMS with every other file when the bundle is loaded."""
    path = Path(folder) / MODEL_CARD
    return path.read_text() if path.is_file() else None


def read(folder: str | Path) -> Card:
    """The verified bundle's card."""
    folder = verify(folder)
    try:
        return Card.model_validate_json((folder / CARD).read_text())
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in err.errors()
        )
        raise BundleError(
            f"model bundle {folder}: {CARD} is not a valid card ({problems})"
        ) from None

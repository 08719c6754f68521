"""`spinecast export`: a checkpoint -> the model bundle that ONNX Runtime serves without torch.

    spinecast export --ckpt best.ckpt --out artifacts/bundle [--data held_out.parquet] \\
        [--optimize] [--quantize int8] [--bentoml] [--model-card eval/MODEL_CARD.md]

The bundle (one folder): `sentences.onnx` (the sentence graph: distinct sentences -> embeddings;
`sentences_report.onnx` too when the report has its own encoder), `image.onnx` (the image graph:
key images -> embeddings), `model.onnx` (the patient graph: the embeddings and the fields through
the fusion, the four treatment heads and the temperature: calibrated probabilities come out),
`tokenizer.json`, `features.json` (the fitted encoding of the structured fields), `card.json`
(version, provenance, training data, validation metrics of each variant, input limits, the parity
result), with `--model-card` the TRIPOD+AI `MODEL_CARD.md` that
`spinecast evaluate` wrote, and `SHA256SUMS` over them all.

Before it finishes, the command runs the bundle through the torch-free predictor on held-out records
(the checkpoint's validation split unless `--data` is given), with another batch size and other
sentence and token lengths than the trace, and fails if any probability differs from PyTorch's by
more than 1e-4. `--quantize int8` adds two INT8 variants (quantize.py): `*.int8.onnx` (dynamic) and
`*.int8.static.onnx` (static QDQ, calibrated on the held-out records); each is kept only if its
validation AUROC is within 0.005 of fp32's, the faster kept one (per patient, batch 1, cold) is
served, and the card records both; when neither is kept the command says so and fails. `--bentoml`
saves the finished bundle into the BentoML model store as `spinecast:<version>`, for the service.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from spinecast.datasets import TREATMENTS, load_cohort
from spinecast.datasets.inputs import MODALITIES, OUTPUTS, TEXTS, model_inputs
from spinecast.datasets.schema import COLUMN_BY_NAME, TREATMENT_INDEX
from spinecast.serving import bundle
from spinecast.serving.bundle import Card, Variant, sha256
from spinecast.serving.predictor import Predictor

from spinecast.metrics import observed_auroc

from .data import SplitError, recorded_split, split_cohort
from .graph import OPSET, optimize, to_onnx
from .inference import encode_for, load_module, predict
from .quantize import add_int8

PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export cannot be trusted (parity failed, quantization lost accuracy)."""


def held_out(ckpt: Path, data: Path | None) -> tuple[pd.DataFrame, dict]:
    """Labeled records the model did not train on (the checkpoint's validation split, or `data`),
    and a PHI-free summary of the training split."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp, record = saved.get("datamodule_hyper_parameters"), recorded_split(saved)
    summary = {}
    if hp is not None and record is None and data is None:
        raise ExportError(
            "the checkpoint records no split by patient (it predates that record); "
            "pass held-out labeled records with --data"
        )
    if hp is not None and Path(hp["train_path"]).is_file() and record is not None:
        try:
            frames = split_cohort(**hp, record=record)
        except SplitError as err:
            raise ExportError(str(err)) from None
        train = frames["train"]
        summary = {
            "file": Path(hp["train_path"]).name,
            "patients": len(train),
            "satisfied_rate": round(float(train["satisfied"].dropna().astype(float).mean()), 4),
            "treatments": {t: int((train["treatment"] == t).sum()) for t in TREATMENTS},
        }
        if data is None:
            return frames["val"], summary
    if data is None:
        raise ExportError(
            "the checkpoint's training cohort is not at its recorded path; "
            "pass held-out labeled records with --data"
        )
    return load_cohort(data, training=True), summary


def auroc(frame: pd.DataFrame, p_satisfied: np.ndarray) -> float | None:
    """AUROC of `satisfied` against the predicted P(satisfied) of the treatment each patient got."""
    return observed_auroc(
        p_satisfied, frame["treatment"].map(TREATMENT_INDEX).to_numpy(), frame["satisfied"]
    )


def distillation(student, frame: pd.DataFrame, student_auroc: float | None) -> dict:
    """The teacher of a distilled model and the accuracy gap, on the same held-out records."""
    teacher = Path(student.hparams["teacher"])
    found = {"teacher": teacher.name, "distill_weight": student.hparams["distill_weight"]}
    if not teacher.is_file():
        return found | {
            "teacher_val_auroc": None,
            "note": "teacher checkpoint not at its recorded path",
        }
    module = load_module(teacher)
    teacher_auroc = auroc(frame, predict(module, encode_for(module, frame))["p_satisfied"])
    gap = None if None in (teacher_auroc, student_auroc) else teacher_auroc - student_auroc
    return found | {
        "teacher_val_auroc": teacher_auroc,
        "val_auroc": student_auroc,
        "auroc_gap": gap,
        "val_rows": len(frame),
        "teacher_config": module.hparams["config"],
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def export(
    ckpt: Path,
    out: Path,
    data: Path | None = None,
    optimize_graph: bool = False,
    quantize_int8: bool = False,
    eval_rows: int = 512,
    parity_rows: int = 64,
    max_auroc_drop: float = 0.005,
    model_card: Path | None = None,
) -> Card:
    """Write the bundle to `out`; return its card. ExportError when parity or accuracy fail."""
    if model_card is not None and not Path(model_card).is_file():
        raise ExportError(f"--model-card {model_card}: no such file")
    module = load_module(ckpt)
    frame, training_data = held_out(Path(ckpt), data)
    frame = frame.iloc[: max(eval_rows, parity_rows + 2)]
    arrays = encode_for(module, frame)

    fused = _write_graph(module, arrays, out, optimize_graph)
    if model_card is not None:  # listed in SHA256SUMS by every bundle.write below
        (out / bundle.MODEL_CARD).write_bytes(Path(model_card).read_bytes())
    card = _card(module, Path(ckpt).name, training_data, out, fused)
    bundle.write(out, card)

    reference = predict(module, arrays)  # PyTorch, eval mode, full-width windows
    card.parity = _parity(out, arrays, reference, parity_rows)
    if not card.parity["passed"]:
        bundle.write(out, card)
        diff = card.parity["max_abs_diff_probabilities"]
        shown = f"by {diff:.2e}" if diff != "non-finite" else "(NaN in a probability)"
        raise ExportError(
            f"ONNX Runtime differs from PyTorch {shown} "
            f"(tolerance {PARITY_TOLERANCE:.0e} per probability); "
            f"the bundle in {out} must not be served"
        )

    fp32_auroc = auroc(frame, reference["p_satisfied"])
    card.variants["fp32"] = card.variants["fp32"].model_copy(
        update={"val_auroc": fp32_auroc, "val_rows": len(frame)}
    )
    if module.hparams.get("teacher"):
        card.distillation = distillation(module, frame, fp32_auroc)
    if quantize_int8:
        _add_int8(out, card, frame, arrays, max_auroc_drop)
    bundle.write(out, card)
    return card


def _write_graph(
    module, arrays: dict[str, np.ndarray], out: Path, optimize_graph: bool
) -> dict | None:
    """The tokenizer, the feature encoding and the traced graph; with `optimize_graph` fused,
    returning the fused operators' counts."""
    from spinecast.datasets.sentences import load_tokenizer

    from .config import resolve_pretrained

    out.mkdir(parents=True, exist_ok=True)
    for path in [*out.glob("*.onnx"), out / bundle.CHECKSUMS, out / bundle.MODEL_CARD]:
        path.unlink(missing_ok=True)
    text = module.net.config.text
    load_tokenizer(resolve_pretrained(text.pretrained)).save(str(out / bundle.TOKENIZER))
    encoding = module.feature_encoding.to_dict()
    (out / bundle.FEATURES).write_text(json.dumps(encoding, indent=1) + "\n")
    # traced on two records: the parity check runs others, other batch sizes and lengths
    names = graph_names(module.net)
    to_onnx(module.net, model_inputs({k: v[:2] for k, v in arrays.items()}), out, names)
    if not optimize_graph:
        return None
    texts = [names[k] for k in ("patient", "note", "report")]  # no transformer in the image graph
    return {name: optimize(out / name, module.net) for name in dict.fromkeys(texts)}


def _card(module, checkpoint: str, training_data: dict, out: Path, fused: dict | None) -> Card:
    net = module.net
    text = net.config.text
    created = datetime.now(UTC)
    return Card(
        version=f"spinecast-{created:%Y%m%d}-{sha256(out / bundle.MODEL)[:6]}",
        created=created.isoformat(timespec="seconds"),
        git_commit=_git_commit(),
        checkpoint=checkpoint,
        training_data=training_data,
        config=module.hparams["config"],
        modalities=list(MODALITIES),
        treatments=list(TREATMENTS),
        outputs={k: "(batch, 4) in `treatments` order" for k in OUTPUTS}
        | {"p_satisfied_members": f"(batch, {net.config.members}, 4): each member's p_satisfied"},
        decision=module.decision_rule.to_dict(),
        inputs={
            "max_sentences": text.max_sentences,
            "max_tokens": text.max_tokens,
            "image_size": net.config.image.size,
            "max_text_chars": COLUMN_BY_NAME["clinical_note"].max_chars,
        },
        onnx={"opset": OPSET, "graph_fusion": fused},
        variants={"fp32": _variant(graph_names(net))},
        serve="fp32",
    )


def _parity(out: Path, arrays: dict, reference: dict, rows: int) -> dict:
    """ONNX Runtime through the torch-free predictor vs PyTorch on records the trace did not see,
    at another batch size; NaN anywhere (either runtime) is a failure."""
    held = {k: v[2 : 2 + rows] for k, v in arrays.items()}
    onnx_out = Predictor(out, "fp32", batch_size=7).run(held)
    diff = max(
        float(np.nan_to_num(np.abs(onnx_out[k] - reference[k][2 : 2 + rows]), nan=np.inf).max())
        for k in ("p_satisfied", "p_mcid", "p_satisfied_members", "propensity")
    )
    return {
        "max_abs_diff_probabilities": diff if np.isfinite(diff) else "non-finite",
        "tolerance": PARITY_TOLERANCE,
        "records": len(held["numeric"]),
        "batch_size": 7,
        "trace_batch_size": 2,
        "passed": diff <= PARITY_TOLERANCE,  # False for NaN
    }


def _add_int8(out: Path, card: Card, frame, arrays: dict, max_auroc_drop: float) -> None:
    """Both INT8 variants (quantize.py) behind the AUROC guard; the faster kept one is served."""
    refused = add_int8(out, card, arrays, lambda p: auroc(frame, p), max_auroc_drop)
    if refused:
        raise ExportError(
            f"refused the INT8 models ({'; '.join(refused)}); "
            f"the fp32 bundle in {out} is complete and verified"
        )


def graph_names(net) -> dict[str, str]:
    """The bundle's graph files: the patient graph, the image graph, and each text's sentence
    graph (one file when the note and the report share their encoder)."""
    shared = net.note.sentences is net.report.sentences
    report = bundle.SENTENCES if shared else bundle.SENTENCES_REPORT
    return {
        "patient": bundle.MODEL,
        "image": bundle.IMAGE,
        "note": bundle.SENTENCES,
        "report": report,
    }


def _variant(names: dict[str, str], **scores) -> Variant:
    texts = {k: names[k] for k, _ in TEXTS}
    return Variant(file=names["patient"], sentences=texts, image=names["image"], **scores)


def save_to_bentoml(out: Path) -> str:
    """Copy a verified bundle into the BentoML model store as `spinecast:<version>`; return the tag.
    The bundle's SHA256SUMS travel with it, so the service verifies what it loads."""
    import shutil

    import bentoml
    from bentoml.exceptions import NotFound

    card = bundle.read(out)
    tag = f"spinecast:{card.version}"
    try:
        bentoml.models.delete(tag)  # a re-export of the same model replaces it
    except NotFound:
        pass
    metadata = {
        "serve": card.serve,
        "created": card.created,
        "git_commit": card.git_commit or "",
        **{f"val_auroc_{k}": v.val_auroc for k, v in card.variants.items()},
    }
    with bentoml.models.create(
        tag, labels={"framework": "onnxruntime", "project": "spinecast"}, metadata=metadata
    ) as model:
        for path in out.iterdir():
            shutil.copy2(path, model.path_of(path.name))
    return tag


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spinecast export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="labeled held-out records for parity and accuracy (default: the validation split)",
    )
    parser.add_argument(
        "--optimize", action="store_true", help="ONNX Runtime transformer graph fusion"
    )
    faster = "add the INT8 variants (dynamic, static QDQ); serve the faster one within the guard"
    parser.add_argument("--quantize", choices=["int8"], default=None, help=faster)
    parser.add_argument(
        "--max-auroc-drop",
        type=float,
        default=0.005,
        help="refuse a quantized model that loses more validation AUROC than this",
    )
    parser.add_argument(
        "--eval-rows", type=int, default=512, help="held-out records scored per variant"
    )
    parser.add_argument(
        "--bentoml", action="store_true", help="also save the bundle in the BentoML model store"
    )
    parser.add_argument("--model-card", type=Path, help="MODEL_CARD.md to carry in the bundle")
    args = parser.parse_args(argv)
    try:
        card = export(
            args.ckpt,
            args.out,
            args.data,
            args.optimize,
            args.quantize == "int8",
            args.eval_rows,
            max_auroc_drop=args.max_auroc_drop,
            model_card=args.model_card,
        )
    except ExportError as err:
        print(f"spinecast export: {err}")
        return 1
    print(card.model_dump_json(include={"version", "variants", "serve", "parity"}, indent=1))
    print(f"Bundle: {args.out}")
    if args.bentoml:
        print(f"BentoML model: {save_to_bentoml(args.out)}")
    return 0

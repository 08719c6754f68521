"""`spinecast export`: a checkpoint -> the model bundle that ONNX Runtime serves without torch.

    spinecast export --ckpt best.ckpt --out artifacts/bundle [--data held_out.parquet] \\
        [--optimize] [--quantize int8] [--bentoml]

The bundle (one folder): `model.onnx` (every encoder, the fusion, the four treatment heads and the
temperature: calibrated probabilities come out), `tokenizer.json`, `features.json` (the fitted
encoding of the structured fields), `card.json` (version, provenance, training data, validation
metrics of each variant, input limits, the parity result) and `SHA256SUMS`.

Before it finishes, the command runs the bundle through the torch-free predictor on held-out records
(the checkpoint's validation split unless `--data` is given), with another batch size and other
sentence and token lengths than the trace, and fails if any probability differs from PyTorch's by
more than 1e-4. `--quantize int8` adds `model.int8.onnx` (dynamic INT8) and serves it only if its
validation AUROC is within 0.005 of fp32's; otherwise the command says so and fails. `--bentoml`
saves the finished bundle into the BentoML model store as `spinecast:<version>`, for the service.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from spinecast.datasets import TREATMENTS, load_cohort
from spinecast.datasets.inputs import INPUTS, MODALITIES, OUTPUTS, model_inputs
from spinecast.datasets.schema import COLUMN_BY_NAME, TREATMENT_INDEX
from spinecast.serving import bundle
from spinecast.serving.bundle import Card, Variant, sha256
from spinecast.serving.predictor import Predictor
from torch import nn

from spinecast.metrics import observed_auroc

from .data import SplitError, recorded_split, split_cohort
from .inference import encode_for, load_module, predict

OPSET = 17
PARITY_TOLERANCE = 1e-4
AXES = {
    "numeric": {0: "batch"},
    "numeric_missing": {0: "batch"},
    "categorical": {0: "batch"},
    "note_ids": {0: "batch", 1: "note_sentences", 2: "note_tokens"},
    "note_mask": {0: "batch", 1: "note_sentences", 2: "note_tokens"},
    "report_ids": {0: "batch", 1: "report_sentences", 2: "report_tokens"},
    "report_mask": {0: "batch", 1: "report_sentences", 2: "report_tokens"},
    "image": {0: "batch"},
    "image_present": {0: "batch"},
    **{k: {0: "batch"} for k in OUTPUTS},
}


class ExportError(RuntimeError):
    """The export cannot be trusted (parity failed, quantization lost accuracy)."""


class _Calibrated(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs):
        return self.net.probabilities(*inputs)


def to_onnx(net: nn.Module, example: dict[str, np.ndarray], path: Path) -> None:
    """Trace the calibrated network on `example` (model inputs) into `path`; dynamic batch, sentence
    and token axes. A text backbone the graph runs as is (not a BERT, see
    `SentenceEncoder._exported`) switches to plain (eager) attention for the trace."""
    net = copy.deepcopy(net).eval().float()
    for backbone in {
        id(m): m for m in (net.note.sentences.backbone, net.report.sentences.backbone)
    }.values():
        backbone.config._attn_implementation = "eager"
    args = tuple(torch.from_numpy(example[k]) for k in INPUTS)
    # The tracer warns about shape-dependent Python in transformers' mask helpers; the parity check
    # on other batch sizes and lengths is what proves the graph right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Calibrated(net),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=AXES,
        )
    onnx.checker.check_model(str(path))


def optimize(path: Path, net: nn.Module) -> dict:
    """ONNX Runtime's transformer graph fusion (layer norm, skip layer norm, GELU), in place."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = net.note.sentences.backbone.config
    # Symbolic shape inference cannot compare the dynamic axes with the sentence dedup's output
    # sizes and warns for each; the fused graph is checked against PyTorch afterwards.
    for name in ("onnxruntime.tools.symbolic_shape_infer", "symbolic_shape_infer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model = optimize_model(
        str(path),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=1,
    )
    model.save_model_to_file(str(path))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused ops (com.microsoft domain) defeat ONNX shape inference; their tensors are float. The
    # quantizer warns on the root logger for each tensor it cannot type (the float ones covered
    # above, the graph's integer index tensors it has no use for) and suggests its pre-processing
    # (shape inference again): expected here, so hushed.
    def typed(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            (
                "Failed to infer data type",
                "Inference failed or unsupported type",
                "Please consider to run pre-processing",
            )
        )

    logging.getLogger().addFilter(typed)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(typed)


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
) -> Card:
    """Write the bundle to `out`; return its card. ExportError when parity or accuracy fail."""
    module = load_module(ckpt)
    net, text = module.net, module.net.config.text
    frame, training_data = held_out(Path(ckpt), data)
    frame = frame.iloc[: max(eval_rows, parity_rows + 2)]
    arrays = encode_for(module, frame)

    out.mkdir(parents=True, exist_ok=True)
    for name in (bundle.MODEL, bundle.MODEL_INT8, bundle.CHECKSUMS):
        (out / name).unlink(missing_ok=True)
    from spinecast.datasets.sentences import load_tokenizer

    from .config import resolve_pretrained

    load_tokenizer(resolve_pretrained(text.pretrained)).save(str(out / bundle.TOKENIZER))
    (out / bundle.FEATURES).write_text(
        json.dumps(module.feature_encoding.to_dict(), indent=1) + "\n"
    )
    trace = {
        k: v[:2] for k, v in arrays.items()
    }  # parity below runs other records, batch sizes and lengths
    to_onnx(net, model_inputs(trace), out / bundle.MODEL)
    fused = optimize(out / bundle.MODEL, net) if optimize_graph else None

    created = datetime.now(UTC)
    card = Card(
        version=f"spinecast-{created:%Y%m%d}-{sha256(out / bundle.MODEL)[:6]}",
        created=created.isoformat(timespec="seconds"),
        git_commit=_git_commit(),
        checkpoint=Path(ckpt).name,
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
        variants={"fp32": Variant(file=bundle.MODEL)},
        serve="fp32",
    )
    bundle.write(out, card)

    reference = predict(module, arrays)  # PyTorch, eval mode, full-width windows
    held = {k: v[2 : 2 + parity_rows] for k, v in arrays.items()}
    parity_predictor = Predictor(out, "fp32", batch_size=7)
    onnx_out = parity_predictor.run(held)
    # NaN anywhere (either runtime) counts as a failure: `nan > tolerance` is False.
    diff = max(
        float(
            np.nan_to_num(np.abs(onnx_out[k] - reference[k][2 : 2 + parity_rows]), nan=np.inf).max()
        )
        for k in ("p_satisfied", "p_mcid", "p_satisfied_members", "propensity")
    )
    card.parity = {
        "max_abs_diff_probabilities": diff if np.isfinite(diff) else "non-finite",
        "tolerance": PARITY_TOLERANCE,
        "records": len(held["numeric"]),
        "batch_size": 7,
        "trace_batch_size": 2,
        "passed": diff <= PARITY_TOLERANCE,
    }
    if not diff <= PARITY_TOLERANCE:
        bundle.write(out, card)
        shown = f"by {diff:.2e}" if np.isfinite(diff) else "(NaN in a probability)"
        raise ExportError(
            f"ONNX Runtime differs from PyTorch {shown} "
            f"(tolerance {PARITY_TOLERANCE:.0e} per probability); "
            f"the bundle in {out} must not be served"
        )

    fp32_auroc = auroc(frame, reference["p_satisfied"])
    card.variants["fp32"] = Variant(file=bundle.MODEL, val_auroc=fp32_auroc, val_rows=len(frame))
    if module.hparams.get("teacher"):
        card.distillation = distillation(module, frame, fp32_auroc)
    if quantize_int8:
        quantize(out / bundle.MODEL, out / bundle.MODEL_INT8)
        card.variants["int8"] = Variant(file=bundle.MODEL_INT8)
        bundle.write(out, card)
        int8 = Predictor(out, "int8").run(arrays)
        int8_auroc = auroc(frame, int8["p_satisfied"])
        drop = (
            (fp32_auroc - int8_auroc) if fp32_auroc is not None and int8_auroc is not None else None
        )
        card.variants["int8"] = Variant(
            file=bundle.MODEL_INT8, val_auroc=int8_auroc, val_rows=len(frame), auroc_drop=drop
        )
        if drop is None or drop > max_auroc_drop:
            (out / bundle.MODEL_INT8).unlink()
            del card.variants["int8"]
            bundle.write(out, card)
            shown = (
                "unknown (the held-out records hold a single class)"
                if drop is None
                else f"{drop:.4f}"
            )
            raise ExportError(
                f"refused the INT8 model: validation AUROC drop {shown} exceeds {max_auroc_drop}; "
                f"the fp32 bundle in {out} is complete and verified"
            )
        card.serve = "int8"
    bundle.write(out, card)
    return card


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
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="add a dynamic INT8 variant and serve it"
    )
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
        )
    except ExportError as err:
        print(f"spinecast export: {err}")
        return 1
    print(card.model_dump_json(include={"version", "variants", "serve", "parity"}, indent=1))
    print(f"Bundle: {args.out}")
    if args.bentoml:
        print(f"BentoML model: {save_to_bentoml(args.out)}")
    return 0

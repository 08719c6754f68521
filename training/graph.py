"""The network as three ONNX graphs: the sentence graph (token ids of distinct sentences -> their
embeddings: a plain trace of the Hugging Face encoder), the image graph (key images -> their
embeddings) and the patient graph (the sentence embeddings, the token ids for the word channel, the
structured fields and the image's embedding -> the calibrated outcomes). The predictor runs the
first only for sentences it has not seen, in groups of similar length, the second only for the
records that have an image, and the third once per batch. Every batch, sentence and token axis is
dynamic.
Also ONNX Runtime's transformer fusion (INT8 variants: `quantize.py`); `export.py` checks the
result against PyTorch before a bundle holds it."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from spinecast.datasets.inputs import OUTPUTS, PATIENT_INPUTS, TEXTS
from torch import nn

from .text import SentenceGraph

OPSET = 17
PATIENT_AXES = {
    "numeric": {0: "batch"},
    "numeric_missing": {0: "batch"},
    "categorical": {0: "batch"},
    **{
        f"{name}_{part}": {0: "batch", 1: f"{name}_sentences", 2: f"{name}_tokens"}
        for name, _ in TEXTS
        for part in ("ids", "mask")
    },
    **{f"{name}_emb": {0: "batch", 1: f"{name}_sentences"} for name, _ in TEXTS},
    "image_emb": {0: "batch"},
    "image_present": {0: "batch"},
    **{k: {0: "batch"} for k in OUTPUTS},
}
IMAGE_AXES = {"image": {0: "batch"}, "image_emb": {0: "batch"}}
SENTENCE_AXES = {
    "ids": {0: "sentences", 1: "tokens"},
    "mask": {0: "sentences", 1: "tokens"},
    "embedding": {0: "sentences"},
}


class _Patient(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs):
        return self.net.patient_probabilities(*inputs)


def sentence_encoders(net: nn.Module) -> dict[str, nn.Module]:
    """Text name -> its sentence encoder; one object for both when the weights are shared."""
    return {name: getattr(net, name).sentences for name, _ in TEXTS}


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, axes) -> None:
    # The tracer warns about shape-dependent Python in transformers' mask helpers; the parity check
    # on other batch sizes and lengths is what proves the graph right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
        )
    onnx.checker.check_model(str(path))


def to_onnx(
    net: nn.Module, example: dict[str, np.ndarray], folder: Path, names: dict[str, str]
) -> None:
    """Trace the calibrated network on `example` (model inputs of a few records) into `folder`:
    the patient graph as `names["patient"]`, the image encoder as `names["image"]` and each
    distinct sentence encoder as `names[text]` (the same file for both texts when their weights
    are shared). The backbones switch to plain (eager) attention for the trace."""
    net = copy.deepcopy(net).eval().float()
    encoders = sentence_encoders(net)
    for encoder in encoders.values():
        encoder.backbone.config._attn_implementation = "eager"
    tensors = {k: torch.from_numpy(v) for k, v in example.items()}
    with torch.no_grad():
        note_emb, report_emb = net.embed(
            *(tensors[k] for k in ("note_ids", "note_mask", "report_ids", "report_mask"))
        )
        image_emb = net.image(tensors["image"])
    tensors |= {"note_emb": note_emb, "report_emb": report_emb, "image_emb": image_emb}
    patient = tuple(tensors[k] for k in PATIENT_INPUTS)
    _export(
        _Patient(net), patient, folder / names["patient"], PATIENT_INPUTS, OUTPUTS, PATIENT_AXES
    )
    image = (tensors["image"],)
    _export(net.image, image, folder / names["image"], ("image",), ("image_emb",), IMAGE_AXES)
    done = set()
    for name, encoder in encoders.items():
        if names[name] in done:
            continue
        ids, mask = (tensors[f"{name}_{k}"].flatten(0, 1) for k in ("ids", "mask"))
        rows = mask.any(dim=1)
        ids, mask = (ids[rows], mask[rows]) if rows.any() else (ids[:1], mask[:1])
        _export(
            SentenceGraph(encoder),
            (ids, mask),
            folder / names[name],
            ("ids", "mask"),
            ("embedding",),
            SENTENCE_AXES,
        )
        done.add(names[name])


def optimize(path: Path, net: nn.Module) -> dict:
    """ONNX Runtime's transformer graph fusion (attention, layer norm, skip layer norm, GELU), in
    place; the counts of the fused operators."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = net.note.sentences.backbone.config
    # Symbolic shape inference cannot compare some dynamic axes and warns for each; the fused
    # graph is checked against PyTorch afterwards.
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

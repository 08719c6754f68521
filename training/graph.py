"""The network as an ONNX graph: the trace (every batch, sentence and token axis dynamic), ONNX
Runtime's transformer fusion and dynamic INT8 quantization. `export.py` checks the result against
PyTorch before a bundle holds it."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from spinecast.datasets.inputs import INPUTS, OUTPUTS
from torch import nn

OPSET = 17
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

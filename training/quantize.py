"""INT8 variants of a bundle's graphs, each behind the export's AUROC guard.

- `int8`: dynamic quantization (weights INT8; activations scaled per run from their own range);
- `int8_static`: static QDQ quantization (activation scales fixed at export, calibrated on the
  held-out records' own inputs to each graph: the distinct sentences for the sentence graph, their
  fp32 embeddings and the fields for the patient graph);
- `int8_text` (two-stage bundles): `int8`'s sentence graph before the fp32 patient graph. The
  text encoder's matrix products are where INT8 pays; a small patient graph can run slower in
  INT8 than in fp32 (its quantize/dequantize steps cost more than its small products save:
  the distilled student's patient graph, 4.1 vs 2.5 ms per patient, benchmarks/README.md).

Each is scored on the held-out records and timed per patient at batch 1 with nothing cached (the
cold path), side by side with fp32. Of those within the AUROC guard the fastest is kept and served;
the others' files are deleted. The card records every one (`int8_candidates`: AUROC, drop, cold
p50, kept) and fp32's cold p50.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from spinecast.datasets.inputs import INPUTS
from spinecast.serving import bundle
from spinecast.serving.bundle import Card, Variant
from spinecast.serving.predictor import Predictor

KINDS = ("int8", "int8_static", "int8_text")
CALIBRATION_ROWS = 32  # held-out records whose inputs calibrate the static scales
SENTENCES_PER_FEED = 64  # the calibrator keeps every tensor of a feed: bounded memory
TIMED_ROWS = 24


def _hushed(run: Callable[[], None]) -> None:
    """Fused ops (com.microsoft domain) defeat ONNX shape inference; their tensors are float. The
    quantizer warns on the root logger for each tensor it cannot type (the float ones, the graph's
    integer index tensors it has no use for) and suggests its pre-processing (shape inference
    again): expected here, so hushed."""

    def typed(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            (
                "Failed to infer data type",
                "failed to infer the type of tensor",  # the static quantizer's wording
                "Inference failed or unsupported type",
                "Please consider",  # to run pre-processing (dynamic), pre-processing (static)
            )
        )

    logging.getLogger().addFilter(typed)
    try:
        run()
    finally:
        logging.getLogger().removeFilter(typed)


def quantize(src: Path, dst: Path) -> None:
    """Dynamic INT8: the weights of MatMul/Gemm/Attention quantized, activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _hushed(
        lambda: quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    )


def quantize_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """Static INT8 in the QDQ format: activation ranges (min-max) from `feeds`, weights INT8 per
    tensor, activations UINT8 (ONNX Runtime's fast path on x86)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    _hushed(
        lambda: quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],  # the work; the rest stays float
            # A bias kept float: some projections' inputs have no calibrated range to scale an
            # INT32 bias by (the quantizer refuses them otherwise).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "QuantizeBias": False},
        )
    )


class _Recording:
    """An ONNX Runtime session that keeps every feed it runs (the calibration data)."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, names, feed, options=None):
        self.feeds.append(dict(feed))
        return self.session.run(names, feed, options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def calibration_feeds(out: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """Each fp32 graph file's feeds when the predictor scores the first CALIBRATION_ROWS records
    with nothing cached; sentence feeds cut to at most SENTENCES_PER_FEED rows."""
    predictor = Predictor(out, "fp32", cache_mib=0)
    variant = predictor.card.variants["fp32"]
    recorders = {variant.file: _Recording(predictor.session)}
    predictor.session = predictor.single = recorders[variant.file]  # any batch size
    for text, embedder in predictor.embedders.items():
        name = variant.sentences[text]
        if not isinstance(embedder.session, _Recording):
            recorders[name] = embedder.session = _Recording(embedder.session)
    predictor.run({k: v[:CALIBRATION_ROWS] for k, v in arrays.items()})
    feeds = {}
    for name, recorder in recorders.items():
        if name == variant.file:
            feeds[name] = recorder.feeds
            continue
        feeds[name] = [
            {k: v[start : start + SENTENCES_PER_FEED] for k, v in feed.items()}
            for feed in recorder.feeds
            for start in range(0, len(feed["ids"]), SENTENCES_PER_FEED)
        ]
    return feeds


def per_patient_ms(out: Path, variants: list[str], arrays: dict[str, np.ndarray]) -> dict:
    """p50 per patient at batch 1, nothing cached, each variant in turn on the same records."""
    predictors = {v: Predictor(out, v, threads=None, batch_size=1, cache_mib=0) for v in variants}
    for predictor in predictors.values():  # warm-up
        predictor.run({k: v[:2] for k, v in arrays.items()})
    seconds = {v: [] for v in variants}
    for i in range(min(TIMED_ROWS, len(arrays["numeric"]))):
        one = {k: arrays[k][i : i + 1] for k in (*INPUTS, "note_truncated", "report_truncated")}
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.run(one)
            seconds[name].append(time.perf_counter() - start)
    return {v: round(float(np.median(s)) * 1000, 2) for v, s in seconds.items()}


def _quantized(variant: Variant) -> list[str]:
    """The graphs an INT8 variant has its own of; the image graph (convolutions) stays fp32."""
    return list(dict.fromkeys([variant.file, *(variant.sentences or {}).values()]))


def _files(variant: Variant) -> list[str]:
    return [*_quantized(variant), *([variant.image] if variant.image else [])]


def add_int8(
    out: Path,
    card: Card,
    arrays: dict[str, np.ndarray],
    auroc: Callable[[np.ndarray], float | None],
    max_auroc_drop: float,
) -> list[str]:
    """Write, score and time the INT8 variants; of those within the guard serve the fastest.
    Returns the refused variants' reasons (empty when at least one is kept and served)."""
    fp32 = card.variants["fp32"]
    feeds = calibration_feeds(out, arrays)
    for kind in KINDS[:2]:
        suffix = f".{kind.replace('_', '.')}.onnx"
        rename = {f: f.replace(".onnx", suffix) for f in _quantized(fp32)}
        for src, dst in rename.items():
            if kind == "int8":
                quantize(out / src, out / dst)
            else:
                quantize_static(out / src, out / dst, feeds[src])
        card.variants[kind] = Variant(
            file=rename[fp32.file],
            sentences={t: rename[f] for t, f in (fp32.sentences or {}).items()},
            image=fp32.image,
        )
    if fp32.sentences:
        card.variants["int8_text"] = Variant(
            file=fp32.file, sentences=card.variants["int8"].sentences, image=fp32.image
        )
    bundle.write(out, card)
    return _guard(out, card, arrays, auroc, max_auroc_drop)


def _guard(out, card: Card, arrays, auroc, max_auroc_drop) -> list[str]:
    """Score and time every INT8 variant; keep the fastest within the guard, delete the others'
    files, and record all of them in `card.int8_candidates`."""
    fp32 = card.variants["fp32"]
    kinds = [k for k in KINDS if k in card.variants]
    speed = per_patient_ms(out, ["fp32", *kinds], arrays)
    card.variants["fp32"] = fp32.model_copy(update={"cold_p50_ms": speed["fp32"]})
    found, refused = {}, []
    for kind in kinds:
        score = auroc(Predictor(out, kind, cache_mib=0).run(arrays)["p_satisfied"])
        drop = fp32.val_auroc - score if None not in (fp32.val_auroc, score) else None
        found[kind] = {"val_auroc": score, "auroc_drop": drop, "cold_p50_ms": speed[kind]}
        if drop is None or drop > max_auroc_drop:
            shown = "unknown (one class)" if drop is None else f"{drop:.4f}"
            refused.append(f"{kind}: validation AUROC drop {shown} exceeds {max_auroc_drop}")
    within = [k for k in kinds if not any(r.startswith(f"{k}:") for r in refused)]
    best = min(within, key=lambda k: speed[k]) if within else None
    used = {*_files(fp32), *(_files(card.variants[best]) if best else [])}  # graphs shared
    for kind in kinds:
        found[kind]["kept"] = kind == best
        variant = card.variants.pop(kind)
        if kind == best:
            card.variants[kind] = variant.model_copy(
                update={**found[kind], "val_rows": len(arrays["numeric"])}
            )
        else:
            for name in set(_files(variant)) - used:
                (out / name).unlink(missing_ok=True)  # int8 and int8_text share a file
    card.int8_candidates = found
    if best is not None:
        card.serve = best
    bundle.write(out, card)
    return [] if best else refused

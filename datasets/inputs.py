"""Contract records -> model inputs (numpy only): the one encoding that training and serving share.

`encode_inputs` is called by the training data module and by the torch-free predictor alike, so a
served model sees its inputs exactly as it saw them in training. `model_inputs` turns them into the
arrays of the network's (and the ONNX graph's) named inputs.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from .features import FeatureEncoding
from .images import ImageError, load_image
from .records import Frame
from .sentences import SentenceWindow

INPUTS = (
    "numeric",
    "numeric_missing",
    "categorical",
    "note_ids",
    "note_mask",
    "report_ids",
    "report_mask",
    "image",
    "image_present",
)  # SpineCastNet.forward, in order
# the patient graph's inputs (SpineCastNet.patient): the sentence graph's embeddings, and the image
# graph's in place of the image
PATIENT_INPUTS = (
    "numeric",
    "numeric_missing",
    "categorical",
    "note_ids",
    "note_mask",
    "note_emb",
    "report_ids",
    "report_mask",
    "report_emb",
    "image_emb",
    "image_present",
)
# ... and their outputs, in order: (B, 4) each in TREATMENTS order, but p_satisfied_members
# (B, K, 4)
OUTPUTS = ("p_satisfied", "p_mcid", "odi_12m", "p_satisfied_members", "propensity")
OUTCOMES = OUTPUTS[:3]  # the predicted outcomes of each treatment
MODALITIES = ("tabular", "clinical_note", "imaging_report", "mri_image")
TEXTS = (("note", "clinical_note"), ("report", "imaging_report"))


def encode_inputs(
    frame: Frame,
    features: FeatureEncoding,
    tokenizer: Tokenizer,
    window: SentenceWindow,
    image_size: int,
) -> dict[str, np.ndarray]:
    """Validated records -> structured features, sentence windows (ids int32, mask int8), images
    (uint8), presence and truncation flags. `mri_image` holds a file path or the image bytes."""
    arrays = features.encode(frame)
    for name, column in TEXTS:
        text = window.encode(
            tokenizer, frame[column].tolist() if column in frame else [None] * len(frame)
        )
        arrays[f"{name}_ids"] = text["ids"].astype(np.int32)  # int32 and int8 quarter the memory
        arrays[f"{name}_mask"] = text["mask"].astype(np.int8)
        arrays[f"{name}_truncated"] = text["truncated"]
    images = frame["mri_image"].tolist() if "mri_image" in frame else [None] * len(frame)
    arrays["image"], arrays["image_present"] = _images(images, image_size)
    return arrays


def _images(sources: list, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((len(sources), size, size), dtype=np.uint8)
    present = np.zeros(len(sources), dtype=bool)
    for i, source in enumerate(sources):
        if isinstance(source, str | bytes):
            try:
                images[i] = np.round(load_image(source, size) * 255).astype(np.uint8)
                present[i] = True
            except ImageError as err:
                raise ImageError(f"row {i + 1}: mri_image {err}") from None
    return images, present


def presence(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(B, 4) bool: which of MODALITIES each record has (the structured fields always count)."""
    return np.stack(
        [
            np.ones(len(arrays["numeric"]), dtype=bool),
            arrays["note_mask"].any(axis=(1, 2)),
            arrays["report_mask"].any(axis=(1, 2)),
            arrays["image_present"],
        ],
        axis=1,
    )


def model_inputs(arrays: dict[str, np.ndarray], trim: bool = True) -> dict[str, np.ndarray]:
    """Encoded records -> the network's inputs with their exported dtypes: ids and masks int64,
    the image float32 (B, 1, H, W) in [0, 1]. `trim` cuts the sentence and token axes to the
    longest document and sentence in the batch; the result is the same, the work much smaller."""
    out = {k: arrays[k] for k in ("numeric", "numeric_missing", "categorical")}
    for name, _ in TEXTS:
        ids, mask = arrays[f"{name}_ids"], arrays[f"{name}_mask"]
        if trim:
            used = mask.any(axis=2)  # (B, S)
            sentences = max(1, int(used.any(axis=0).nonzero()[0].max(initial=-1)) + 1)
            tokens = max(1, int(mask.any(axis=(0, 1)).nonzero()[0].max(initial=-1)) + 1)
            ids, mask = ids[:, :sentences, :tokens], mask[:, :sentences, :tokens]
        out[f"{name}_ids"], out[f"{name}_mask"] = ids.astype(np.int64), mask.astype(np.int64)
    out["image"] = (arrays["image"].astype(np.float32) / 255.0)[:, None]
    out["image_present"] = arrays["image_present"].astype(bool)
    return {k: out[k] for k in INPUTS}


def remove_modality(arrays: dict[str, np.ndarray], modality: str) -> dict[str, np.ndarray]:
    """The same records with one of MODALITIES absent (ablation and explanation)."""
    out = dict(arrays)
    if modality == "tabular":
        out["numeric"] = np.zeros_like(arrays["numeric"])
        out["numeric_missing"] = np.ones_like(arrays["numeric_missing"])
        out["categorical"] = np.zeros_like(arrays["categorical"])
    elif modality in ("clinical_note", "imaging_report"):
        key = "note_mask" if modality == "clinical_note" else "report_mask"
        out[key] = np.zeros_like(arrays[key])
    elif modality == "mri_image":
        out["image_present"] = np.zeros_like(arrays["image_present"])
    else:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    return out

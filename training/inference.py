"""Load a checkpoint and predict: one home for what evaluate, export, distillation and the
benchmarks all do. `encode_frame` turns validated cohort rows into model inputs and labels the same
way for training (the data module) and for every later reader of a checkpoint.

    module = load_module("best.ckpt")
    outcomes = predict(module, encode_for(module, frame))   # p_satisfied (N, 4), ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from spinecast.datasets import mcid
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import INPUTS, OUTPUTS, encode_inputs
from spinecast.datasets.schema import TREATMENT_INDEX
from spinecast.datasets.sentences import SentenceWindow, load_tokenizer
from torch.utils.data import DataLoader, Dataset

from .config import resolve_pretrained
from .module import SpineCastModule


class ArrayDataset(Dataset):
    """Rows of a dict of equally long numpy arrays; images stay uint8 until a batch needs them."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["numeric"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {k: torch.from_numpy(np.asarray(v[i])) for k, v in self.arrays.items()}
        item["image"] = item["image"].float().div(255.0).unsqueeze(0)  # (1, H, W)
        for key in ("note_ids", "note_mask", "report_ids", "report_mask"):
            item[key] = item[key].long()
        return item


def encode_frame(
    frame: pd.DataFrame,
    encoding: FeatureEncoding,
    tokenizer,
    window: SentenceWindow,
    image_size: int,
) -> dict[str, np.ndarray]:
    """Validated cohort rows -> model inputs (the encoding serving shares) and labels (numpy)."""
    arrays = encode_inputs(frame, encoding, tokenizer, window, image_size)
    treatment = frame["treatment"].map(TREATMENT_INDEX)
    arrays["treatment"] = treatment.fillna(-1).to_numpy(dtype=np.int64)
    for name, values in (
        ("satisfied", frame["satisfied"]),
        ("mcid", mcid(frame)),
        ("odi_12m", frame["odi_12m"]),
    ):
        present = values.notna().to_numpy()
        arrays[name] = np.where(present, values.astype("float64").fillna(0).to_numpy(), 0).astype(
            np.float32
        )
        arrays[f"{name}_present"] = present
    return arrays


def load_module(ckpt: str | Path) -> SpineCastModule:
    return SpineCastModule.load_from_checkpoint(ckpt, map_location="cpu").eval()


def encode_for(module: SpineCastModule, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Cohort rows -> model inputs, exactly as the checkpoint's training encoded them."""
    text = module.net.config.text
    tokenizer = load_tokenizer(resolve_pretrained(text.pretrained))
    window = SentenceWindow(text.max_sentences, text.max_tokens)
    return encode_frame(
        frame, module.feature_encoding, tokenizer, window, module.net.config.image.size
    )


@torch.no_grad()
def predict(
    module: SpineCastModule, arrays: dict[str, np.ndarray], batch_size: int = 256
) -> dict[str, np.ndarray]:
    """-> `p_satisfied`, `p_mcid`, `odi_12m` (N, 4) calibrated, TREATMENTS order;
    `p_satisfied_members` (N, K, 4) per bootstrap member; `propensity` (N, 4)."""
    parts: list[tuple[torch.Tensor, ...]] = []
    for batch in DataLoader(ArrayDataset({k: arrays[k] for k in INPUTS}), batch_size=batch_size):
        parts.append(module.net.probabilities(*(batch[k].to(module.device) for k in INPUTS)))
    return {k: torch.cat(v).float().cpu().numpy() for k, v in zip(OUTPUTS, zip(*parts))}

"""Distillation: a student trained on a teacher's outcomes for all four treatments.

`spinecast distill` (training/cli.py) takes the teacher's cohort and data settings as defaults
(`teacher_defaults`); the data module then uses the teacher's recorded split by patient and adds
the teacher's soft targets to the training arrays (`soft_targets`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from spinecast.datasets.inputs import OUTCOMES

from .inference import encode_for, load_module, predict

DATA_FROM_TEACHER = ("train_path", "test_path", "val_fraction", "test_fraction", "seed")


def teacher_defaults(teacher: str | Path, argv: list[str]) -> list[str]:
    """`--data.*` arguments that give the student the teacher's cohort and split settings, for those
    `argv` does not set itself."""
    saved = (
        torch.load(teacher, map_location="cpu", weights_only=False).get(
            "datamodule_hyper_parameters"
        )
        or {}
    )
    given = {a.split("=")[0] for a in argv}
    return [
        x
        for k in DATA_FROM_TEACHER
        if k in saved and f"--data.{k}" not in given
        for x in (f"--data.{k}", "null" if saved[k] is None else str(saved[k]))
    ]


def soft_targets(teacher: str | Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A trained model's calibrated outcomes (N, 4) for `frame`, encoded the teacher's way
    (its own tokenizer window and feature encoding): `teacher_p_satisfied`, `teacher_p_mcid`,
    `teacher_odi_12m`."""
    module = load_module(teacher)
    if torch.cuda.is_available():
        module.cuda()
    outcomes = predict(module, encode_for(module, frame))
    return {f"teacher_{k}": outcomes[k] for k in OUTCOMES}

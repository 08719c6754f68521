"""A callback for tests/training/test_ddp.py: which training rows each DDP process was given.

Not a test module: the DDP launcher re-runs `spinecast train` once per process, so the callback must
be importable by name there (`--trainer.callbacks+=ddp_probe.TrainRowsProbe`, PYTHONPATH=this
folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

KEYS = ("numeric", "categorical", "note_ids")  # together they tell the synthetic patients apart


def row_keys(arrays) -> list[bytes]:
    """One key per row, from the inputs themselves: numpy arrays or the tensors of a batch."""
    parts = [np.asarray(arrays[k], dtype=np.float32 if k == "numeric" else np.int64) for k in KEYS]
    return [b"".join(p[i].tobytes() for p in parts) for i in range(len(parts[0]))]


class TrainRowsProbe(Callback):
    """Writes `train_rows_rank{R}.json` under default_root_dir: per epoch, the patient ids of the
    rows in the training batches this process saw, found by matching each row's inputs to the
    split."""

    def on_train_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule
        ids = data.frames["train"]["patient_id"].astype(str).tolist()
        self.patient_of = dict(zip(row_keys(data.splits["train"].arrays), ids))
        if len(self.patient_of) != len(ids):
            raise ValueError(
                f"{len(ids) - len(self.patient_of)} training rows share their inputs; "
                "the probe cannot tell them apart"
            )
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch = {k: batch[k].cpu() for k in KEYS}
        self.seen.setdefault(trainer.current_epoch, []).extend(
            self.patient_of[k] for k in row_keys(batch)
        )

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "backend": torch.distributed.get_backend(),
            "epochs": self.seen,
        }
        path = Path(trainer.default_root_dir) / f"train_rows_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))

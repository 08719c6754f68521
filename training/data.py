"""Cohort files -> tensors: splits by patient, feature encoding fitted on train, sentence windows,
images."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from spinecast.datasets import load_cohort
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.schema import TREATMENTS
from spinecast.datasets.sentences import SentenceWindow, load_tokenizer
from torch.utils.data import DataLoader

from .config import resolve_pretrained
from .inference import ArrayDataset, encode_frame

log = logging.getLogger(__name__)
MAX_MEMBERS = 32  # bootstrap weight columns drawn per training patient; a model uses its first K
MAX_WEIGHT = 10.0  # inverse-propensity weights are clipped here: a few patients must not dominate


class SplitError(ValueError):
    """The cohort file no longer holds the patients a checkpoint's split recorded."""


def split_by_patient(
    ids: pd.Series, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, ...]:
    """Row indices of train / val / test: a seeded permutation of the sorted patient ids, so that
    a patient's split depends on the ids in the file and the seed, never on the order of the
    rows."""
    order = np.argsort(ids.to_numpy(dtype=str), kind="stable")[
        np.random.default_rng(seed).permutation(len(ids))
    ]
    n_val, n_test = (round(f * len(ids)) for f in fractions)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def split_cohort(
    train_path,
    test_path=None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    record: dict | None = None,
    **_,
) -> dict[str, pd.DataFrame]:
    """The train / val / test frames of a run (a separate test file replaces the test split).
    Takes the data module's hyperparameters. With a checkpoint's split `record` (`split_record`),
    the splits are its patients exactly, looked up by id: a reordered file or one with rows
    appended gives the same splits, and a file that lost any of them raises `SplitError`."""
    cohort = load_cohort(train_path, training=True)
    if record is not None:
        return _recorded(cohort, record, Path(train_path).name) | (
            {"test": load_cohort(test_path, training=True)} if test_path else {}
        )
    test_fraction = 0.0 if test_path else test_fraction
    train_idx, val_idx, test_idx = split_by_patient(
        cohort["patient_id"], (val_fraction, test_fraction), seed
    )
    return {
        "train": cohort.iloc[train_idx],
        "val": cohort.iloc[val_idx],
        "test": load_cohort(test_path, training=True) if test_path else cohort.iloc[test_idx],
    }


def split_record(frames: dict[str, pd.DataFrame], train_path) -> dict:
    """What a checkpoint keeps of its split: the patient ids of each split from the training file,
    with the file's SHA-256 and row count (for the message when it changed)."""
    with Path(train_path).open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        "file_sha256": digest,
        "rows": int(sum(len(f) for f in frames.values())),
        **{name: frame["patient_id"].astype(str).tolist() for name, frame in frames.items()},
    }


def _recorded(cohort: pd.DataFrame, record: dict, name: str) -> dict[str, pd.DataFrame]:
    by_id = pd.Series(np.arange(len(cohort)), index=cohort["patient_id"].astype(str))
    out = {}
    for split in ("train", "val", "test"):
        ids = record.get(split, [])
        missing = [i for i in ids if i not in by_id.index]
        if missing:
            raise SplitError(
                f"{name} no longer holds {len(missing):,} of the {len(ids):,} {split} patients "
                "the checkpoint recorded (the file changed since training: it had "
                f"{record['rows']:,} rows, SHA-256 "
                f"{record['file_sha256'][:12]}...); restore it, or pass held-out records explicitly"
            )
        out[split] = cohort.iloc[by_id.loc[ids].to_numpy()]
    return out


def recorded_split(checkpoint: dict) -> dict | None:
    """The split record a training checkpoint holds (None for checkpoints made before it was
    kept)."""
    return (checkpoint.get(CohortDataModule.__qualname__) or {}).get("split")


class CohortDataModule(L.LightningDataModule):
    """Loads a contract cohort, splits it by patient, encodes every modality once and caches it."""

    def __init__(
        self,
        train_path: str,
        test_path: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        tokenizer: str = "minilm",
        max_sentences: int = 48,
        max_tokens: int = 40,
        image_size: int = 128,
        teacher: str | None = None,
        balance: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.window = SentenceWindow(max_sentences, max_tokens)
        self.feature_encoding: FeatureEncoding | None = None
        self.frames: dict[str, pd.DataFrame] = {}
        self.splits: dict[str, ArrayDataset] = {}
        self.record: dict | None = None  # the split by patient id, kept in the checkpoint

    def state_dict(self) -> dict:
        return {"split": self.record} if self.record else {}

    def load_state_dict(self, state: dict) -> None:
        self.record = state.get("split")

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        # A student uses its teacher's recorded split: it never trains on a patient the teacher was
        # validated or tested on, whatever the order of the file's rows.
        record = self.record or (_teacher_split(hp.teacher, hp.train_path) if hp.teacher else None)
        self.frames = split_cohort(
            hp.train_path, hp.test_path, hp.val_fraction, hp.test_fraction, hp.seed, record=record
        )
        self.record = split_record(
            {k: v for k, v in self.frames.items() if k != "test" or not hp.test_path}, hp.train_path
        )
        _check_trainable(self.frames["train"])
        self.feature_encoding = FeatureEncoding.fit(self.frames["train"])
        tokenizer = load_tokenizer(resolve_pretrained(hp.tokenizer))
        for split, frame in self.frames.items():
            if len(frame):
                self.splits[split] = ArrayDataset(
                    encode_frame(
                        frame, self.feature_encoding, tokenizer, self.window, hp.image_size
                    )
                )
        # Bootstrap weights of the outcome heads' members (OutcomeHeads), drawn once per patient.
        train = self.splits["train"].arrays
        train["bootstrap"] = (
            np.random.default_rng(hp.seed)
            .poisson(1.0, (len(train["numeric"]), MAX_MEMBERS))
            .astype(np.float32)
        )
        if hp.balance:
            train["ipw"] = balancing_weights(self.frames["train"], hp.seed)
        if (
            hp.teacher
        ):  # distillation: the teacher's outcomes for every training patient, computed once
            from .distill import soft_targets

            self.splits["train"].arrays |= soft_targets(hp.teacher, self.frames["train"])
        log.info(
            "cohort %s: %s", Path(hp.train_path).name, {k: len(v) for k, v in self.frames.items()}
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def balancing_weights(frame: pd.DataFrame, seed: int, clip: float = MAX_WEIGHT) -> np.ndarray:
    """(N,) stabilized inverse-propensity weights P(T = t_i) / e(x_i, t_i), clipped at `clip` and
    scaled to mean 1, from a cross-fitted propensity model (text + fields). Weighted, each
    treatment's loss stands for the whole population rather than for the patients usually given it:
    the few patients with weak indications who had surgery count as the many like them who did
    not."""
    from .baselines import treatment_index
    from .counterfactual import cross_fit_propensity

    observed = treatment_index(frame, "train")
    propensity = cross_fit_propensity(frame, seed=seed)[np.arange(len(frame)), observed]
    share = np.bincount(observed, minlength=len(TREATMENTS))[observed] / len(frame)
    weights = np.minimum(share / np.maximum(propensity, 1e-3), clip)
    return (weights / weights.mean()).astype(np.float32)


def _teacher_split(teacher: str | Path, train_path) -> dict | None:
    """The teacher's split record, when the student trains on the teacher's cohort file."""
    saved = torch.load(teacher, map_location="cpu", weights_only=False)
    same = (
        Path((saved.get("datamodule_hyper_parameters") or {}).get("train_path", "")).resolve()
        == Path(train_path).resolve()
    )
    return recorded_split(saved) if same else None


def _check_trainable(train: pd.DataFrame) -> None:
    """Fail before training, with the reason, on a cohort that cannot teach anything."""
    labels = train["satisfied"].dropna()
    if len(labels) == 0:
        raise ValueError(
            "the training split has no rows with a `satisfied` label; nothing to learn from"
        )
    if labels.nunique() < 2:
        raise ValueError(
            f"the training split has a single class of `satisfied` (all {bool(labels.iloc[0])}); "
            "AUROC and the classifier need both classes"
        )

"""Two-process DistributedDataParallel on the CPU (gloo) through configs/ddp.yaml: each process
trains on its own shard, the validation metrics are reduced over both, the checkpoint loads in one
process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from spinecast.datasets import load_cohort
from spinecast.training.data import split_cohort
from spinecast.training.export import auroc
from spinecast.training.inference import encode_for, load_module, predict

CONFIGS = Path(__file__).parents[2] / "configs"
EPOCHS = 2
# Set by an earlier in-process DDP run (tests/training/test_train.py), or by a SLURM or torchrun
# allocation the tests run in: Lightning would then join that job instead of starting its own two
# processes.
LAUNCHER_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "SLURM_",
    "TORCHELASTIC_",
)


@pytest.fixture(scope="module")
def ddp_run(small_cohort, tmp_path_factory, tiny_bert):
    """`spinecast train --config configs/ddp.yaml` with 2 CPU processes; the DDP launcher starts
    the second."""
    root = tmp_path_factory.mktemp("ddp")
    # 600 patients, no test split: 510 train and 90 val, both even, so DistributedSampler pads
    # nothing.
    args = [
        "train",
        "--config",
        str(CONFIGS / "default.yaml"),
        "--config",
        str(CONFIGS / "ddp.yaml"),
        "--data.train_path",
        str(small_cohort / "cohort.parquet"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",  # strategy: the config's ddp
        "--trainer.precision",
        "32-true",
        "--trainer.sync_batchnorm",
        "false",  # SyncBatchNorm needs GPUs
        "--trainer.max_epochs",
        str(EPOCHS),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=ddp_probe.TrainRowsProbe",
        "--model.config.text.pretrained",
        tiny_bert,
        "--model.config.dim",
        "32",
        "--model.config.text.max_sentences",
        "16",
        "--model.config.text.max_tokens",
        "32",
        "--model.config.image.backbone",
        "small_cnn",
        "--model.config.image.size",
        "64",
        "--data.test_fraction",
        "0",
        "--data.batch_size",
        "32",
        "--data.num_workers",
        "0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_ENV)}
    env |= {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])
        ),
        "OMP_NUM_THREADS": "1",
    }  # one core per process
    spinecast = Path(sys.executable).with_name("spinecast")
    done = subprocess.run(
        [str(spinecast), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root, next((root / "lightning_logs").iterdir())


@pytest.mark.slow
def test_each_process_trains_on_its_own_shard(ddp_run):
    root, version = ddp_run
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    train = split_cohort(**ckpt["datamodule_hyper_parameters"])["train"]
    everyone = set(train["patient_id"].astype(str))
    records = [json.loads((root / f"train_rows_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["world_size"], r["backend"]) for r in records] == [
        (0, 2, "gloo"),
        (1, 2, "gloo"),
    ]
    for epoch in map(str, range(EPOCHS)):
        first, second = (r["epochs"][epoch] for r in records)
        assert len(first) == len(set(first)) == len(second) == len(set(second)) == len(train) // 2
        assert set(first).isdisjoint(second) and set(first) | set(second) == everyone
    # The sampler reshuffles the shards every epoch.
    assert set(records[0]["epochs"]["0"]) != set(records[0]["epochs"]["1"])


@pytest.mark.slow
def test_validation_metrics_are_reduced_over_both_processes(ddp_run):
    """The logged val/auroc of an epoch is the AUROC over the whole validation split, scored here in
    one process with that epoch's checkpoint (last.ckpt, saved after that validation with that
    epoch's weights; Lightning updates it whenever it saves a best checkpoint)."""
    _, version = ddp_run
    metrics = pd.read_csv(version / "metrics.csv").dropna(subset=["val/auroc"])
    assert metrics["epoch"].max() == EPOCHS - 1
    ckpt_path = version / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    last = metrics[metrics["epoch"] == ckpt["epoch"]].iloc[-1]

    val = split_cohort(**ckpt["datamodule_hyper_parameters"])["val"]
    assert len(val) % 2 == 0  # no padded duplicates in either shard
    module = load_module(ckpt_path)
    # The validation scored the members' mean probability with the temperature fitted one epoch
    # earlier (1 before the first); the mean of sigmoids is not rank-invariant to it, so use that
    # one.
    earlier = metrics[metrics["epoch"] == ckpt["epoch"] - 1]
    module.net.temperature[0] = float(earlier["val/temperature"].iloc[-1]) if len(earlier) else 1.0
    p = predict(module, encode_for(module, val))["p_satisfied"]
    assert last["val/auroc"] == pytest.approx(auroc(val, p), abs=1e-5)
    # Not one process's half: the shards are rows 0, 2, 4, ... and 1, 3, 5, ... (no shuffling in
    # validation).
    for rank in (0, 1):
        assert last["val/auroc"] != pytest.approx(auroc(val.iloc[rank::2], p[rank::2]), abs=1e-5)


@pytest.mark.slow
def test_checkpoint_loads_and_predicts_in_one_process(ddp_run, small_cohort):
    _, version = ddp_run  # this process took no part in the run
    module = load_module(version / "checkpoints" / "last.ckpt")
    rows = load_cohort(small_cohort / "cohort.parquet").head(10)
    outcomes = predict(module, encode_for(module, rows))
    for name in ("p_satisfied", "p_mcid", "odi_12m"):
        assert outcomes[name].shape == (10, 4) and np.isfinite(outcomes[name]).all(), name
    assert ((outcomes["p_satisfied"] > 0) & (outcomes["p_satisfied"] < 1)).all()

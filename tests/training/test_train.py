"""Real Lightning runs on a small cohort: every config, learning, checkpoints, calibration, bad
input."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging
from spinecast.datasets import CohortError
from spinecast.datasets.inputs import INPUTS
from spinecast.training.cli import fit
from spinecast.training.data import CohortDataModule
from spinecast.training.module import SpineCastModule, fit_temperature, observed

from spinecast.cli import main

CONFIGS = Path(__file__).parents[2] / "configs"


def train_args(config: str, cohort: Path, root: Path, tiny_bert: str, *extra: str) -> list[str]:
    overlay = [] if config == "default.yaml" else ["--config", str(CONFIGS / config)]
    return [
        "train",
        "--config",
        str(CONFIGS / "default.yaml"),
        *overlay,
        "--data.train_path",
        str(cohort),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--model.config.text.pretrained",
        tiny_bert,
        "--data.num_workers",
        "0",
        *extra,
    ]


@pytest.mark.parametrize("config", ["quickstart.yaml", "default.yaml", "gpu.yaml", "ddp.yaml"])
def test_fast_dev_run_through_each_config(config, small_cohort, tmp_path, tiny_bert):
    extra = ["--trainer.fast_dev_run", "2", "--data.batch_size", "16"]
    if (
        config == "ddp.yaml"
    ):  # one CPU process through the DDP strategy (gloo); SyncBatchNorm needs GPUs
        extra += ["--trainer.precision", "32-true", "--trainer.sync_batchnorm", "false"]
    assert (
        main(train_args(config, small_cohort / "cohort.parquet", tmp_path, tiny_bert, *extra)) == 0
    )


@pytest.fixture(scope="module")
def trained(small_cohort, tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("run")
    args = train_args(
        "quickstart.yaml",
        small_cohort / "cohort.parquet",
        root,
        tiny_bert,
        "--trainer.max_epochs",
        "8",
        "--model.config.dim",
        "32",
        "--data.test_fraction",
        "0.3",
    )
    assert main(args) == 0
    version = next((root / "lightning_logs").iterdir())
    metrics = pd.read_csv(version / "metrics.csv")
    return version, metrics


def test_short_run_beats_chance_clearly(trained):
    _, metrics = trained
    test = metrics.dropna(subset=["test/auroc"]).iloc[-1]
    # ~180 test patients: AUROC standard error ~0.04, so 0.62 is three of them above chance.
    assert test["test/auroc"] > 0.62, test["test/auroc"]
    losses = metrics["train/loss_epoch"].dropna().to_numpy()
    assert len(losses) == 8 and losses[-2:].mean() < losses[:2].mean()


def _val_batch(module: SpineCastModule, version: Path):
    data = CohortDataModule(**{k: v for k, v in _data_hparams(version).items()})
    data.setup("validate")
    return next(iter(data._loader("val", shuffle=False)))


def _data_hparams(version: Path) -> dict:
    import yaml

    config = yaml.safe_load((version / "config.yaml").read_text())
    return config["data"] | {"batch_size": 512}


def test_checkpoint_alone_rebuilds_the_model(trained):
    version, _ = trained
    ckpt = version / "checkpoints" / "last.ckpt"
    a = SpineCastModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    b = SpineCastModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["feature_encoding"]["mean"]["age"] > 18
    assert (
        a.feature_encoding is not None
        and a.feature_encoding.mean == state["hyper_parameters"]["feature_encoding"]["mean"]
    )
    batch = _val_batch(a, version)
    with torch.no_grad():
        for x, y in zip(
            a.net.probabilities(*(batch[k] for k in INPUTS)),
            b.net.probabilities(*(batch[k] for k in INPUTS)),
        ):
            assert torch.equal(x, y)
        assert torch.equal(a.net.temperature, state["state_dict"]["net.temperature"])


def test_temperature_scaling_lowers_validation_nll(trained):
    version, _ = trained
    module = SpineCastModule.load_from_checkpoint(
        version / "checkpoints" / "last.ckpt", map_location="cpu"
    ).eval()
    batch = _val_batch(module, version)
    with torch.no_grad():
        logits = observed(module(batch).satisfied, batch["treatment"])[
            batch["satisfied_present"]
        ]  # (n, K)
    labels = batch["satisfied"][batch["satisfied_present"]]
    temperature = module.net.temperature[0]
    assert temperature != 1.0

    def nll(t):  # of the served probability: the members' mean
        return F.binary_cross_entropy(torch.sigmoid(logits / t).mean(dim=1), labels)

    assert nll(temperature) < nll(1.0)


def test_the_temperature_calibrates_the_members_mean_not_each_member():
    """Members that disagree (+-2 around the truth) average toward 0.5: fitted on each member's
    logit, T leaves that average under-confident; fitted on the average, the NLL of what is
    served is lower."""
    torch.manual_seed(0)
    truth = torch.randn(4000) * 2
    labels = torch.bernoulli(torch.sigmoid(truth))
    members = torch.stack([truth + 2, truth - 2], dim=1)
    per_member = fit_temperature(members.flatten(), labels[:, None].expand(-1, 2).flatten())
    on_mean = fit_temperature(members, labels)

    def nll(t):
        return F.binary_cross_entropy(torch.sigmoid(members / t).mean(dim=1), labels)

    assert on_mean < per_member and nll(on_mean) < nll(per_member)


def test_fit_temperature_undoes_overconfidence():
    torch.manual_seed(0)
    true_logits = torch.randn(4000) * 1.5
    labels = torch.bernoulli(torch.sigmoid(true_logits))
    assert abs(fit_temperature(3 * true_logits, labels) - 3.0) < 0.3


def test_fit_temperature_stays_finite_on_a_separable_split():
    """A tiny validation split that the model separates perfectly pushes T toward 0: the fit
    stops at the bound instead of returning NaN (which made every probability NaN)."""
    labels = torch.tensor([0.0, 1.0] * 20)
    t = fit_temperature((labels * 2 - 1) * 8, labels)
    assert t == pytest.approx(0.05)
    assert fit_temperature(torch.full((10,), 1e4), torch.ones(10)) == pytest.approx(0.05)


def _cohort_variant(small_cohort: Path, tmp_path: Path, **changes) -> Path:
    frame = pd.read_parquet(small_cohort / "cohort.parquet")
    for col, value in changes.items():
        frame[col] = value
    frame["mri_image"] = [
        str(small_cohort / p) if isinstance(p, str) else None for p in frame["mri_image"]
    ]
    path = tmp_path / "variant.parquet"
    frame.to_parquet(path)
    return path


def test_single_class_cohort_fails_with_the_reason(small_cohort, tmp_path, tiny_bert):
    path = _cohort_variant(small_cohort, tmp_path, satisfied=True)
    with pytest.raises(ValueError, match="single class of `satisfied`"):
        main(
            train_args("quickstart.yaml", path, tmp_path, tiny_bert, "--trainer.fast_dev_run", "1")
        )


def test_empty_cohort_fails_with_the_reason(tmp_path, tiny_bert):
    path = tmp_path / "empty.csv"
    path.write_text("patient_id,age,sex,treatment\n")
    with pytest.raises(CohortError, match="at least one row"):
        main(
            train_args("quickstart.yaml", path, tmp_path, tiny_bert, "--trainer.fast_dev_run", "1")
        )


def test_cohort_without_any_text_still_trains(small_cohort, tmp_path, tiny_bert):
    path = _cohort_variant(
        small_cohort, tmp_path, clinical_note=None, imaging_report=None, mri_image=None
    )
    assert (
        main(
            train_args(
                "quickstart.yaml",
                path,
                tmp_path,
                tiny_bert,
                "--trainer.max_epochs",
                "1",
                "--model.config.dim",
                "32",
            )
        )
        == 0
    )
    metrics = pd.read_csv(next((tmp_path / "lightning_logs").iterdir()) / "metrics.csv")
    assert (
        np.isfinite(metrics["train/loss_epoch"].dropna()).all()
        and metrics["test/auroc"].notna().any()
    )


def test_a_treatment_nobody_received_trains_and_is_never_recommended(
    small_cohort, tmp_path, tiny_bert
):
    """No fusion in the training cohort: training works (no NaN), fusion gets no support (the
    model records who was treated how), so the rule never recommends it and every prediction says
    so."""
    from spinecast.datasets import load_cohort
    from spinecast.datasets.decision import decide
    from spinecast.training.inference import encode_for, load_module, predict

    frame = pd.read_parquet(small_cohort / "cohort.parquet")
    path = _cohort_variant(
        small_cohort, tmp_path, treatment=frame["treatment"].replace("fusion", "decompression")
    )
    assert (
        main(
            train_args(
                "quickstart.yaml",
                path,
                tmp_path,
                tiny_bert,
                "--trainer.max_epochs",
                "6",
                "--model.config.dim",
                "32",
                "--data.test_fraction",
                "0",
            )
        )
        == 0
    )
    module = load_module(next(tmp_path.rglob("best.ckpt")))
    records = load_cohort(path, training=True).iloc[:100]
    out = predict(module, encode_for(module, records))
    assert all(np.isfinite(v).all() for v in out.values())
    assert module.net.treated[3] == 0 and (out["propensity"][:, 3] == 0).all()
    d = decide(out["p_satisfied_members"], out["propensity"], module.decision_rule)
    assert (d.recommended != 3).all() and not d.supported[:, 3].any()
    assert all(
        any(w.startswith("fusion: few patients like this one") for w in ws) for ws in d.warnings
    )


def test_evaluate_writes_report_with_ablation_baselines_and_ceiling(
    trained, small_cohort, tmp_path
):
    import json

    version, _ = trained
    cohort = small_cohort / "cohort.parquet"
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--ckpt",
                str(version / "checkpoints" / "best.ckpt"),
                "--data",
                str(cohort),
                "--out",
                str(out),
                "--baselines-train",
                str(cohort),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.5 < metrics["test/auroc"] <= 1 and 0.78 <= metrics["test/bayes_auroc"] <= 0.9
    without = {
        m: metrics[f"test/auroc_without_{m}"]
        for m in ("tabular", "clinical_note", "imaging_report", "mri_image")
    }
    assert all(0 <= v <= 1 for v in without.values()), without
    assert any(v != metrics["test/auroc"] for v in without.values()), without  # inputs removed
    assert {"test/t_learner/auroc", "test/s_learner/auroc", "test/policy_capture"} <= set(metrics)
    report = (out / "report.md").read_text()
    assert "roc.png" in report and (out / "roc.png").stat().st_size > 1000


def _last_epoch_metrics(root: Path) -> pd.Series:
    frames = [pd.read_csv(p) for p in root.rglob("metrics.csv")]
    metrics = pd.concat(frames).dropna(subset=["val/auroc"])
    return metrics.sort_values("epoch").iloc[-1]


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_metrics(
    small_cohort, tmp_path, tiny_bert
):
    """SIGKILL a training process once its first epoch is checkpointed, resume with
    `--ckpt_path last`: the final metrics equal those of the same run left alone (random state is
    in the checkpoint)."""
    cohort = small_cohort / "cohort.parquet"
    extra = ("--trainer.max_epochs", "4", "--model.config.dim", "32", "--data.test_fraction", "0")
    whole = tmp_path / "whole"
    assert main(train_args("quickstart.yaml", cohort, whole, tiny_bert, *extra)) == 0

    killed = tmp_path / "killed"
    spinecast = Path(sys.executable).with_name("spinecast")
    proc = subprocess.Popen(
        [str(spinecast), *train_args("quickstart.yaml", cohort, killed, tiny_bert, *extra)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while (
        not list(killed.rglob("last.ckpt")) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(killed.rglob("last.ckpt")), "the run was killed before its first checkpoint"
    assert (
        main(
            train_args("quickstart.yaml", cohort, killed, tiny_bert, *extra, "--ckpt_path", "last")
        )
        == 0
    )

    resumed, reference = _last_epoch_metrics(killed), _last_epoch_metrics(whole)
    assert resumed["epoch"] == reference["epoch"] == 3
    for name in ("val/auroc", "val/loss", "val/brier"):
        assert resumed[name] == pytest.approx(reference[name], abs=1e-5), name


def test_resume_without_a_checkpoint_says_so(small_cohort, tmp_path, tiny_bert):
    with pytest.raises(FileNotFoundError, match="no last.ckpt"):
        main(
            train_args(
                "quickstart.yaml",
                small_cohort / "cohort.parquet",
                tmp_path,
                tiny_bert,
                "--ckpt_path",
                "last",
            )
        )


def _flat(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("overlay", ["quickstart.yaml", "gpu.yaml", "ddp.yaml", "distill.yaml"])
def test_each_overlay_lists_only_what_it_changes(overlay):
    import yaml

    base = _flat(yaml.safe_load((CONFIGS / "default.yaml").read_text()))
    changes = _flat(yaml.safe_load((CONFIGS / overlay).read_text()))
    restated = {k: v for k, v in changes.items() if k in base and base[k] == v}
    assert changes and not restated, f"{overlay} restates the base's values: {restated}"


def test_with_weight_averaging_the_test_scores_the_averaged_weights(
    small_cohort, tmp_path, tiny_bert
):
    """With Lightning's EMAWeightAveraging among the callbacks, the checkpoint holds the average
    (the raw weights beside it), and the test after training scores the average, as the exported
    model will be (the callback alone would load the raw weights back for the test)."""
    extra = ("--trainer.max_epochs", "2", "--model.config.dim", "32", "--data.test_fraction", "0.3")
    extra += ("--model.config.image.backbone", "small_cnn")
    args = train_args("default.yaml", small_cohort / "cohort.parquet", tmp_path, tiny_bert, *extra)
    cli = fit(args[1:], callbacks=[EMAWeightAveraging(decay=0.9)])  # args: without "train"
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    state = torch.load(best, map_location="cpu", weights_only=False)
    averaged, raw = state["state_dict"], state["current_model_state"]
    assert not all(torch.equal(averaged[k], raw[k]) for k in averaged)
    assert "test/auroc" in cli.trainer.callback_metrics
    tested = cli.model.state_dict()  # the weights the test after training ran on
    assert all(torch.equal(tested[k], averaged[k]) for k in averaged)

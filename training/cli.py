"""`spinecast train`: Lightning CLI over SpineCastModule and CohortDataModule.

    spinecast train --config configs/default.yaml --config configs/quickstart.yaml \\
        --data.train_path data/synth/cohort.parquet
    spinecast train --config configs/default.yaml --trainer.max_epochs 20 --model.lr 5e-4
    spinecast train --config configs/default.yaml --ckpt_path last     # resume a killed run
    spinecast distill --teacher best.ckpt --config configs/default.yaml \\
        --config configs/distill.yaml

Fits, then scores the test split with the best checkpoint (metrics `test/...`). `distill` trains
on the labels and on the teacher's outcomes for all four treatments, on the teacher's own cohort
and splits unless `--data.*` says otherwise.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LightningCLI

from .data import CohortDataModule
from .distill import teacher_defaults
from .module import SpineCastModule


class SpineCastCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data side tokenizes with the text encoder's own tokenizer and window.
        parser.link_arguments("model.config.text.pretrained", "data.tokenizer")
        parser.link_arguments("model.config.text.max_sentences", "data.max_sentences")
        parser.link_arguments("model.config.text.max_tokens", "data.max_tokens")
        parser.link_arguments("model.config.image.size", "data.image_size")
        parser.link_arguments("data.teacher", "model.teacher")  # the checkpoint records its teacher
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume from this checkpoint; `last`: the newest last.ckpt under default_root_dir",
        )


def resolve_checkpoint(ckpt_path: str | None, root: str | Path) -> str | None:
    """`last` -> the newest last.ckpt under the run's root folder (any logger version)."""
    if ckpt_path != "last":
        return ckpt_path
    found = sorted(Path(root).rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {root}; nothing to resume")
    return str(found[-1])


def fit(argv: list[str], callbacks: list | None = None) -> SpineCastCLI:
    """Fit, then test the best checkpoint when there is a test split; return the CLI (trainer,
    model). `callbacks` are added to the config's (benchmarks measure through them)."""
    # A frozen text encoder is kept in eval mode on purpose (no dropout: its sentence cache stays
    # exact).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # DDP relaunches `spinecast train ...`, so the arguments arrive both ways; they are the same.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli = SpineCastCLI(
        SpineCastModule,
        CohortDataModule,
        args=argv,
        run=False,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults={"callbacks": callbacks} if callbacks else None,
    )
    trainer = cli.trainer
    resume = resolve_checkpoint(cli.config.get("ckpt_path"), trainer.default_root_dir)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    if not trainer.interrupted and "test" in cli.datamodule.splits:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # A checkpoint's weights are the average a weight-averaging callback kept (what is
        # exported and served); the callback itself would load the raw weights back for the test.
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return cli


def train(argv: list[str]) -> int:
    fit(argv)
    return 0


def distill(argv: list[str]) -> int:
    """`spinecast distill --teacher CKPT [train options]`: train on the teacher's soft outcomes too.
    The teacher's cohort and split are the defaults, so the student never trains on a patient the
    teacher was validated or tested on."""
    parser = argparse.ArgumentParser(prog="spinecast distill", add_help=False)
    parser.add_argument(
        "--teacher", required=True, help="the teacher's checkpoint (spinecast train)"
    )
    args, rest = parser.parse_known_args(argv)
    if not Path(args.teacher).is_file():
        raise SystemExit(f"spinecast distill: --teacher {args.teacher}: no such checkpoint")
    fit([*rest, *teacher_defaults(args.teacher, rest), "--data.teacher", args.teacher])
    return 0

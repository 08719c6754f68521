"""`spinecast train`: Lightning CLI over SpineCastModule and CohortDataModule.

    spinecast train --config configs/quickstart.yaml --data.train_path data/synth/cohort.parquet
    spinecast train --config configs/default.yaml --trainer.max_epochs 20 --model.lr 5e-4
    spinecast train --config configs/default.yaml --ckpt_path last     # resume a killed run

Fits, then scores the test split with the best checkpoint (metrics `test/...`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from .data import CohortDataModule
from .module import SpineCastModule


class SpineCastCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data side tokenizes with the text encoder's own tokenizer and window.
        parser.link_arguments("model.config.text.pretrained", "data.tokenizer")
        parser.link_arguments("model.config.text.max_sentences", "data.max_sentences")
        parser.link_arguments("model.config.text.max_tokens", "data.max_tokens")
        parser.link_arguments("model.config.image.size", "data.image_size")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint; `last`: the newest last.ckpt under default_root_dir")


def resolve_checkpoint(ckpt_path: str | None, root: str | Path) -> str | None:
    """`last` -> the newest last.ckpt under the run's root folder (any logger version)."""
    if ckpt_path != "last":
        return ckpt_path
    found = sorted(Path(root).rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {root}; nothing to resume")
    return str(found[-1])


def fit(argv: list[str]) -> SpineCastCLI:
    """Fit, then test the best checkpoint when there is a test split; return the CLI (trainer, model)."""
    # A frozen text encoder is kept in eval mode on purpose (no dropout: its sentence cache stays exact).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    cli = SpineCastCLI(SpineCastModule, CohortDataModule, args=argv, run=False,
                       save_config_kwargs={"overwrite": True}, seed_everything_default=0)
    trainer = cli.trainer
    resume = resolve_checkpoint(cli.config.get("ckpt_path"), trainer.default_root_dir)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    if not trainer.interrupted and "test" in cli.datamodule.splits:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    return cli


def train(argv: list[str]) -> int:
    fit(argv)
    return 0

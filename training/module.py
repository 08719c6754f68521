"""The LightningModule: loss on the observed treatment's head, metrics, optimizers, calibration."""

from __future__ import annotations

import math
import random
from dataclasses import asdict

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from spinecast.datasets.decision import DecisionRule
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import INPUTS
from spinecast.datasets.schema import TREATMENTS
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError

from .config import ModelConfig
from .model import Outputs, SpineCastNet

DEFAULT_CONFIG = ModelConfig()  # never mutated: the Lightning CLI reads nested options from it
DEFAULT_RULE = DecisionRule()


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "auprc": BinaryAveragePrecision(),
            "brier": MeanSquaredError(),
            "ece": BinaryCalibrationError(n_bins=15),
            "mcid_auroc": BinaryAUROC(),
            "odi_rmse": MeanSquaredError(squared=False),
        },
        prefix=prefix,
    )


def observed(values: torch.Tensor, treatment: torch.Tensor) -> torch.Tensor:
    """(B, K, T) per-member, per-treatment values -> (B, K) each patient's observed treatment's."""
    index = treatment.clamp(min=0)[:, None, None].expand(-1, values.shape[1], 1)
    return values.gather(2, index).squeeze(2)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T in [0.05, 20] minimising the NLL of what is served: the mean over the
    ensemble's members of sigmoid(logit / T) (Guo et al. 2017, on the ensemble's average).
    `logits` (N,) or (N, K members). Fitting each member's logit alone calibrates the members, and
    their average, which disagreement pulls toward 0.5, comes out under-confident (measured on
    the demo model: test ECE 0.039 that way, 0.029 this way).
    A grid over log T (1.5 % steps): unlike a gradient method it cannot diverge to NaN on a
    small, separable validation split."""
    grid = torch.logspace(math.log10(0.05), math.log10(20.0), 401)
    logits = logits.double().reshape(len(labels), -1)
    labels = labels.double()
    eps = 1e-12
    nll = torch.stack(
        [
            F.binary_cross_entropy(
                torch.sigmoid(logits / t).mean(dim=1).clamp(eps, 1 - eps), labels
            )
            for t in grid
        ]
    )
    return float(grid[nll.nan_to_num(nan=math.inf).argmin()])


class SpineCastModule(L.LightningModule):
    def __init__(
        self,
        config: ModelConfig = DEFAULT_CONFIG,
        lr: float = 1e-3,
        backbone_lr: float = 2e-5,
        weight_decay: float = 0.05,
        loss_weights: dict[str, float] | None = None,
        backbone_config: dict | None = None,
        feature_encoding: dict | None = None,
        teacher: str | None = None,
        distill_weight: float = 0.5,
        effect_penalty: float = 0.02,
        propensity_weight: float = 0.3,
        decision: DecisionRule = DEFAULT_RULE,
    ):
        super().__init__()
        config = ModelConfig.from_dict(config) if isinstance(config, dict) else config
        self.feature_encoding = (
            FeatureEncoding.from_dict(feature_encoding) if feature_encoding else None
        )
        self.net = SpineCastNet(config, backbone_config, self.feature_encoding)
        decision = DecisionRule.from_dict(decision) if isinstance(decision, dict) else decision
        self.decision_rule = decision  # stored in the checkpoint and the bundle's card
        self.save_hyperparameters(ignore=["config", "decision"])
        self.hparams["decision"] = decision.to_dict()
        # The checkpoint alone rebuilds the model: plain-data config, and the backbone's own config
        # (its weights are in the state dict) instead of a path to its folder.
        self.hparams["config"] = asdict(config)
        self.hparams["backbone_config"] = self.net.backbone_config
        self.loss_weights = {"satisfied": 1.0, "mcid": 0.5, "odi_12m": 0.5} | (loss_weights or {})
        self.val_metrics, self.test_metrics = _metrics("val/"), _metrics("test/")
        self._val_logits: list[tuple[torch.Tensor, ...]] = []

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and getattr(datamodule, "feature_encoding", None) is not None:
            self.feature_encoding = datamodule.feature_encoding
            self.hparams["feature_encoding"] = self.feature_encoding.to_dict()
            counts = datamodule.frames["train"]["treatment"].value_counts()
            self.net.treated.copy_(torch.tensor([float(counts.get(t, 0)) for t in TREATMENTS]))

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.net(*(batch[k] for k in INPUTS))

    def _loss(self, batch, out: Outputs, batch_idx: int) -> torch.Tensor:
        t = batch["treatment"]
        known = t >= 0
        parts = _outcome_losses(batch, out, known)
        loss = sum(self.loss_weights[k] * v for k, v in parts.items())
        # Effects shrink toward the shared prognosis where the data do not say otherwise, and the
        # representation also predicts who got which treatment (DragonNet).
        parts["effect"] = out.effect.pow(2).mean()
        parts["propensity"] = (
            F.cross_entropy(out.propensity[known], t[known])
            if known.any()
            else out.propensity.sum() * 0
        )
        loss = (
            loss
            + self.hparams.effect_penalty * parts["effect"]
            + self.hparams.propensity_weight * parts["propensity"]
        )
        if "teacher_p_satisfied" in batch and self.hparams.distill_weight > 0:
            soft = _soft_losses(batch, out)
            w = self.hparams.distill_weight
            loss = (1 - w) * loss + w * sum(self.loss_weights[k] * v for k, v in soft.items())
            parts |= {f"teacher_{k}": v for k, v in soft.items()}
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) in batch {batch_idx} of epoch "
                f"{self.current_epoch}: { ({k: v.item() for k, v in parts.items()}) }"
            )
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch, self(batch), batch_idx)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(batch["treatment"]),
        )
        return loss

    def _eval_step(self, batch, batch_idx, metrics: MetricCollection, stage: str):
        out = self(batch)
        loss = self._loss(batch, out, batch_idx)
        t, temp = batch["treatment"], self.net.temperature
        p = torch.sigmoid(observed(out.satisfied, t) / temp[0]).mean(dim=1)  # the members' mean
        has = batch["satisfied_present"] & (t >= 0)
        target = batch["satisfied"].long()
        metrics["auroc"].update(p[has], target[has])
        metrics["auprc"].update(p[has], target[has])
        metrics["brier"].update(p[has], batch["satisfied"][has])
        metrics["ece"].update(p[has], target[has])
        m = batch["mcid_present"] & (t >= 0)
        p_mcid = torch.sigmoid(observed(out.mcid, t) / temp[1]).mean(dim=1)
        metrics["mcid_auroc"].update(p_mcid[m], batch["mcid"][m].long())
        o = batch["odi_12m_present"] & (t >= 0)
        metrics["odi_rmse"].update(observed(out.odi, t).mean(dim=1)[o], batch["odi_12m"][o])
        self.log(f"{stage}/loss", loss, batch_size=len(t), sync_dist=True)
        return out, has

    def validation_step(self, batch, batch_idx):
        out, has = self._eval_step(batch, batch_idx, self.val_metrics, "val")
        t = batch["treatment"]
        m = batch["mcid_present"] & (t >= 0)

        def rows(logits, keep, labels):  # (N, K members) logits of the observed arm, (N,) labels
            return logits[keep].float().cpu(), labels[keep].float().cpu()

        self._val_logits.append(
            (
                *rows(observed(out.satisfied, t), has, batch["satisfied"]),
                *rows(observed(out.mcid, t), m, batch["mcid"]),
            )
        )

    def on_validation_epoch_end(self):
        """Fit the temperatures on this epoch's validation logits; every checkpoint carries its
        own."""
        if self._val_logits and not self.trainer.sanity_checking:
            parts = [torch.cat(x) for x in zip(*self._val_logits)]
            members = parts[0].shape[-1]
            gathered = [self._gather_ragged(x.flatten()) for x in parts]
            gathered = [x.reshape(-1, members) if i % 2 == 0 else x for i, x in enumerate(gathered)]
            for k, (logits, labels) in enumerate(
                ((gathered[0], gathered[1]), (gathered[2], gathered[3]))
            ):
                if labels.numel() and 0 < labels.mean() < 1:
                    self.net.temperature[k] = fit_temperature(logits.cpu(), labels.cpu())
            self.log("val/temperature", self.net.temperature[0].item(), sync_dist=True)
        self._val_logits.clear()
        self._log_metrics(self.val_metrics)

    def _gather_ragged(self, x: torch.Tensor) -> torch.Tensor:
        """All processes' values of a 1-D tensor whose length differs by process (DDP)."""
        if self.trainer.world_size == 1:
            return x
        sizes = self.all_gather(torch.tensor(len(x), device=self.device)).flatten()
        padded = torch.full((int(sizes.max()),), float("nan"), device=self.device)
        padded[: len(x)] = x.to(self.device, torch.float32)
        everything = self.all_gather(padded).flatten()
        return everything[~torch.isnan(everything)].cpu()

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, self.test_metrics, "test")

    def on_test_epoch_end(self):
        self._log_metrics(self.test_metrics)

    def _log_metrics(self, metrics: MetricCollection) -> None:
        if metrics["auroc"].preds:  # a split without labels logs nothing
            self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()

    def configure_optimizers(self):
        backbone = [
            p for n, p in self.net.named_parameters() if ".backbone." in n and p.requires_grad
        ]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.net.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.hparams.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.hparams.backbone_lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.feature_encoding is not None:
            checkpoint["hyper_parameters"]["feature_encoding"] = self.feature_encoding.to_dict()
        # The random state too, so that a resumed run (`--ckpt_path last`) shuffles and drops out
        # exactly as the uninterrupted run would have.
        _, keys, pos, has_gauss, cached = np.random.get_state()  # plain types: weights-only loading
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        }
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(states["python"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _outcome_losses(batch, out: Outputs, known: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each outcome's loss on the treatment the patient got, per ensemble member. Each member
    learns from its own bootstrap resample of the training patients (Poisson(1) weights drawn once
    per patient by the data module); validation and test weigh all as 1; `ipw` (the data module's
    `balance`) multiplies in inverse-propensity weights."""
    t, members = batch["treatment"], out.satisfied.shape[1]
    weights = (
        batch["bootstrap"][:, :members].float()
        if "bootstrap" in batch
        else torch.ones(len(t), members, device=t.device)
    )
    if "ipw" in batch:
        weights = weights * batch["ipw"][:, None]
    parts = {}
    for name, pred, fn in (
        ("satisfied", out.satisfied, F.binary_cross_entropy_with_logits),
        ("mcid", out.mcid, F.binary_cross_entropy_with_logits),
        ("odi_12m", out.odi / 100, F.mse_loss),
    ):
        mask = batch[f"{name}_present"] & known
        scale = 100 if name == "odi_12m" else 1
        target = (batch[name] / scale)[mask, None].expand(-1, members)
        per = fn(observed(pred, t)[mask], target, reduction="none")  # (n, K)
        w = weights[mask]
        parts[name] = (per * w).sum() / w.sum().clamp(min=1.0) if mask.any() else pred.sum() * 0
    return parts


def _soft_losses(batch, out: Outputs) -> dict[str, torch.Tensor]:
    """Distillation: the teacher's calibrated outcomes for all four treatments, the treatments the
    patient did not get included (Hinton et al. 2015, soft targets); every member learns them."""
    members = out.satisfied.shape[1]

    def soft(target):  # (B, T) -> (B, K, T)
        return target.unsqueeze(1).expand(-1, members, -1)

    return {
        "satisfied": F.binary_cross_entropy_with_logits(
            out.satisfied, soft(batch["teacher_p_satisfied"])
        ),
        "mcid": F.binary_cross_entropy_with_logits(out.mcid, soft(batch["teacher_p_mcid"])),
        "odi_12m": F.mse_loss(out.odi / 100, soft(batch["teacher_odi_12m"]) / 100),
    }

"""The SpineCast network: modality encoders -> fusion -> one head per treatment.

The parts: `config.py` (the settings), `text.py` (sentences, documents, the two read across each
other), `encoders.py` (structured fields, the key image), `layers.py` (the transformer layer); here
the fusion, the outcome heads and `SpineCastNet`, whose `forward` takes and returns tensors only:
that signature is the ONNX signature.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import INPUTS, MODALITIES, PATIENT_INPUTS
from spinecast.datasets.schema import TREATMENTS
from torch import nn
from torch.nn import functional as F

from .config import OUTCOMES, ModelConfig
from .encoders import ImageEncoder, TabularEncoder
from .layers import Transformer
from .text import CrossDocument, DocumentEncoder, SentenceEncoder, build_backbone

# --- fusion and heads -----------------------------------------------------------------------


class Fusion(nn.Module):
    """Modality tokens (B, M, D) + presence (B, M) -> (B, D). Absent modalities become a learned
    token."""

    def __init__(
        self, kind: str, dim: int, layers: int, heads: int, dropout: float, modality_dropout: float
    ):
        super().__init__()
        if kind not in ("attention", "gated"):
            raise ValueError(f"fusion must be one of attention, gated; got {kind!r}")
        self.kind, self.modality_dropout = kind, modality_dropout
        m = len(MODALITIES)
        self.missing = nn.Parameter(torch.randn(m, dim) * 0.02)
        self.modality = nn.Parameter(torch.randn(m, dim) * 0.02)
        if kind == "attention":
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.body = Transformer(dim, heads, layers, dropout)
        else:
            self.gate = nn.Linear(dim, dim)
            self.body = nn.Sequential(
                nn.Linear(m * dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
            )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if self.training and self.modality_dropout > 0:
            present = present & (
                torch.rand_like(present, dtype=torch.float) >= self.modality_dropout
            )
        x = torch.where(present.unsqueeze(-1), tokens, self.missing) + self.modality  # (B, M, D)
        if self.kind == "attention":
            x = self.body(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1))[:, 0]
        else:
            x = self.body((torch.sigmoid(self.gate(x)) * x).flatten(1))
        return self.norm(x)


class MemberMLP(nn.Module):
    """K independent two-layer MLPs side by side: (B, D) -> (B, K, out)."""

    def __init__(self, dim: int, hidden: int, members: int, out: int, dropout: float):
        super().__init__()
        self.members, self.hidden = members, hidden
        self.first = nn.Linear(dim, members * hidden)
        self.drop = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.randn(members, hidden, out) / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.zeros(members, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.drop(F.gelu(self.first(h))).unflatten(1, (self.members, self.hidden))  # (B, K, H)
        return (z.transpose(0, 1) @ self.weight).transpose(0, 1) + self.bias  # (B, K, out)


class OutcomeHeads(nn.Module):
    """Fused patient (B, D) -> per member and treatment: logit(satisfied), logit(mcid), ODI logit.

    Each treatment's outcome is a prognosis shared by all treatments (what physical therapy gives,
    learned from every patient: most of what predicts satisfaction does so under any treatment)
    plus that treatment's effect. The training loss shrinks the effects toward zero
    (`effect_penalty`), so where a treatment was rarely given the prediction falls back to the
    shared prognosis instead of extrapolating the few patients who got it. K members, each trained
    on its own bootstrap resample of the patients (Poisson weights), give the spread of the
    estimates that the decision rule's lower bound reads (Osband et al. 2016)."""

    def __init__(self, dim: int, hidden: int, members: int, dropout: float):
        super().__init__()
        self.members, t = members, len(TREATMENTS)
        self.prognosis = MemberMLP(dim, hidden, members, len(OUTCOMES), dropout)
        self.effect = MemberMLP(dim, hidden, members, (t - 1) * len(OUTCOMES), dropout)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> outputs (B, K, T, 3) and the effects over physical therapy (B, K, T - 1, 3)."""
        base = self.prognosis(h).unsqueeze(2)  # (B, K, 1, 3)
        effect = self.effect(h).unflatten(2, (len(TREATMENTS) - 1, len(OUTCOMES)))  # (B, K, T-1, 3)
        # physical therapy's effect is 0 (padded in front); zeros_like would freeze the traced
        # batch size
        return base + F.pad(effect, (0, 0, 1, 0)), effect


class Outputs(NamedTuple):
    satisfied: torch.Tensor  # (B, K, T) logits per member
    mcid: torch.Tensor  # (B, K, T) logits per member
    odi: torch.Tensor  # (B, K, T) expected odi_12m per member, in [0, 100]
    effect: torch.Tensor  # (B, K, T - 1, 3) the effect logits over physical therapy
    propensity: torch.Tensor  # (B, T) logits of P(treatment | chart)
    present: torch.Tensor  # (B, M) modality presence


class SpineCastNet(nn.Module):
    """All four modalities -> per treatment: logit(satisfied), logit(mcid), expected odi_12m, per
    bootstrap member; and the propensity of each treatment."""

    def __init__(
        self,
        config: ModelConfig,
        backbone_config: dict | None = None,
        encoding: FeatureEncoding | None = None,
    ):
        """`encoding`: the fields a checkpoint was trained on (default: today's fields)."""
        super().__init__()
        self.config = config
        d, t = config.dim, config.text
        note_backbone = build_backbone(t, backbone_config)
        report_backbone = note_backbone if t.share_weights else build_backbone(t, backbone_config)
        note_sentences = SentenceEncoder(note_backbone, t.trainable_layers)
        report_sentences = (
            note_sentences
            if t.share_weights
            else SentenceEncoder(report_backbone, t.trainable_layers)
        )
        self.note = DocumentEncoder(note_sentences, t, d, config.heads, config.dropout)
        self.report = DocumentEncoder(report_sentences, t, d, config.heads, config.dropout)
        self.cross = (
            CrossDocument(d, config.heads, t.cross_layers, config.dropout)
            if t.cross_layers
            else None
        )
        self.tabular = TabularEncoder(
            config.tabular, d, config.dropout, encoding or FeatureEncoding()
        )
        self.image = ImageEncoder(config.image, d)
        self.fusion = Fusion(
            config.fusion,
            d,
            config.fusion_layers,
            config.heads,
            config.dropout,
            config.modality_dropout,
        )
        self.outcomes = OutcomeHeads(d, config.head_hidden, config.members, config.dropout)
        # DragonNet-style (Shi et al. 2019): predicting the treatment from the same representation
        # keeps the confounders in it, and its estimate tells where a treatment lacks support.
        self.propensity = nn.Sequential(
            nn.Linear(d, config.head_hidden),
            nn.GELU(),
            nn.Linear(config.head_hidden, len(TREATMENTS)),
        )
        # Post-hoc temperature scaling of the satisfied and mcid logits, fitted on validation.
        self.register_buffer("temperature", torch.ones(2))
        # Training patients per treatment (set before fitting): a treatment nobody received gets
        # propensity 0, so it can never be recommended, however the head extrapolates.
        self.register_buffer("treated", torch.ones(len(TREATMENTS)))

    @property
    def backbone_config(self) -> dict:
        return self.note.sentences.backbone.config.to_dict()

    def embed(self, note_ids, note_mask, report_ids, report_mask):
        """(B, S, L) ids and masks -> the note's and the report's (B, S, H) sentence embeddings
        (zeros where a sentence slot is empty): the sentence graph's part of the model."""
        if self.note.sentences is self.report.sentences:  # one backbone: both texts in one run
            note, report = self.note.sentences.encode_texts(
                (note_ids, note_mask), (report_ids, report_mask)
            )
        else:
            note, report = (
                encoder.sentences(ids.flatten(0, 1), mask.flatten(0, 1))
                for encoder, ids, mask in (
                    (self.note, note_ids, note_mask),
                    (self.report, report_ids, report_mask),
                )
            )
        return note.unflatten(0, note_ids.shape[:2]), report.unflatten(0, report_ids.shape[:2])

    def forward(self, *inputs) -> Outputs:
        """INPUTS (the encoded records) -> Outputs: `embed` and the image encoder, then
        `patient`."""
        named = dict(zip(INPUTS, inputs, strict=True))
        named["note_emb"], named["report_emb"] = self.embed(
            *(named[k] for k in ("note_ids", "note_mask", "report_ids", "report_mask"))
        )
        named["image_emb"] = self.image(named["image"])
        return self.patient(*(named[k] for k in PATIENT_INPUTS))

    def patient(
        self,
        numeric,
        numeric_missing,
        categorical,
        note_ids,
        note_mask,
        note_emb,
        report_ids,
        report_mask,
        report_emb,
        image_emb,
        image_present,
    ) -> Outputs:
        """Everything after the sentence embeddings and the image's (the patient graph's part of
        the model); the token ids still feed the documents' word channel. Where `image_present`
        is false, `image_emb` is not read (fusion puts its learned missing token there)."""
        note, note_keep, note_present = self.note.contextualize(note_ids, note_mask, note_emb)
        report, report_keep, report_present = self.report.contextualize(
            report_ids, report_mask, report_emb
        )
        if self.cross is not None:
            note, report = self.cross(note, note_keep, report, report_keep)
        note, report = self.note.pool(note, note_keep), self.report.pool(report, report_keep)
        tabular = self.tabular(numeric, numeric_missing, categorical)
        tokens = torch.stack([tabular, note, report, image_emb], dim=1)  # (B, M, D)
        present = torch.stack(
            [torch.ones_like(note_present), note_present, report_present, image_present.bool()],
            dim=1,
        )  # (B, M)
        h = self.fusion(tokens, present)
        out, effect = self.outcomes(h)  # (B, K, T, 3)
        return Outputs(
            out[..., 0],
            out[..., 1],
            100 * torch.sigmoid(out[..., 2]),
            effect,
            self.propensity(h),
            present,
        )

    def probabilities(self, *inputs):
        """Calibrated outputs: p_satisfied (B, T) (the members' mean), p_mcid (B, T), odi_12m
        (B, T), p_satisfied_members (B, K, T) and propensity (B, T)."""
        return self.calibrated(self(*inputs))

    def patient_probabilities(self, *inputs):
        """`probabilities` from the patient graph's inputs (PATIENT_INPUTS), as exported."""
        return self.calibrated(self.patient(*inputs))

    def calibrated(self, out: Outputs):
        members = torch.sigmoid(out.satisfied / self.temperature[0])
        p_mcid = torch.sigmoid(out.mcid / self.temperature[1]).mean(dim=1)
        propensity = out.propensity.masked_fill(self.treated == 0, float("-inf")).softmax(dim=-1)
        return members.mean(dim=1), p_mcid, out.odi.mean(dim=1), members, propensity

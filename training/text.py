"""Text: token ids of sentences -> sentence embeddings (a Hugging Face encoder) -> one embedding
per document, and the note's and the report's sentences read across each other."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import TextConfig, resolve_pretrained
from .layers import Transformer

GROUPS = 4  # sentence length groups of the sentence graph's attention (SentenceGraph._unpadded)

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
        width = max(ids.shape[2] for ids, _ in texts)
        ids, mask = (
            torch.cat(
                [F.pad(pair[i], (0, width - pair[i].shape[2])).reshape(-1, width) for pair in texts]
            )
            for i in (0, 1)
        )
        return list(self(ids, mask).split([ids.shape[0] * ids.shape[1] for ids, _ in texts]))

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


class SentenceGraph(nn.Module):
    """What the bundle's sentence graph computes: (N, L) token ids and mask of sentences -> (N, H)
    embeddings (the masked mean of the last layer; an empty row gives zeros), equal to
    `SentenceEncoder`'s. For a BERT encoder the graph runs on the real tokens only (`_unpadded`;
    a padded trace of the encoder was 1.5-2.5x slower per patient on 2 cores, see
    benchmarks/README.md); any other encoder is traced as it is."""

    def __init__(self, sentences: SentenceEncoder):
        super().__init__()
        self.sentences = sentences

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._exported(ids, mask).float()

    def _exported(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each distinct row once, sorted by length and trimmed to the longest. A BERT encoder then
        runs on the real tokens only (`_unpadded`): sentences padded to the longest are about
        twice their tokens on clinical text (mean 12 tokens, longest near 40)."""
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
        config = self.sentences.backbone.config
        bert = (
            config.model_type == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
        )
        encoded = self._unpadded(ids, mask) if bert else self.sentences._encode(ids, mask)
        return encoded[torch.argsort(order)[inverse + GROUPS]]

    # size: BERT's forward written out layer by layer, on the real tokens only
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

        emb = self.sentences.backbone.embeddings
        x = emb.word_embeddings(ids.reshape(-1)[real]) + emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(x + emb.position_embeddings(real % width))
        for layer in self.sentences.backbone.encoder.layer:
            att = layer.attention.self
            heads, scale = (
                att.num_attention_heads,
                att.attention_head_size**-0.5,
            )  # scale: in the query weights
            weight = torch.cat([att.query.weight * scale, att.key.weight, att.value.weight])
            bias = torch.cat([att.query.bias * scale, att.key.bias, att.value.bias])
            # heads first, on the real tokens: (3 * heads, T, d); the padded copies need no
            # transpose
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

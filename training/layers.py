"""The transformer layer every encoder uses, written to export to ONNX with every axis dynamic."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

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
        """(B, S, D), and optionally (B, S) True where a position may be attended to ->
        (B, S, D)."""
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

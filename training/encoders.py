"""The structured fields' encoder and the MRI key image's encoder."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torchvision
from spinecast.datasets.features import FeatureEncoding
from torch import nn

from .config import ImageConfig, TabularConfig
from .layers import Transformer

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

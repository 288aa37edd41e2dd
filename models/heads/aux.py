"""AuxHead: the FCN-style auxiliary classifier that ``--aux-weight`` adds (training only, not registered)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.contract import Head
from models.conv import ConvBNReLU


class AuxHead(Head):
    """FCN-style auxiliary classifier on one mid-level feature, for deep supervision during training."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, stride: int = 16,
                 width: int = 128) -> None:
        super().__init__()
        # the deepest level not coarser than `stride` (a backbone may stop before it)
        candidates = [i for i, s in enumerate(strides) if s <= stride]
        self.level = candidates[-1] if candidates else 0
        self.block = nn.Sequential(ConvBNReLU(channels[self.level], width, 3), nn.Dropout2d(0.1), nn.Conv2d(width, nc, 1))
        self.out_stride = strides[self.level]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.block(features[self.level])

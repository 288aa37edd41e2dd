"""``lraspp``: Lite R-ASPP (Howard et al. 2019, "Searching for MobileNetV3", section 6.3), the cheap CPU tier.

The deepest level goes through two branches: a 1x1 Conv-BN-ReLU and a global-pool -> 1x1 conv -> sigmoid
gate; the class logits of their product are upsampled to the stride-8 level (``low_stride``) and summed
with a 1x1 classifier on that level. The paper pools with a large stride-4 kernel;
we pool globally, as torchvision's LRASPP does, so the head is size-independent and exports at any size.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.contract import Head
from models.conv import ConvBNReLU
from models.heads.common import upsample_like
from models.registry import HEADS


def nearest_level(strides: Sequence[int], stride: int) -> int:
    """Index of the first level at ``stride`` or coarser (the deepest level when none is)."""
    return next((i for i, s in enumerate(strides) if s >= stride), len(strides) - 1)


@HEADS.register("lraspp")
class LRASPPHead(Head):
    """Lite R-ASPP over the deepest level, with one low-level (default stride 8) skip; logits at that stride."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 low_stride: int = 8) -> None:
        super().__init__()
        strides = list(strides)
        self.high = len(strides) - 1
        self.low = min(nearest_level(strides, low_stride), self.high)
        c_high, c_low = channels[self.high], channels[self.low]
        self.cbr = ConvBNReLU(c_high, width, 1)
        self.scale = nn.Sequential(nn.Conv2d(c_high, width, 1), nn.Sigmoid())
        self.high_classifier = nn.Conv2d(width, nc, 1)
        self.low_classifier = nn.Conv2d(c_low, nc, 1)
        self.out_stride = strides[self.low]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        high, low = features[self.high], features[self.low]
        x = self.cbr(high) * self.scale(high.mean((2, 3), keepdim=True))
        # classify, then upsample: a 1x1 conv and bilinear resizing (weights summing to 1) commute exactly,
        # and resizing nc channels instead of ``width`` is what keeps a stride-4 skip (low_stride=4) cheap
        return self.low_classifier(low) + upsample_like(self.high_classifier(x), low)

"""``segment``: lateral 1x1 per level, resize to the finest, fuse, classify (stride 4)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.attention import make_attention
from models.contract import Head, select_levels
from models.conv import ConvBNReLU
from models.heads.common import resize_to
from models.registry import HEADS


@HEADS.register("segment")
class SegmentHead(Head):
    """Basic multi-scale head: a lateral conv per level, upsample to the finest level, fuse, classify.

    The fusion is a 1x1 conv over the concatenated levels (as in SegFormer's all-MLP decoder): a 3x3
    there would cost ~30 GFLOPs at 640x640, more than most backbones it serves. ``attention`` (scse,
    cbam) gates the fused map.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 min_stride: int = 4, dropout: float = 0.1, attention: str | None = None) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        self.lateral = nn.ModuleList(ConvBNReLU(channels[i], width, 1) for i in self.levels)
        self.fusion = ConvBNReLU(width * len(self.levels), width, 1)
        self.attention = make_attention(attention, width) or nn.Identity()
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        xs = [lat(features[i]) for lat, i in zip(self.lateral, self.levels)]
        xs = [xs[0]] + [resize_to(x, xs[0]) for x in xs[1:]]
        return self.classifier(self.drop(self.attention(self.fusion(torch.cat(xs, 1)))))

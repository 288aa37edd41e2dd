"""Segmentation heads, built from a backbone's declared channels and strides only."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.contract import Head, select_levels
from models.conv import ConvBNReLU
from models.registry import HEADS


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref`` (a no-op when they already agree)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


@HEADS.register("segment")
class SegmentHead(Head):
    """Basic multi-scale head: a lateral conv per level, upsample to the finest level, fuse, classify."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 min_stride: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        self.lateral = nn.ModuleList(ConvBNReLU(channels[i], width, 1) for i in self.levels)
        self.fuse = ConvBNReLU(width * len(self.levels), width, 3)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        xs = [lat(features[i]) for lat, i in zip(self.lateral, self.levels)]
        xs = [xs[0]] + [resize_to(x, xs[0]) for x in xs[1:]]
        return self.classifier(self.drop(self.fuse(torch.cat(xs, 1))))


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

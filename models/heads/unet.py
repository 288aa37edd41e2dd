"""``unet``: top-down decoder, upsample + concat each skip + conv block (stride 4, or 2)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.attention import make_attention
from models.contract import Head, select_levels
from models.conv import ConvBNReLU
from models.heads.common import level_width, resize_to
from models.registry import HEADS


@HEADS.register("unet")
class UNetHead(Head):
    """U-Net/FPN-style top-down decoder: from the deepest level, upsample, concat the skip, conv block.

    Each block is a 1x1 ConvBNReLU that fuses the concatenation followed by a 3x3 ConvBNReLU; the 1x1
    keeps wide skips (ResNet-50's 1024 channels at stride 16) cheap where a U-Net's two 3x3 convs
    would dominate the model's FLOPs. Widths: ``width`` at stride 4, doubled per coarser level up to
    ``max_width``. ``min_stride=2`` decodes one level further on backbones that declare stride 2.
    ``attention`` (scse, cbam) ends every block with that gate, as smp's U-Net decoder does.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 64,
                 min_stride: int = 4, max_width: int = 256, dropout: float = 0.1,
                 attention: str | None = None) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        widths = [level_width(strides[i], width, 4, max_width) for i in self.levels]
        self.center = ConvBNReLU(channels[self.levels[-1]], widths[-1], 1)
        blocks = []
        for j in range(len(self.levels) - 2, -1, -1):  # deepest-but-one skip first
            c_in = widths[j + 1] + channels[self.levels[j]]
            gate = make_attention(attention, widths[j])
            blocks.append(nn.Sequential(ConvBNReLU(c_in, widths[j], 1), ConvBNReLU(widths[j], widths[j], 3),
                                        *([gate] if gate is not None else [])))
        self.blocks = nn.ModuleList(blocks)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(widths[0], nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[self.levels[-1]])
        for block, i in zip(self.blocks, reversed(self.levels[:-1])):
            skip = features[i]
            x = block(torch.cat((resize_to(x, skip), skip), 1))
        return self.classifier(self.drop(x))

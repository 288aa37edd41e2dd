"""Segmentation heads, built from a backbone's declared channels and strides only.

Registered heads (every one works with every backbone through the contract):

* ``segment`` - SegmentHead: lateral 1x1 per level, resize to the finest, fuse, classify (stride 4).
* ``unet``    - UNetHead: top-down decoder, upsample + concat each skip + conv block (stride 4, or 2).
* ``yolov5``  - YOLOv5Head: YOLOv5's top-down path of Conv / Upsample / Concat / C3 (stride 8, or 4).

AuxHead is not registered: it is added by ``aux=True`` and used only in training.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import C3
from models.contract import Head, select_levels
from models.conv import Concat, Conv, ConvBNReLU
from models.registry import HEADS


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref``.

    Unconditional on purpose: a shape test here would be frozen into a traced or exported graph.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


@HEADS.register("segment")
class SegmentHead(Head):
    """Basic multi-scale head: a lateral conv per level, upsample to the finest level, fuse, classify.

    The fusion is a 1x1 conv over the concatenated levels (as in SegFormer's all-MLP decoder): a 3x3
    there would cost ~30 GFLOPs at 640x640, more than most backbones it serves.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 min_stride: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        self.lateral = nn.ModuleList(ConvBNReLU(channels[i], width, 1) for i in self.levels)
        self.fusion = ConvBNReLU(width * len(self.levels), width, 1)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        xs = [lat(features[i]) for lat, i in zip(self.lateral, self.levels)]
        xs = [xs[0]] + [resize_to(x, xs[0]) for x in xs[1:]]
        return self.classifier(self.drop(self.fusion(torch.cat(xs, 1))))


def level_width(stride: int, width: int, ref_stride: int, max_width: int) -> int:
    """Decoder width at ``stride``: ``width`` at ``ref_stride``, doubling per coarser level, capped."""
    return max(8, min(max_width, width * stride // ref_stride))


@HEADS.register("unet")
class UNetHead(Head):
    """U-Net/FPN-style top-down decoder: from the deepest level, upsample, concat the skip, conv block.

    Each block is a 1x1 ConvBNReLU that fuses the concatenation followed by a 3x3 ConvBNReLU; the 1x1
    keeps wide skips (ResNet-50's 1024 channels at stride 16) cheap where a U-Net's two 3x3 convs
    would dominate the model's FLOPs. Widths: ``width`` at stride 4, doubled per coarser level up to
    ``max_width``. ``min_stride=2`` decodes one level further on backbones that declare stride 2.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 64,
                 min_stride: int = 4, max_width: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        widths = [level_width(strides[i], width, 4, max_width) for i in self.levels]
        self.center = ConvBNReLU(channels[self.levels[-1]], widths[-1], 1)
        blocks = []
        for j in range(len(self.levels) - 2, -1, -1):  # deepest-but-one skip first
            c_in = widths[j + 1] + channels[self.levels[j]]
            blocks.append(nn.Sequential(ConvBNReLU(c_in, widths[j], 1), ConvBNReLU(widths[j], widths[j], 3)))
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


@HEADS.register("yolov5")
class YOLOv5Head(Head):
    """YOLOv5's top-down path, then a classifier: per finer level, 1x1 Conv -> Upsample -> Concat -> C3.

    As in YOLOv5's head, the 1x1 Conv narrows the coarse map to the next level's width before it is
    upsampled and concatenated with the backbone level, and C3 (``depth`` bottlenecks, no shortcut)
    fuses them. Widths: ``width`` at stride 8, doubled per coarser level up to ``max_width``.
    ``min_stride=4`` adds one more level.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, width: int = 128,
                 min_stride: int = 8, depth: int = 1, max_width: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.levels = select_levels(strides, min_stride)
        widths = [level_width(strides[i], width, 8, max_width) for i in self.levels]
        reduce, up, csp = [], [], []
        c = channels[self.levels[-1]]
        for j in range(len(self.levels) - 2, -1, -1):
            i, coarse = self.levels[j], self.levels[j + 1]
            reduce.append(Conv(c, widths[j], 1, 1))
            up.append(nn.Upsample(scale_factor=strides[coarse] // strides[i], mode="nearest"))
            csp.append(C3(widths[j] + channels[i], widths[j], depth, False))
            c = widths[j]
        self.reduce, self.up, self.csp = nn.ModuleList(reduce), nn.ModuleList(up), nn.ModuleList(csp)
        self.concat = Concat(1)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, nc, 1)
        self.out_stride = strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[self.levels[-1]]
        for reduce, up, csp, i in zip(self.reduce, self.up, self.csp, reversed(self.levels[:-1])):
            skip = features[i]
            # the model pads its input to a multiple of the largest stride, so the sizes always agree
            x = up(reduce(x))
            x = csp(self.concat([x, skip]))
        return self.classifier(self.drop(x))


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

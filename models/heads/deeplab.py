"""``deeplabv3plus``: ASPP over the deepest level plus a low-level skip (Chen et al. 2018, "Encoder-Decoder
with Atrous Separable Convolution for Semantic Image Segmentation").

``output_stride`` (8, 16 or 32) is the stride of the map ASPP sees. Below the backbone's own deepest stride
it is reached by dilation: ``prepare_backbone`` asks the backbone to trade its last strides for dilation
(``Backbone.dilate``; ResNets can, YOLO graphs and the other torchvision families cannot and are refused).
Default: 16 where the backbone can dilate, else its deepest stride. ASPP rates are the paper's (6, 12, 18)
at stride 16, doubled at stride 8 and halved at stride 32. The decoder reduces the stride-4 level to 48
channels, concatenates the upsampled ASPP output and refines with two 3x3 convs; logits at stride 4.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from models.contract import Backbone, Head
from models.conv import ConvBNReLU
from models.heads.common import upsample_like
from models.heads.lraspp import nearest_level
from models.registry import HEADS
from utils.errors import UserError

OUTPUT_STRIDES = (8, 16, 32)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pool branch, fused by a 1x1."""

    def __init__(self, c1: int, c2: int, rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(c1, c2, 1)]
        for r in rates:
            b = ConvBNReLU(c1, c2, 3)
            b.conv.dilation, b.conv.padding = (r, r), (r, r)
            branches.append(b)
        self.branches = nn.ModuleList(branches)
        # no BatchNorm after the pool: at batch 1 a 1x1 map gives BatchNorm a single value per channel
        self.pool = nn.Sequential(nn.Conv2d(c1, c2, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(ConvBNReLU(c2 * (len(rates) + 2), c2, 1), nn.Dropout2d(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [b(x) for b in self.branches]
        pooled = self.pool(x.mean((2, 3), keepdim=True))
        ys.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(ys, 1))


@HEADS.register("deeplabv3plus")
class DeepLabV3PlusHead(Head):
    """ASPP at ``output_stride`` + decoder with a stride-4 skip (``low_stride``)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], nc: int, output_stride: int | None = None,
                 width: int = 256, low_width: int = 48, low_stride: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        strides = list(strides)
        deepest = strides[-1]
        if output_stride is not None and output_stride != deepest:
            raise ValueError(f"output_stride={output_stride} but the backbone's deepest level is at stride {deepest}")
        rates = [max(1, r * 16 // deepest) for r in (6, 12, 18)]
        self.aspp = ASPP(channels[-1], width, rates)
        self.low = nearest_level(strides, low_stride)
        self.reduce = ConvBNReLU(channels[self.low], low_width, 1)
        self.refine = nn.Sequential(ConvBNReLU(width + low_width, width, 3), ConvBNReLU(width, width, 3),
                                    nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(width, nc, 1)
        self.out_stride = strides[self.low]

    @staticmethod
    def prepare_backbone(backbone: Backbone, args: dict[str, Any]) -> dict[str, Any]:
        """Dilate ``backbone`` to the requested output stride; returns the head args to build with."""
        deepest = max(backbone.strides)
        os_ = args.get("output_stride")
        if os_ is None:
            os_ = 16 if backbone.can_dilate() and deepest > 16 else deepest
        if os_ not in OUTPUT_STRIDES:
            raise UserError(f"--head-args output_stride={os_}: deeplabv3plus takes {', '.join(map(str, OUTPUT_STRIDES))}")
        if os_ > deepest:
            raise UserError(f"--head-args output_stride={os_}: the backbone's deepest level is at stride {deepest}; "
                            f"use output_stride={deepest} or lower")
        if os_ < deepest:
            backbone.dilate(os_)  # refuses with a UserError where the backbone cannot dilate
        return {**args, "output_stride": os_}

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = features[self.low]
        x = upsample_like(self.aspp(features[-1]), low)
        return self.classifier(self.refine(torch.cat((x, self.reduce(low)), 1)))
